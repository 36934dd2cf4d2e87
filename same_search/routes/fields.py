"""Reading request fields: every type or range problem becomes err_no 1 naming the field.

The retrieval and feature APIs share the same conventions (``from`` required, ``appid``
required without commas, optional ``sub_lib`` joined as ``appid_sub_lib``, base64 for binary
data), so they share this one reader.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from typing import Any

from same_search.contsign import ContSign
from same_search.embed.images import Region
from same_search.errors import bad_request, shown
from same_search.wire import FEA_BRIEF, FEA_TAGS

MAX_APPID_LEN = 128
MAX_CONTSIGNS = 10_000


def parse_json_object(raw: bytes | bytearray) -> dict[str, Any]:
    """The request body as a JSON object."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise bad_request(f"request body is not valid JSON: {exc}") from exc
    except ValueError:  # Python refuses integers of more than 4,300 digits (and says so at length)
        raise bad_request("request body holds a number of more than 4300 digits") from None
    if not isinstance(data, dict):
        raise bad_request("request body must be a JSON object")
    return data


#: Line breaks that MIME encoders (76 columns), the ``base64`` tool and Python 2's ``encodestring``
#: put into base64 text. Spaces and tabs are not among them: a ``+`` that a form encoder turned
#: into a space would otherwise be dropped and the image silently corrupted.
_LINE_BREAKS = str.maketrans("", "", "\r\n")


def decode_base64(value: Any, field: str) -> bytes:
    """Standard base64, tolerant of what other stacks send: line breaks anywhere (MIME wrapping,
    ``\\r\\n``) and missing ``=`` padding. Anything else that is not base64 is err_no 1 naming
    ``field``; so is a length that no whole number of bytes can have (1 more than a multiple of 4),
    which is what a truncated upload looks like, rather than a silently shortened image.
    """
    if not isinstance(value, str):
        raise bad_request(f"{field} must be a base64 string")
    text = value.translate(_LINE_BREAKS)
    body = text.rstrip("=")
    padding = len(text) - len(body)
    if padding > 2:
        raise bad_request(f"{field} is not valid base64: more than two '=' at the end")
    if len(body) % 4 == 1:
        raise bad_request(
            f"{field} is not valid base64: {len(body)} characters (without padding) cannot encode "
            "whole bytes; the data looks truncated"
        )
    if padding and (len(body) + padding) % 4:
        raise bad_request(f"{field} is not valid base64: wrong padding")
    try:
        return base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad_request(f"{field} is not valid base64: {exc}") from exc


def is_decimal(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also accepts ``"²"`` or ``"٣"``, which ``int`` then refuses."""
    return text.isascii() and text.isdigit()


def encode_base64(data: bytes) -> str:
    """Binary -> base64 text for JSON replies."""
    return base64.b64encode(data).decode("ascii")


def pack_tags(tags: tuple[int, int]) -> bytes:
    """Tags as the spec's ``struct.pack("II", tag1, tag2)`` (little-endian on every client we know)."""
    return struct.pack("<II", *tags)


def check_library_name(name: str) -> str:
    """A library name as every port accepts it: non-empty, printable, no comma, bounded length.

    One rule for the wire API and the management API, so no port can create a library that
    another cannot name (a CR/LF or NUL in a name broke URLs, headers and log lines).
    """
    if name in (".", ".."):  # browsers resolve them as path segments even when escaped
        raise bad_request(f"appid {name!r} cannot be named in a URL; choose another name")
    if not name or "," in name or len(name) > MAX_APPID_LEN or not name.isprintable():
        raise bad_request(
            f"appid must be 1 to {MAX_APPID_LEN} printable characters without commas (appid_sub_lib included)"
        )
    return name


class Fields:
    """Typed access to one request's JSON object."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def has(self, name: str) -> bool:
        return self.data.get(name) is not None

    def required_str(self, name: str) -> str:
        value = self.data.get(name)
        if value is None or value == "":
            raise bad_request(f"{name} is required")
        if not isinstance(value, str):
            raise bad_request(f"{name} must be a string")
        return value

    def optional_str(self, name: str, default: str = "") -> str:
        value = self.data.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise bad_request(f"{name} must be a string")
        return str(value)

    def uint(self, name: str, default: int, maximum: int | None = None) -> int:
        value = self.data.get(name)
        if value is None:
            return default
        if isinstance(value, str) and is_decimal(value):
            value = int(value)  # tolerate clients that stringify numbers
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise bad_request(f"{name} must be a non-negative integer")
        if maximum is not None and value > maximum:
            raise bad_request(f"{name} must be at most {maximum}")
        return value

    def check_common(self) -> None:
        """``from`` is required; ``format`` may only be json; ``logid`` is any number or string."""
        self.required_str("from")
        fmt = self.data.get("format", "json")
        if fmt not in ("json", None):
            raise bad_request('format must be "json" (the only format this service speaks)')
        logid = self.data.get("logid")
        if logid is not None and (isinstance(logid, bool) or not isinstance(logid, int | str)):
            raise bad_request("logid must be an integer")

    def appid(self) -> str:
        """The bare ``appid`` (what tokens are issued for)."""
        appid = self.required_str("appid")
        if "," in appid:
            raise bad_request("appid must not contain a comma")
        return appid

    def library_name(self) -> str:
        """``appid``, joined with ``sub_lib`` when present."""
        appid = self.appid()
        sub_lib = self.optional_str("sub_lib")
        if "," in sub_lib:
            raise bad_request("sub_lib must not contain a comma")
        return check_library_name(f"{appid}_{sub_lib}" if sub_lib else appid)

    def image(self, required: bool) -> bytes | None:
        """The base64 ``image``; empty bytes are returned as is (the embedder answers 216200)."""
        if "image" not in self.data or self.data["image"] is None:
            if required:
                raise bad_request("image is required")
            return None
        return decode_base64(self.data["image"], "image")

    def features(self) -> dict[int, bytes]:
        """``features`` as {fea_id: bytes}."""
        value = self.data.get("features")
        if value is None:
            return {}
        if not isinstance(value, list):
            raise bad_request("features must be a list of {fea_id, fea_data}")
        result: dict[int, bytes] = {}
        for i, entry in enumerate(value):
            if not isinstance(entry, dict):
                raise bad_request(f"features[{i}] must be an object {{fea_id, fea_data}}")
            fea_id = entry.get("fea_id")
            if isinstance(fea_id, bool) or not isinstance(fea_id, int):
                raise bad_request(f"features[{i}].fea_id must be an integer")
            result[fea_id] = decode_base64(entry.get("fea_data"), f"features[{i}].fea_data")
        return result

    def region(self) -> Region | None:
        """Extension: ``region`` ``{"x", "y", "w", "h"}`` in pixels, or with ``"unit": "fraction"``.

        Only types are checked here; whether the box fits the picture is known once its header
        is read (``embed.images``), and a misfit is err_no 1 too.
        """
        value = self.data.get("region")
        if value is None:
            return None
        return parse_region(value)

    def contsign(self) -> ContSign | None:
        """``contsign`` (or the spec table's spelling ``consign``)."""
        for name in ("contsign", "consign"):
            if self.data.get(name) is not None:
                return ContSign.from_json(self.data[name], name)
        return None

    def contsigns(self) -> list[ContSign]:
        """``contsigns`` (or ``consigns``); empty when absent."""
        for name in ("contsigns", "consigns"):
            value = self.data.get(name)
            if value is None:
                continue
            if not isinstance(value, list):
                raise bad_request(f"{name} must be a list of {{sign1, sign2}}")
            if len(value) > MAX_CONTSIGNS:
                raise bad_request(f"{name} may hold at most {MAX_CONTSIGNS} entries per request")
            return [ContSign.from_json(item, f"{name}[{i}]") for i, item in enumerate(value)]
        return []


REGION_UNITS = ("px", "fraction")
#: Largest size of a region coordinate: far past any picture's side, far below where float
#: arithmetic on the box overflows (1e308 + 1e308 is infinite, and ``round`` of it raises).
REGION_MAX = 1e9


def parse_region(value: Any, field: str = "region") -> Region:
    """``{"x", "y", "w", "h"[, "unit"]}`` as a :class:`Region`; err_no 1 naming what is wrong."""
    if not isinstance(value, dict):
        raise bad_request(f'{field} must be an object {{"x", "y", "w", "h"}} (optionally "unit": "fraction")')
    unknown = set(value) - {"x", "y", "w", "h", "unit"}
    if unknown:
        raise bad_request(f"{field} has unknown keys {sorted(unknown)}; known: x, y, w, h, unit")
    unit = value.get("unit", "px")
    if unit not in REGION_UNITS:
        raise bad_request(f'{field}.unit must be "px" (the default) or "fraction", got {shown(unit)}')
    numbers = []
    for key in ("x", "y", "w", "h"):
        number = value.get(key)
        if isinstance(number, bool) or not isinstance(number, int | float) or number != number:
            raise bad_request(f"{field}.{key} is required and must be a number")
        if not abs(number) <= REGION_MAX:  # infinity too; an int of 400 digits is not even a float
            raise bad_request(f"{field}.{key} must be a finite number of at most {REGION_MAX:g} in size")
        numbers.append(float(number))
    return Region(*numbers, fraction=unit == "fraction")


def brief_of(features: dict[int, bytes], limit: int, required: bool) -> bytes | None:
    """The brief (fea_id 1000), checked against the size limit."""
    brief = features.get(FEA_BRIEF)
    if brief is None:
        if required:
            raise bad_request(f"features must contain the brief (fea_id {FEA_BRIEF})")
        return None
    if len(brief) > limit:
        raise bad_request(f"brief (fea_id {FEA_BRIEF}) is {len(brief)} bytes; at most {limit} are allowed")
    return brief


def tags_of(features: dict[int, bytes]) -> tuple[int, int] | None:
    """The tags (fea_id 999): exactly 8 bytes, two little-endian uint32."""
    raw = features.get(FEA_TAGS)
    if raw is None:
        return None
    if len(raw) != 8:
        raise bad_request(
            f"tags (fea_id {FEA_TAGS}) must be 8 bytes (struct.pack('II', tag1, tag2)), got {len(raw)}"
        )
    tag1, tag2 = struct.unpack("<II", raw)
    return tag1, tag2
