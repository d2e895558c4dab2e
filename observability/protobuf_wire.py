"""The protobuf wire format, as far as OTLP span export needs it.

Fields are written as the protobuf runtime writes them: a tag (field number and
wire type) then the value; a message, string or bytes value is length-delimited.

>>> field(1, string(2, "hi"))
b'\\n\\x04\\x12\\x02hi'
>>> varint(300)
b'\\xac\\x02'
"""

from __future__ import annotations

import struct

pack_fixed64 = struct.Struct("<Q").pack
pack_fixed32 = struct.Struct("<I").pack
pack_double = struct.Struct("<d").pack
#: Two fixed64 fields together (tag, value, tag, value): a span's start and end time.
pack_two_fixed64 = struct.Struct("<BQBQ").pack

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1

_ONE_BYTE = [bytes((value,)) for value in range(0x80)]


def varint(value: int) -> bytes:
    """A non-negative integer as a base-128 varint."""
    if value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


#: The tag of length-delimited field N (wire type 2), for the field numbers OTLP spans use.
TAGS = {number: varint(number << 3 | 2) for number in range(1, 16)}


def field(field_number: int, payload: bytes) -> bytes:
    """A length-delimited field (a message, bytes or a string already encoded)."""
    size = len(payload)
    return TAGS[field_number] + (_ONE_BYTE[size] if size < 0x80 else varint(size)) + payload


def string(field_number: int, text: str) -> bytes:
    """A string field, UTF-8 encoded."""
    return field(field_number, text.encode("utf-8"))
