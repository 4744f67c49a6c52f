"""Unit tests of the MOVED reply's owner and text (ownership.py), parsed back by the
client's routing.py, and of docs/protocols/ingest.md's error code table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postoffice.core.errors import ConfigError
from postoffice.ingest.client.routing import parse_moved
from postoffice.ingest.errors import ErrorCode, MovedError, error_code, error_for
from postoffice.ingest.ownership import MAX_NODE_BYTES, Owner, moved_message

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocols" / "ingest.md"

B = Owner(node="ingest-b-7010", host="10.0.0.2", health_port=7010, data_ports=(7110, 7111))


def test_moved_message_names_the_owner() -> None:
    assert moved_message(B) == "moved ingest-b-7010 10.0.0.2:7010 7110,7111"


def test_an_ipv6_host_goes_in_brackets() -> None:
    owner = Owner(node="n", host="::1", health_port=7000, data_ports=(7100,))
    assert moved_message(owner) == "moved n [::1]:7000 7100"
    assert parse_moved(moved_message(owner)) == owner


def test_moved_is_code_14_and_maps_both_ways() -> None:
    assert int(ErrorCode.MOVED) == 14
    assert error_code(MovedError("moved a b:1 2")) is ErrorCode.MOVED
    assert type(error_for(ErrorCode.MOVED, "x")) is MovedError


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"node": ""}, r"^owner node '' must be 1 to 255 visible ascii characters$"),
        ({"node": "a b"}, r"^owner node 'a b' must be"),
        ({"node": "x" * (MAX_NODE_BYTES + 1)}, r"^owner node 'x+' must be"),
        ({"node": "n\u00e9"}, r"^owner node 'n\u00e9' must be"),
        ({"host": "h/1"}, r"^owner host 'h/1' must be 1 to 255 characters of a host name"),
        ({"host": "[::1]"}, r"^owner host '\[::1\]' must be"),
        (
            {"health_port": 70000},
            r"^owner health_port 70000 is not a bound port: expected 1 to 65535$",
        ),
        ({"data_ports": ()}, r"^owner data_ports lists 0 ports, expected 1 to 64$"),
        ({"data_ports": tuple(range(1000, 1065))}, r"^owner data_ports lists 65 ports"),
        ({"data_ports": (7100, 65536)}, r"^owner data_ports 65536 is not a bound port"),
        ({"health_port": 0}, r"^owner health_port 0 is not a bound port"),
        ({"data_ports": (0,)}, r"^owner data_ports 0 is not a bound port"),
    ],
)
def test_an_owner_a_moved_message_could_not_carry_is_refused(
    fields: dict[str, object], message: str
) -> None:
    values: dict[str, object] = {
        "node": B.node,
        "host": B.host,
        "health_port": B.health_port,
        "data_ports": B.data_ports,
    }
    values.update(fields)
    with pytest.raises(ConfigError, match=message):
        Owner(**values)  # type: ignore[arg-type]  # the fields are the table's, typed there


owners = st.builds(
    Owner,
    node=st.text(
        alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40
    ),
    host=st.text(alphabet="abcxyz019.-_:%", min_size=1, max_size=40),
    health_port=st.integers(1, 65535),
    data_ports=st.lists(st.integers(1, 65535), min_size=1, max_size=64).map(tuple),
)


@given(owners)
def test_parse_moved_reads_back_every_owner(owner: Owner) -> None:
    assert parse_moved(moved_message(owner)) == owner


def test_the_error_code_table_lists_every_code() -> None:
    """docs/protocols/ingest.md's table: each code, its number and name, in order."""
    text = DOC.read_text(encoding="utf-8")
    table = text[text.index("## Error codes") : text.index("## Uploading a file")]
    rows = re.findall(r"^\| (\d+) \| ([A-Z_]+) \|", table, flags=re.MULTILINE)
    assert [(int(number), name) for number, name in rows] == [
        (code.value, code.name) for code in ErrorCode
    ]


def test_the_documented_moved_example_parses() -> None:
    text = DOC.read_text(encoding="utf-8")
    example = re.search(r"For example `(moved [^`]+)`", text)
    assert example is not None
    assert parse_moved(example.group(1)) == Owner(
        node="ingest-b-7010", host="10.0.0.2", health_port=7010, data_ports=(7110, 7111, 7112, 7113)
    )
