"""ContSign: the 64-bit content signature that names an image in a library.

It is the first 8 bytes of the MD5 of the raw image bytes, read as two little-endian uint32
(``sign1``, ``sign2``), so any client can compute it without asking the daemon. The spec does not
say how the product computes its contsign; this algorithm is this project's own choice, so
contsigns from the product and from this daemon for the same image are not expected to agree. Stored as a
signed 64-bit integer (SQLite's INTEGER, hnswlib's label space needs unsigned; see
``index.library_index.key_to_label``).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any

from same_search.errors import bad_request

_UINT32_MAX = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class ContSign:
    """A pair of uint32 that identifies one image by content."""

    sign1: int
    sign2: int

    @classmethod
    def of_image(cls, data: bytes) -> ContSign:
        """The signature of raw image bytes (MD5-based; this project's algorithm, see the module doc)."""
        sign1, sign2 = struct.unpack("<II", hashlib.md5(data).digest()[:8])
        return cls(sign1, sign2)

    @classmethod
    def from_json(cls, value: Any, field: str = "contsign") -> ContSign:
        """Parse ``{"sign1": u32, "sign2": u32}``; anything else is err_no 1 naming ``field``."""
        if not isinstance(value, dict):
            raise bad_request(f"{field} must be an object {{sign1, sign2}}")
        parts = []
        for key in ("sign1", "sign2"):
            part = value.get(key)
            if isinstance(part, bool) or not isinstance(part, int) or not 0 <= part <= _UINT32_MAX:
                raise bad_request(f"{field}.{key} must be an unsigned 32-bit integer")
            parts.append(part)
        return cls(parts[0], parts[1])

    @classmethod
    def from_key(cls, key: int) -> ContSign:
        """Inverse of :attr:`key`."""
        sign1, sign2 = struct.unpack("<II", struct.pack("<q", key))
        return cls(sign1, sign2)

    @property
    def key(self) -> int:
        """A signed 64-bit integer, the storage key (SQLite INTEGER PRIMARY KEY friendly)."""
        return struct.unpack("<q", struct.pack("<II", self.sign1, self.sign2))[0]

    def to_json(self) -> dict[str, int]:
        """The wire form."""
        return {"sign1": self.sign1, "sign2": self.sign2}

    def __str__(self) -> str:
        return f"{self.sign1},{self.sign2}"
