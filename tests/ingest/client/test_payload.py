"""Unit tests of the ingest client's payload preparation: file ids, names, compression to
the work dir, chunk planning, and chunk frames read from the payload."""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
import xxhash
import zstandard

from postoffice.core.errors import StorageError
from postoffice.ingest.client import payload as payload_module
from postoffice.ingest.client.payload import (
    FILE_ID_DOMAIN,
    PreparedFile,
    chunk_count,
    derive_file_id,
    is_zstd,
    open_payload,
    plan_chunks,
    prepare,
    read_chunk_frame,
    upload_name,
    work_root,
)
from postoffice.ingest.errors import (
    BadNameError,
    ConflictError,
    IngestLimitError,
    IngestProtocolError,
)
from postoffice.ingest.messages import MAX_CHUNKS, Chunk, FileId, Status, UploadState
from postoffice.ingest.protocol import MessageDecoder, NeedData

SEED = 20240611
SHA = xxhash.xxh3_128_digest(b"content")
FID = FileId(bytes(range(16)))


def random_bytes(size: int, seed: int = SEED) -> bytes:
    """Incompressible bytes, so a small chunk size gives many chunks."""
    return random.Random(seed).randbytes(size)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- file id ------------------------------------------------------------------------------


class TestFileId:
    def test_is_the_documented_derivation(self) -> None:
        material = FILE_ID_DOMAIN + b"a.log\0" + SHA + (4 << 20).to_bytes(8, "big")
        assert derive_file_id("a.log", SHA, 4 << 20) == hashlib.sha256(material).digest()[:16]

    def test_is_pinned_across_versions(self) -> None:
        """Resume after a client upgrade depends on this value never changing."""
        assert derive_file_id("a.log", SHA, 4 << 20).hex() == GOLDEN_FILE_ID

    def test_is_deterministic(self) -> None:
        assert derive_file_id("a.log", SHA, 1024) == derive_file_id("a.log", SHA, 1024)

    @pytest.mark.parametrize(
        ("name", "sha", "chunk_size"),
        [
            ("b.log", SHA, 1024),
            ("a.log", xxhash.xxh3_128_digest(b"other"), 1024),
            ("a.log", SHA, 2048),
        ],
    )
    def test_changes_with_name_content_and_chunk_size(
        self, name: str, sha: bytes, chunk_size: int
    ) -> None:
        assert derive_file_id(name, sha, chunk_size) != derive_file_id("a.log", SHA, 1024)

    def test_a_zst_gets_a_stable_id_from_its_compressed_bytes(self, tmp_path: Path) -> None:
        """A .zst is hashed, never decompressed: its bytes give the id and payload digest."""
        data = b"hello " * 1000
        zst = write(tmp_path / "a.txt.zst", zstandard.ZstdCompressor(level=19).compress(data))
        packed = prepare(zst, chunk_size=1024, work_dir=tmp_path)
        assert (packed.size, packed.digest) == (None, None)
        assert packed.payload_digest == xxhash.xxh3_128_digest(zst.read_bytes())
        assert packed.payload_size == zst.stat().st_size
        assert packed.file_id == prepare(zst, chunk_size=1024, work_dir=tmp_path).file_id
        assert packed.file_id == derive_file_id("a.txt", packed.payload_digest, 1024)


GOLDEN_FILE_ID = (
    hashlib.sha256(b"postoffice-ingest-v2\0a.log\0" + SHA + bytes([0, 0, 0, 0, 0, 0x40, 0, 0]))
    .digest()[:16]
    .hex()
)


# --- names --------------------------------------------------------------------------------


class TestNames:
    def test_plain_file_keeps_its_name(self, tmp_path: Path) -> None:
        path = write(tmp_path / "report.csv", b"a,b\n")
        assert not is_zstd(path)
        assert prepare(path, chunk_size=1024, work_dir=tmp_path).name == "report.csv"

    def test_zstd_file_loses_its_suffix(self, tmp_path: Path) -> None:
        path = write(tmp_path / "report.csv.zst", zstandard.compress(b"a,b\n"))
        assert is_zstd(path)
        prepared = prepare(path, chunk_size=1024, work_dir=tmp_path)
        assert prepared.name == "report.csv"
        assert not prepared.owned
        assert prepared.payload == path

    def test_zstd_is_detected_by_magic_not_suffix(self, tmp_path: Path) -> None:
        path = write(tmp_path / "data.bin", zstandard.compress(b"payload"))
        prepared = prepare(path, chunk_size=1024, work_dir=tmp_path)
        assert (prepared.name, prepared.payload, prepared.owned) == ("data.bin", path, False)
        assert prepared.digest is None

    def test_fake_zst_suffix_is_compressed_and_keeps_its_name(self, tmp_path: Path) -> None:
        path = write(tmp_path / "notes.zst", b"not zstandard at all")
        prepared = prepare(path, chunk_size=1024, work_dir=tmp_path)
        assert prepared.name == "notes.zst"
        assert prepared.owned
        assert prepared.payload != path

    @pytest.mark.parametrize(
        ("filename", "zstd", "message"),
        [
            (".hidden", False, r"^name '\.hidden' starts with '\.'$"),
            (" lead", False, r"^name ' lead' has leading or trailing whitespace$"),
            ("tab\there", False, r"^name 'tab\\there' contains control character 0x09$"),
            ("back\\slash", False, r"contains path separator"),
            (".zst", True, r"^name is empty$"),
            ("...zst", True, r"^name '\.\.' is reserved$"),
            ("x" * 256, False, r"^name of 256 bytes exceeds limit 255$"),
        ],
    )
    def test_hostile_names_are_refused(self, filename: str, zstd: bool, message: str) -> None:
        with pytest.raises(BadNameError, match=message):
            upload_name(Path("/tmp") / filename, zstd=zstd)

    @pytest.mark.parametrize("name", ["../etc/passwd", "a/b", "..", "", "nul\0"])
    def test_hostile_name_override_is_refused_before_any_work(
        self, tmp_path: Path, name: str
    ) -> None:
        path = write(tmp_path / "ok.txt", b"x")
        with pytest.raises(BadNameError):
            prepare(path, chunk_size=1024, work_dir=tmp_path, name=name)
        assert not work_root(tmp_path).exists()


# --- compression to the work dir ------------------------------------------------------------


class TestPrepare:
    def test_compresses_into_the_work_dir_with_a_sidecar(self, tmp_path: Path) -> None:
        data = b"line of a log file\n" * 5000
        prepared = prepare(write(tmp_path / "app.log", data), chunk_size=4096, work_dir=tmp_path)
        hex_id = prepared.file_id.hex()
        assert prepared.payload == tmp_path / "postoffice-ingest" / f"{hex_id}.zst"
        assert prepared.owned
        assert not prepared.reused
        payload = prepared.payload.read_bytes()
        assert len(payload) == prepared.payload_size < len(data)
        assert zstandard.ZstdDecompressor().decompress(payload) == data
        params = zstandard.get_frame_parameters(payload)
        assert params.content_size == len(data)
        assert params.has_checksum
        assert (prepared.size, prepared.digest) == (len(data), xxhash.xxh3_128_digest(data))
        assert prepared.payload_digest == xxhash.xxh3_128_digest(payload)
        sidecar = json.loads((prepared.payload.with_suffix(".json")).read_text())
        assert sidecar["size"] == prepared.payload_size
        assert sidecar["digest_original"] == xxhash.xxh3_128_hexdigest(data)
        assert sidecar["payload_digest"] == xxhash.xxh3_128_hexdigest(payload)
        assert sorted(p.name for p in prepared.payload.parent.iterdir()) == [
            f"{hex_id}.json",
            f"{hex_id}.zst",
        ]

    def test_compression_is_deterministic(self, tmp_path: Path) -> None:
        data = random_bytes(300_000) + b"repetitive " * 50_000
        src = write(tmp_path / "mixed.bin", data)
        first = prepare(src, chunk_size=65536, work_dir=tmp_path / "one")
        second = prepare(src, chunk_size=65536, work_dir=tmp_path / "two")
        assert first.payload != second.payload
        assert first.payload.read_bytes() == second.payload.read_bytes()
        assert first.file_id == second.file_id

    def test_an_earlier_copy_is_reused(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        src = write(tmp_path / "a.txt", b"abc" * 1000)
        first = prepare(src, chunk_size=1024, work_dir=tmp_path)

        def no_compress(*args: object, **kwargs: object) -> int:
            raise AssertionError("compressed again")

        monkeypatch.setattr(payload_module, "_compress", no_compress)
        second = prepare(src, chunk_size=1024, work_dir=tmp_path)
        assert second.reused
        assert second == PreparedFile(**{**_fields(first), "reused": True})

    def test_a_copy_the_sidecar_does_not_vouch_for_is_redone(self, tmp_path: Path) -> None:
        src = write(tmp_path / "a.txt", b"abc" * 1000)
        first = prepare(src, chunk_size=1024, work_dir=tmp_path)
        good = first.payload.read_bytes()
        first.payload.write_bytes(good[:-3])  # a copy cut short, sidecar says otherwise
        second = prepare(src, chunk_size=1024, work_dir=tmp_path)
        assert not second.reused
        assert second.payload.read_bytes() == good

    def test_empty_file_is_one_non_empty_chunk(self, tmp_path: Path) -> None:
        prepared = prepare(write(tmp_path / "empty", b""), chunk_size=1024, work_dir=tmp_path)
        assert prepared.size == 0
        assert prepared.digest == xxhash.xxh3_128_digest(b"")
        assert prepared.payload_size > 0
        assert prepared.total == 1
        assert zstandard.ZstdDecompressor().decompress(prepared.payload.read_bytes()) == b""

    def test_a_multi_megabyte_zst_is_hashed_in_blocks(self, tmp_path: Path) -> None:
        blob = zstandard.compress(random_bytes(3 * 1024 * 1024 + 5))
        path = write(tmp_path / "big.zst", blob)
        prepared = prepare(path, chunk_size=1 << 20, work_dir=tmp_path)
        assert prepared.payload_digest == xxhash.xxh3_128_digest(blob)
        assert prepared.total == 4

    def test_unreadable_file_is_a_storage_error(self, tmp_path: Path) -> None:
        with pytest.raises(StorageError, match=r"^cannot prepare .*missing\.txt"):
            prepare(tmp_path / "missing.txt", chunk_size=1024, work_dir=tmp_path)


def _fields(prepared: PreparedFile) -> dict[str, Any]:
    return {name: getattr(prepared, name) for name in PreparedFile.__dataclass_fields__}


# --- chunk planning ------------------------------------------------------------------------


def status(
    state: UploadState,
    *,
    total: int = 10,
    size: int = 10_000,
    missing: tuple[tuple[int, int], ...] = (),
) -> Status:
    return Status(
        file_id=FID, state=state, total=total, committed=0, size=size, name="a", missing=missing
    )


class TestPlanning:
    @pytest.mark.parametrize(
        ("size", "chunk_size", "total", "last"),
        [(0, 4, 1, 0), (1, 4, 1, 1), (4, 4, 1, 4), (5, 4, 2, 1), (8, 4, 2, 4), (9, 4, 3, 1)],
    )
    def test_chunk_count_and_lengths(
        self, size: int, chunk_size: int, total: int, last: int
    ) -> None:
        assert chunk_count(size, chunk_size) == total
        prepared = PreparedFile(
            path=Path("p"),
            name="p",
            file_id=FID,
            size=0,
            digest=SHA,
            payload=Path("p"),
            payload_size=size,
            payload_digest=SHA,
            chunk_size=chunk_size,
            owned=False,
        )
        lengths = [prepared.chunk_length(i) for i in range(total)]
        assert lengths[-1] == last
        assert sum(lengths) == size

    def test_too_many_chunks_is_refused(self) -> None:
        with pytest.raises(IngestLimitError, match=rf"needs {MAX_CHUNKS + 1} chunks"):
            chunk_count(MAX_CHUNKS + 1, 1)

    @pytest.mark.parametrize("state", [UploadState.UNKNOWN, UploadState.FAILED])
    def test_unknown_or_failed_sends_everything(self, state: UploadState) -> None:
        assert plan_chunks(status(state, total=0, size=0), total=4, size=99) == (0, 1, 2, 3)

    @pytest.mark.parametrize("state", [UploadState.ASSEMBLING, UploadState.PUBLISHED])
    def test_assembling_or_published_sends_nothing(self, state: UploadState) -> None:
        assert plan_chunks(status(state, total=0, size=0), total=4, size=99) == ()

    def test_uploading_sends_the_missing_ranges(self) -> None:
        st = status(UploadState.UPLOADING, missing=((0, 0), (3, 5), (9, 9)))
        assert plan_chunks(st, total=10, size=10_000) == (0, 3, 4, 5, 9)

    def test_complete_but_unassembled_upload_gets_a_nudge(self) -> None:
        st = status(UploadState.UPLOADING, missing=())
        assert plan_chunks(st, total=10, size=10_000) == (9,)

    @pytest.mark.parametrize(("total", "size"), [(11, 10_000), (10, 10_001)])
    def test_another_payload_under_our_id_is_a_conflict(self, total: int, size: int) -> None:
        st = status(UploadState.UPLOADING, missing=((0, 9),))
        with pytest.raises(ConflictError, match=r"as 10 chunks of 10000 bytes in all, ours is"):
            plan_chunks(st, total=total, size=size)

    @pytest.mark.parametrize("missing", [((5, 10),), ((3, 2),)])
    def test_ranges_outside_the_upload_are_refused(
        self, missing: tuple[tuple[int, int], ...]
    ) -> None:
        with pytest.raises(IngestProtocolError, match=r"^status range .* is outside 0\.\.9$"):
            plan_chunks(status(UploadState.UPLOADING, missing=missing), total=10, size=10_000)


class TestKeptInMemory:
    def test_a_small_zst_is_read_once_and_kept(self, tmp_path: Path) -> None:
        blob = zstandard.compress(b"small file\n" * 100)
        prepared = prepare(write(tmp_path / "s.log.zst", blob), chunk_size=1024, work_dir=tmp_path)
        assert prepared.data == blob
        assert prepared.payload_digest == xxhash.xxh3_128_digest(blob)

    @pytest.mark.parametrize("extra", [0, 1])
    def test_a_zst_past_the_limit_is_not_kept(self, tmp_path: Path, extra: int) -> None:
        size = payload_module.KEEP_BYTES + extra
        blob = zstandard.compress(b"") + bytes(size - len(zstandard.compress(b"")))
        prepared = prepare(write(tmp_path / "b.zst", blob), chunk_size=1 << 20, work_dir=tmp_path)
        assert prepared.payload_size == size
        assert prepared.payload_digest == xxhash.xxh3_128_digest(blob)
        assert (prepared.data is None) == bool(extra)


# --- chunk frames --------------------------------------------------------------------------


def test_chunk_frames_decode_to_the_file_slices(tmp_path: Path) -> None:
    data = random_bytes(10_000)
    prepared = prepare(write(tmp_path / "r.bin", data), chunk_size=4096, work_dir=tmp_path)
    payload = prepared.payload.read_bytes()
    decoder = MessageDecoder()
    fd = open_payload(prepared.payload)
    try:
        for index in range(prepared.total):
            head, data = read_chunk_frame(prepared, fd, index, index + 1)
            decoder.feed(head)
            decoder.feed(data)
    finally:
        os.close(fd)
    chunks = []
    while not isinstance(event := decoder.next_event(), NeedData):
        request_id, message = event
        assert isinstance(message, Chunk)
        assert request_id == message.index + 1
        chunks.append(message)
    assert b"".join(c.data for c in chunks) == payload
    assert {(c.total, c.size, c.name, c.file_id) for c in chunks} == {
        (prepared.total, len(payload), "r.bin", prepared.file_id)
    }


# --- FRAMED payloads -----------------------------------------------------------------------


def _frames_decode_to_their_slices(prepared: PreparedFile, content: bytes) -> None:
    payload = prepared.payload.read_bytes()
    assert prepared.frames is not None
    assert prepared.content_size == len(content)
    at = 0
    for span in prepared.frames:
        frame = payload[span.offset : span.offset + span.length]
        params = zstandard.get_frame_parameters(frame)
        assert params.content_size == span.content_length
        assert span.content_offset == at
        assert zstandard.ZstdDecompressor().decompress(frame) == content[at:][: span.content_length]
        at += span.content_length
    assert at == len(content)
    assert sum(span.length for span in prepared.frames) == prepared.payload_size


class TestFramed:
    def test_a_plain_file_is_one_frame_per_chunk_size_of_content(self, tmp_path: Path) -> None:
        data = random_bytes(300_000)
        prepared = prepare(write(tmp_path / "r.bin", data), chunk_size=65536, work_dir=tmp_path)
        assert prepared.total == 5
        _frames_decode_to_their_slices(prepared, data)
        assert prepared.file_id == derive_file_id(
            "r.bin", xxhash.xxh3_128_digest(data), 65536, framed=True
        )
        assert prepared.file_id != derive_file_id("r.bin", xxhash.xxh3_128_digest(data), 65536)
        sidecar = json.loads(prepared.payload.with_suffix(".json").read_text())
        assert sidecar["frames"] == [[s.length, s.content_length] for s in prepared.frames or ()]

    def test_framed_compression_is_deterministic_and_reused(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        data = random_bytes(200_000) + b"some log line\n" * 20_000
        src = write(tmp_path / "mixed.log", data)
        first = prepare(src, chunk_size=65536, work_dir=tmp_path / "one")
        assert first.frames is not None
        assert prepare(src, chunk_size=65536, work_dir=tmp_path / "two").payload.read_bytes() == (
            first.payload.read_bytes()
        )

        def no_compress(*args: object, **kwargs: object) -> None:
            raise AssertionError("compressed again")

        monkeypatch.setattr(payload_module, "_compress_framed", no_compress)
        again = prepare(src, chunk_size=65536, work_dir=tmp_path / "one")
        assert again == PreparedFile(**{**_fields(first), "reused": True})

    def test_a_cut_below_the_minimum_chunk_goes_as_one_frame(self, tmp_path: Path) -> None:
        """Past 16 chunks every chunk but the last needs 16 KiB: 40 frames of a repeated
        line hold a few hundred bytes each, so the file is sent as one stream."""
        data = b"the same line again\n" * 100_000
        prepared = prepare(write(tmp_path / "same.log", data), chunk_size=50_000, work_dir=tmp_path)
        assert prepared.frames is None
        assert prepared.content_size is None
        assert zstandard.ZstdDecompressor().decompress(prepared.payload.read_bytes()) == data

    def test_framed_off_gives_one_frame(self, tmp_path: Path) -> None:
        data = random_bytes(300_000)
        prepared = prepare(
            write(tmp_path / "r.bin", data), chunk_size=65536, work_dir=tmp_path, framed=False
        )
        assert prepared.frames is None
        assert zstandard.get_frame_parameters(prepared.payload.read_bytes()).content_size == len(
            data
        )

    def test_a_zst_of_frames_with_content_sizes_goes_framed(self, tmp_path: Path) -> None:
        content = random_bytes(400_000)
        compressor = zstandard.ZstdCompressor(level=1, write_checksum=True)
        blob = b"".join(
            compressor.compress(content[i : i + 100_000]) for i in range(0, 400_000, 100_000)
        )
        prepared = prepare(
            write(tmp_path / "f.bin.zst", blob), chunk_size=1 << 20, work_dir=tmp_path
        )
        assert not prepared.owned
        assert prepared.total == 4
        _frames_decode_to_their_slices(prepared, content)

    @pytest.mark.parametrize("kind", ["one frame", "no content size"])
    def test_other_zst_files_go_as_one_stream(self, tmp_path: Path, kind: str) -> None:
        content = random_bytes(400_000)
        if kind == "one frame":
            blob = zstandard.ZstdCompressor().compress(content)
        else:
            compressor = zstandard.ZstdCompressor(write_content_size=False)
            blob = b"".join(
                compressor.compress(content[i : i + 100_000]) for i in range(0, 400_000, 100_000)
            )
        prepared = prepare(write(tmp_path / "f.zst", blob), chunk_size=1 << 20, work_dir=tmp_path)
        assert prepared.frames is None
        assert prepared.total == 1

    def test_framed_chunk_frames_carry_their_content_range(self, tmp_path: Path) -> None:
        data = random_bytes(200_000)
        prepared = prepare(write(tmp_path / "r.bin", data), chunk_size=65536, work_dir=tmp_path)
        assert prepared.frames is not None
        decoder = MessageDecoder()
        fd = open_payload(prepared.payload)
        try:
            for index in range(prepared.total):
                head, body = read_chunk_frame(prepared, fd, index, index + 1)
                decoder.feed(head)
                decoder.feed(body)
        finally:
            os.close(fd)
        got = []
        while not isinstance(event := decoder.next_event(), NeedData):
            message = event[1]
            assert isinstance(message, Chunk)
            got.append((message.index, message.content_size, message.content_offset))
        assert got == [
            (i, len(data), span.content_offset) for i, span in enumerate(prepared.frames)
        ]
