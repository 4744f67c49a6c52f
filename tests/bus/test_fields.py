"""The field codecs both bus wire formats share: limits, NULs, and text that is not UTF-8."""

from __future__ import annotations

import pytest

pytest.importorskip("postoffice.bus", exc_type=ImportError)

from postoffice.bus.errors import BusProtocolError
from postoffice.bus.fields import FieldReader, check_range, encode_str8, encode_text


def test_text_round_trips_through_the_reader() -> None:
    reader = FieldReader(encode_str8("caf\u00e9", 16, "name") + b"\x07", "test")
    assert reader.str8(16, "name") == "caf\u00e9"
    assert reader.u8("tail") == 7
    reader.end()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("x" * 9, r"^name is 9 bytes, the limit is 8$"),
        ("a\0b", r"^name holds a NUL byte$"),
    ],
)
def test_encoding_refuses_what_the_reader_would(value: str, message: str) -> None:
    with pytest.raises(BusProtocolError, match=message):
        encode_text(value, 8, "name")


def test_a_lone_surrogate_is_refused_by_the_reader_not_escaping_the_encoder() -> None:
    """The encoder raises nothing but BusProtocolError, and the peer refuses the bytes."""
    data = encode_str8("\ud800", 8, "name")
    with pytest.raises(BusProtocolError, match=r"^name is not UTF-8: "):
        FieldReader(data, "test").str8(8, "name")


def test_reads_past_the_payload_and_leftovers_are_refused() -> None:
    with pytest.raises(BusProtocolError, match=r"^test payload of 1 bytes ends inside size$"):
        FieldReader(b"\x01", "test").take(2, "size")
    reader = FieldReader(b"\x01\x02", "test")
    reader.u8("one")
    with pytest.raises(BusProtocolError, match=r"^test payload has 1 bytes past its end$"):
        reader.end()
    assert check_range(5, 1, 5, "n") == 5
    with pytest.raises(BusProtocolError, match=r"^n 6 outside 1\.\.5$"):
        check_range(6, 1, 5, "n")
