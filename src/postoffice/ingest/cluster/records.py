"""Pure: the names and values the ingest cluster keeps in NATS and S3 (bucket and key names,
the JSON of a node, a claim and a published record, object paths); no I/O."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Final, final

from postoffice.core.errors import ConfigError
from postoffice.ingest.cluster.errors import ClusterError
from postoffice.ingest.messages import FileId
from postoffice.ingest.ownership import Owner

#: KV bucket: node name -> the node's Owner record, rewritten every heartbeat.
NODES_BUCKET: Final = "po_ingest_nodes"
#: KV bucket: file id hex -> the Claim of the node that owns the upload.
OWNERS_BUCKET: Final = "po_ingest_owners"
#: KV bucket: file id hex -> the PublishedRecord, created once by the publishing node.
PUBLISHED_BUCKET: Final = "po_ingest_published"
#: JetStream stream of the ack-port events, one subject per file id.
EVENTS_STREAM: Final = "PO_INGEST_EVENTS"
EVENTS_SUBJECT_PREFIX: Final = "po.ingest.events."
#: A file id is 16 bytes, shown as 32 lowercase hex digits in keys, subjects and paths.
FILE_ID_BYTES: Final = 16
#: Chunk object names carry the index in 8 decimal digits, so they list in index order.
CHUNK_INDEX_DIGITS: Final = 8
MAX_CHUNK_INDEX: Final = 10**CHUNK_INDEX_DIGITS - 1
#: A node name is a KV key and part of a consumer name: letters, digits, `_`, `-`, `.`;
#: 64 characters at most, starting with a letter or digit.
_NODE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_HEX_KEY: Final = re.compile(r"[0-9a-f]{32}")


def check_node_name(name: str) -> str:
    """Return `name` if it can name a node; raise ClusterError saying why not."""
    if not _NODE_NAME.fullmatch(name):
        raise ClusterError(
            f"node name {name!r} must be 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


def file_key(file_id: bytes) -> str:
    """The KV key, subject token and path segment of a file id: 32 lowercase hex digits."""
    if len(file_id) != FILE_ID_BYTES:
        raise ClusterError(f"file id of {len(file_id)} bytes, expected {FILE_ID_BYTES}")
    return file_id.hex()


def file_id_of(key: str) -> FileId:
    """The file id a key or subject token names; ClusterError if it is not 32 hex digits."""
    if not _HEX_KEY.fullmatch(key):
        raise ClusterError(f"file id key {key!r} is not 32 lowercase hex digits")
    return FileId(bytes.fromhex(key))


def event_subject(file_id: bytes) -> str:
    """The events stream's subject for one file id."""
    return EVENTS_SUBJECT_PREFIX + file_key(file_id)


def chunk_prefix(file_id: bytes) -> str:
    """The object prefix under which one upload's chunks live (with its trailing slash)."""
    return f"chunks/{file_key(file_id)}/"


def chunk_path(file_id: bytes, index: int) -> str:
    """The object path of chunk `index` of an upload: chunks/<hex>/<index in 8 digits>."""
    if not 0 <= index <= MAX_CHUNK_INDEX:
        raise ClusterError(f"chunk index {index} outside 0..{MAX_CHUNK_INDEX}")
    return f"{chunk_prefix(file_id)}{index:0{CHUNK_INDEX_DIGITS}d}"


def chunk_index_of(path: str, file_id: bytes) -> int:
    """The index a chunk object's path names; ClusterError for a path that is no chunk."""
    prefix = chunk_prefix(file_id)
    tail = path[len(prefix) :] if path.startswith(prefix) else ""
    if len(tail) != CHUNK_INDEX_DIGITS or not tail.isdigit() or not tail.isascii():
        raise ClusterError(f"object {path!r} is not a chunk of {file_key(file_id)}")
    return int(tail)


def file_path(name: str) -> str:
    """The object path of a published file: files/<name> (the name rules are checked by the
    ingest service before a name reaches here)."""
    if not name or "/" in name or name in (".", ".."):
        raise ClusterError(f"file name {name!r} cannot name an object under files/")
    return f"files/{name}"


def _load(data: bytes, what: str) -> dict[str, object]:
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ClusterError(f"{what} is not JSON: {data[:64]!r}") from exc
    if not isinstance(value, dict):
        raise ClusterError(f"{what} is not a JSON object: {data[:64]!r}")
    return value


def _wrong(value: dict[str, object], name: str, kind: str, what: str) -> ClusterError:
    return ClusterError(f"{what} field {name!r} is {value.get(name)!r}, expected {kind}")


def _str(value: dict[str, object], name: str, what: str) -> str:
    found = value.get(name)
    if not isinstance(found, str):
        raise _wrong(value, name, "str", what)
    return found


def _int(value: dict[str, object], name: str, what: str) -> int:
    found = value.get(name)
    # bool is an int to isinstance, and never what an int field means
    if not isinstance(found, int) or isinstance(found, bool):
        raise _wrong(value, name, "int", what)
    return found


def _bool(value: dict[str, object], name: str, what: str) -> bool:
    found = value.get(name)
    if not isinstance(found, bool):
        raise _wrong(value, name, "bool", what)
    return found


def _list(value: dict[str, object], name: str, what: str) -> list[object]:
    found = value.get(name)
    if not isinstance(found, list):
        raise _wrong(value, name, "list", what)
    return found


def _port(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
        raise ClusterError(f"{what} has port {value!r}, expected 1..65535")
    return value


def _dump(value: dict[str, object]) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def encode_node(owner: Owner) -> bytes:
    """The JSON value of a node's key in po_ingest_nodes: its Owner without the name, which
    is the key."""
    return _dump(
        {"host": owner.host, "health_port": owner.health_port, "data_ports": owner.data_ports}
    )


def decode_node(node: str, data: bytes) -> Owner:
    """The Owner that the key `node` with value `data` describes; ClusterError if bad."""
    check_node_name(node)
    what = f"record of node {node!r}"
    value = _load(data, what)
    host = _str(value, "host", what)
    if not host:
        raise ClusterError(f"node {node} advertises an empty host")
    health_port = _port(value.get("health_port"), what)
    data_ports = tuple(_port(port, what) for port in _list(value, "data_ports", what))
    try:
        return Owner(node=node, host=host, health_port=health_port, data_ports=data_ports)
    except ConfigError as exc:
        raise ClusterError(f"{what}: {exc}") from exc


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Claim:
    """The value of an upload's key in po_ingest_owners: the owning node, and the epoch,
    which counts the owners the upload has had (1 for its first, +1 per takeover).
    `handed_over` is written by an owner that drains (it stops): any node may then take the
    upload over at once, as from a dead owner, without waiting for the owner to leave."""

    node: str
    epoch: int
    handed_over: bool = False

    def encode(self) -> bytes:
        value: dict[str, object] = {"node": self.node, "epoch": self.epoch}
        if self.handed_over:
            value["handed_over"] = True
        return _dump(value)

    @classmethod
    def decode(cls, data: bytes) -> Claim:
        """The Claim a po_ingest_owners value holds; ClusterError if it does not parse."""
        value = _load(data, "claim")
        node = _str(value, "node", "claim")
        epoch = _int(value, "epoch", "claim")
        if epoch < 1:
            raise ClusterError(f"claim epoch {epoch}, expected 1 or more")
        handed_over = _bool(value, "handed_over", "claim") if "handed_over" in value else False
        return cls(node=check_node_name(node), epoch=epoch, handed_over=handed_over)

    def taken_over_by(self, node: str) -> Claim:
        """The claim a node writes when it takes this one over from a dead owner (or one
        that handed it over)."""
        return Claim(node=node, epoch=self.epoch + 1)

    def handed(self) -> Claim:
        """This claim, handed over by its owner."""
        return Claim(node=self.node, epoch=self.epoch, handed_over=True)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class PublishedRecord:
    """The value of a file id's key in po_ingest_published: what the PUBLISHED event says
    (name, size, XXH3-128 digests of the file and of the payload, replaced) and the node
    that completed the publish."""

    file_id: FileId
    name: str
    size: int
    digest: bytes
    payload_digest: bytes
    replaced: bool
    node: str

    def encode(self) -> bytes:
        return _dump(
            {
                "name": self.name,
                "size": self.size,
                "digest": self.digest.hex(),
                "payload_digest": self.payload_digest.hex(),
                "replaced": self.replaced,
                "node": self.node,
            }
        )

    @classmethod
    def decode(cls, key: str, data: bytes) -> PublishedRecord:
        """The record under `key` with value `data`; ClusterError if it does not parse."""
        what = f"published record {key}"
        value = _load(data, what)
        size = _int(value, "size", what)
        if size < 0:
            raise ClusterError(f"{what} has size {size}, expected 0 or more")
        try:
            digest = bytes.fromhex(_str(value, "digest", what))
            payload_digest = bytes.fromhex(_str(value, "payload_digest", what))
        except ValueError as exc:
            raise ClusterError(f"{what} has a digest that is not hex") from exc
        return cls(
            file_id=file_id_of(key),
            name=_str(value, "name", what),
            size=size,
            digest=digest,
            payload_digest=payload_digest,
            replaced=_bool(value, "replaced", what),
            node=_str(value, "node", what),
        )
