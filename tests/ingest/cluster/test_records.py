"""The cluster's names and JSON values: key names, object paths, and each record's round
trip and refusals."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postoffice.ingest.cluster import Claim, ClusterError, Owner, PublishedRecord
from postoffice.ingest.cluster.records import (
    check_node_name,
    chunk_index_of,
    chunk_path,
    chunk_prefix,
    decode_node,
    encode_node,
    event_subject,
    file_id_of,
    file_key,
    file_path,
)
from postoffice.ingest.messages import FileId

FID = FileId(bytes(range(16)))
HEX = "000102030405060708090a0b0c0d0e0f"


def test_a_file_id_is_named_by_32_lowercase_hex_digits_everywhere() -> None:
    assert file_key(FID) == HEX
    assert file_id_of(HEX) == FID
    assert event_subject(FID) == f"po.ingest.events.{HEX}"
    assert chunk_prefix(FID) == f"chunks/{HEX}/"
    assert chunk_path(FID, 7) == f"chunks/{HEX}/00000007"
    assert chunk_path(FID, 99_999_999) == f"chunks/{HEX}/99999999"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: file_key(b"short"), r"^file id of 5 bytes, expected 16$"),
        (lambda: file_id_of(HEX.upper()), r"^file id key '000102.*' is not 32 lowercase hex"),
        (lambda: file_id_of(HEX[:-1]), r"is not 32 lowercase hex digits$"),
        (lambda: chunk_path(FID, -1), r"^chunk index -1 outside 0\.\.99999999$"),
        (lambda: chunk_path(FID, 10**8), r"^chunk index 100000000 outside 0\.\.99999999$"),
        (lambda: chunk_index_of(f"chunks/{HEX}/7", FID), r"is not a chunk of 0001"),
        (lambda: chunk_index_of(f"chunks/{'f' * 32}/00000007", FID), r"is not a chunk of"),
        (lambda: file_path("a/b"), r"^file name 'a/b' cannot name an object under files/$"),
        (lambda: file_path(""), r"^file name '' cannot name"),
    ],
)
def test_bad_names_are_refused_with_a_message(call: object, message: str) -> None:
    assert callable(call)
    with pytest.raises(ClusterError, match=message):
        call()


@given(st.integers(min_value=0, max_value=99_999_999))
def test_a_chunk_path_gives_back_its_index_and_sorts_as_the_index(index: int) -> None:
    path = chunk_path(FID, index)
    assert chunk_index_of(path, FID) == index
    assert (path < chunk_path(FID, index + 1)) if index < 99_999_999 else True


def test_an_owner_record_round_trips_as_compact_json() -> None:
    me = Owner(node="ingest-1.example", host="10.0.0.5", health_port=7000, data_ports=(7100, 7101))
    assert encode_node(me) == b'{"data_ports":[7100,7101],"health_port":7000,"host":"10.0.0.5"}'
    assert decode_node("ingest-1.example", encode_node(me)) == me


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json", r"^record of node 'n1' is not JSON: b'not json'$"),
        (b"[1]", r"^record of node 'n1' is not a JSON object"),
        (b'{"host":"h","health_port":0,"data_ports":[]}', r"has port 0, expected 1\.\.65535$"),
        (b'{"host":"h","health_port":true,"data_ports":[]}', r"has port True, expected"),
        (b'{"host":"h","health_port":1,"data_ports":["7"]}', r"has port '7', expected"),
        (b'{"host":5,"health_port":1,"data_ports":[]}', r"field 'host' is 5, expected str$"),
        (b'{"host":"","health_port":1,"data_ports":[]}', r"^node n1 advertises an empty host$"),
        (
            b'{"host":"h","health_port":1,"data_ports":[]}',
            r"^record of node 'n1': owner data_ports lists 0 ports, expected 1 to 64$",
        ),
        (
            b'{"host":"a b","health_port":1,"data_ports":[2]}',
            r"^record of node 'n1': owner host 'a b' must be",
        ),
    ],
)
def test_a_bad_owner_record_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(ClusterError, match=message):
        decode_node("n1", data)


@pytest.mark.parametrize("name", ["", "-x", "a b", "a/b", "x" * 65, "a*", "a>"])
def test_a_node_name_that_cannot_be_a_key_is_refused(name: str) -> None:
    good = b'{"host":"h","health_port":1,"data_ports":[2]}'
    with pytest.raises(ClusterError, match=r"^node name .* must be 1-64 letters"):
        decode_node(name, good)
    with pytest.raises(ClusterError, match=r"^node name .* must be 1-64 letters"):
        check_node_name(name)


def test_a_claim_round_trips_and_a_takeover_counts_one_more_owner() -> None:
    claim = Claim(node="n1", epoch=1)
    assert claim.encode() == b'{"epoch":1,"node":"n1"}'
    assert Claim.decode(claim.encode()) == claim
    assert claim.taken_over_by("n2") == Claim(node="n2", epoch=2)


def test_a_handed_over_claim_round_trips_and_its_takeover_is_plain() -> None:
    handed = Claim(node="n1", epoch=3).handed()
    assert handed.encode() == b'{"epoch":3,"handed_over":true,"node":"n1"}'
    assert Claim.decode(handed.encode()) == handed
    assert handed.handed_over
    assert handed.taken_over_by("n2") == Claim(node="n2", epoch=4)
    assert not Claim.decode(b'{"node":"n1","epoch":3}').handed_over


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"node":"n1","epoch":0}', r"^claim epoch 0, expected 1 or more$"),
        (b'{"node":"n1","epoch":"1"}', r"^claim field 'epoch' is '1', expected int$"),
        (b'{"node":"n1","epoch":true}', r"^claim field 'epoch' is True, expected int$"),
        (b'{"epoch":1}', r"^claim field 'node' is None, expected str$"),
        (b'{"node":"a b","epoch":1}', r"^node name 'a b' must be"),
        (
            b'{"node":"n1","epoch":1,"handed_over":1}',
            r"^claim field 'handed_over' is 1, expected bool$",
        ),
    ],
)
def test_a_bad_claim_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(ClusterError, match=message):
        Claim.decode(data)


def test_a_published_record_round_trips() -> None:
    record = PublishedRecord(
        file_id=FID,
        name="report.csv",
        size=10,
        digest=b"\x01" * 16,
        payload_digest=b"\x02" * 16,
        replaced=True,
        node="n1",
    )
    assert PublishedRecord.decode(HEX, record.encode()) == record
    with pytest.raises(ClusterError, match=r"^published record .* has a digest that is not hex$"):
        PublishedRecord.decode(HEX, record.encode().replace(b'"0101', b'"zz01'))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            (b'"size":10', b'"size":-1'),
            r"^published record 0001.* has size -1, expected 0 or more$",
        ),
        ((b'"replaced":true', b'"replaced":1'), r"field 'replaced' is 1, expected bool$"),
        ((b'"name":"report.csv"', b'"name":null'), r"field 'name' is None, expected str$"),
    ],
)
def test_a_bad_published_record_is_refused(change: tuple[bytes, bytes], message: str) -> None:
    record = PublishedRecord(
        file_id=FID,
        name="report.csv",
        size=10,
        digest=bytes(16),
        payload_digest=bytes(16),
        replaced=True,
        node="n1",
    )
    data = record.encode()
    assert change[0] in data
    with pytest.raises(ClusterError, match=message):
        PublishedRecord.decode(HEX, data.replace(*change))
