"""ContSign: MD5-derived, computable by clients, lossless as a storage key."""

from __future__ import annotations

import hashlib
import struct

import pytest

from same_search.contsign import ContSign
from same_search.errors import ApiError


def test_contsign_is_the_first_8_md5_bytes_little_endian():
    data = b"some image bytes"
    digest = hashlib.md5(data).digest()
    assert ContSign.of_image(data) == ContSign(*struct.unpack("<II", digest[:8]))
    assert ContSign.of_image(b"") == ContSign(0xD98C1DD4, 0x04B2008F)  # md5("") = d4 1d 8c d9 8f 00 b2 04 ...


@pytest.mark.parametrize("sign", [ContSign(0, 0), ContSign(2**32 - 1, 2**32 - 1), ContSign(1, 2**31)])
def test_key_round_trip(sign):
    assert ContSign.from_key(sign.key) == sign
    assert -(2**63) <= sign.key < 2**63


@pytest.mark.parametrize(
    "value", [None, [], {"sign1": 1}, {"sign1": 1, "sign2": 2**32}, {"sign1": True, "sign2": 1}]
)
def test_bad_json_is_err_1(value):
    with pytest.raises(ApiError) as info:
        ContSign.from_json(value)
    assert info.value.err_no == 1
