"""assemble on real patches and real zstd: round trips, limits, bad payloads, atomic publish."""

from __future__ import annotations

import dataclasses
import errno
import os
import random
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
import xxhash
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postoffice.ingest import assembly, zstdframes
from postoffice.ingest.assembly import (
    AssemblyStats,
    assemble,
    assemble_with_stats,
    staging_path,
)
from postoffice.ingest.errors import AssemblyError, IngestStorageError, OutputRatioError
from postoffice.ingest.messages import FileId
from postoffice.ingest.patches import PayloadInfo
from postoffice.ingest.published import PublishedInfo
from postoffice.ingest.storage import ChunkStore

FID = FileId(bytes.fromhex("0123456789abcdef0123456789abcdef"))
HEX = FID.hex()
MIB = 1024 * 1024
NOW = 1_700_000_000.0
SEED = 20240611  # every random payload derives from it


def compress(data: bytes, *, level: int = 3, checksum: bool = True) -> bytes:
    return zstandard.ZstdCompressor(level=level, write_checksum=checksum).compress(data)


def split(blob: bytes, sizes: Sequence[int]) -> list[bytes]:
    """Cut `blob` into pieces of the given sizes, the last piece taking the rest."""
    pieces, at = [], 0
    for size in sizes:
        pieces.append(blob[at : at + size])
        at += size
    pieces.append(blob[at:])
    return pieces


def stored(
    root: Path, pieces: Sequence[bytes], *, name: str = "out.bin", file_id: FileId = FID
) -> tuple[PayloadInfo, list[Path]]:
    """Upload `pieces` as one payload through a real ChunkStore (last index first)."""
    store = ChunkStore(root / "patches", root / "published", fsync=False)
    store.open()
    size = sum(len(p) for p in pieces)
    for index in reversed(range(len(pieces))):
        store.store_chunk(
            file_id=file_id,
            index=index,
            total=len(pieces),
            size=size,
            name=name,
            payload_digest=xxhash.xxh3_128_digest(b"".join(pieces)),
            digest=xxhash.xxh3_128_digest(pieces[index]),
            data=pieces[index],
            now=NOW,
        )
    info = store.info(file_id)
    assert info is not None
    return info, store.patch_paths(file_id)


def run(
    root: Path,
    pieces: Sequence[bytes],
    *,
    name: str = "out.bin",
    max_output_bytes: int = 64 * MIB,
    max_window_log: int = 27,
    max_output_ratio: int = 0,
    via_part: bool = False,
) -> PublishedInfo:
    info, patches = stored(root, pieces, name=name)
    return assemble(
        info=info,
        patches=patches,
        files_dir=root / "files",
        max_output_bytes=max_output_bytes,
        max_window_log=max_window_log,
        max_output_ratio=max_output_ratio,
        via_part=via_part,
        now=NOW,
    )


def files_in(root: Path) -> list[str]:
    folder = root / "files"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def random_bytes(size: int, salt: int = 0) -> bytes:
    return random.Random(SEED + salt).randbytes(size)


def text_bytes(lines: int) -> bytes:
    rng = random.Random(SEED)
    words = ["GET", "POST", "/index.html", "200", "404", "ok", "slow", "user=alice", "ms=12"]
    return b"".join(
        f"2024-06-11T10:{i % 60:02d}:00Z {' '.join(rng.choices(words, k=6))}\n".encode()
        for i in range(lines)
    )


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """1 GiB of zeros, compressed to about 32 KB, streamed so the GiB never exists."""
    compressor = zstandard.ZstdCompressor(level=1).compressobj()
    zeros = bytes(MIB)
    parts = [compressor.compress(zeros) for _ in range(1024)]
    parts.append(compressor.flush())
    return b"".join(parts)


class TestRoundTrip:
    @pytest.mark.parametrize("via_part", [False, True])
    @pytest.mark.parametrize(
        ("kind", "sizes"),
        [
            ("random", []),  # one chunk
            ("random", [1, 1, 1]),  # tiny chunks cutting the frame header
            ("random", [100_000, 250_000]),
            ("text", [7]),
            ("text", [1000] * 20),
            ("text", [0, 5000, 0]),  # empty chunks too
        ],
    )
    def test_bytes_come_back_identical(
        self, tmp_path: Path, via_part: bool, kind: str, sizes: list[int]
    ) -> None:
        original = random_bytes(600_000) if kind == "random" else text_bytes(20_000)
        pieces = split(compress(original), sizes)
        done = run(tmp_path, pieces, via_part=via_part)
        assert (tmp_path / "files" / "out.bin").read_bytes() == original
        assert done == PublishedInfo(
            file_id=FID,
            name="out.bin",
            size=len(original),
            digest=xxhash.xxh3_128_digest(original),
            payload_digest=xxhash.xxh3_128_digest(b"".join(pieces)),
            published_at=NOW,
            replaced=False,
        )
        assert files_in(tmp_path) == ["out.bin"]

    def test_stats_count_bytes_and_frames(self, tmp_path: Path) -> None:
        original = text_bytes(5000)
        blob = compress(original[:1000]) + compress(original[1000:])
        info, patches = stored(tmp_path, split(blob, [len(blob) // 2]))
        result = assemble_with_stats(
            info=info,
            patches=patches,
            files_dir=tmp_path / "files",
            max_output_bytes=MIB,
            max_window_log=27,
        )
        stats = result.stats
        assert isinstance(stats, AssemblyStats)
        assert (stats.bytes_in, stats.bytes_out, stats.frames) == (len(blob), len(original), 2)
        assert stats.seconds >= 0
        assert result.published.size == len(original)

    def test_concatenated_and_skippable_frames_decode_like_zstd_d(self, tmp_path: Path) -> None:
        skippable = (0x184D2A53).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"hello"
        parts = [b"first frame\n", b"", b"third frame\n"]
        blob = b"".join(compress(p) for p in parts[:2]) + skippable + compress(parts[2])
        run(tmp_path, split(blob, [10, 30]))
        assert (tmp_path / "files" / "out.bin").read_bytes() == b"".join(parts)

    def test_frames_without_checksum_or_content_size(self, tmp_path: Path) -> None:
        original = text_bytes(3000)
        streamed = zstandard.ZstdCompressor(level=5, write_content_size=False).compressobj()
        blob = streamed.compress(original) + streamed.flush()
        run(tmp_path, split(blob, [333]))
        assert (tmp_path / "files" / "out.bin").read_bytes() == original

    def test_the_output_limit_is_inclusive(self, tmp_path: Path) -> None:
        original = random_bytes(3 * MIB + 5)
        done = run(tmp_path, [compress(original, level=1)], max_output_bytes=len(original))
        assert done.size == len(original)

    def test_a_name_longer_than_the_staging_budget(self, tmp_path: Path) -> None:
        name = "é" * 120 + ".log"  # 244 bytes: fits NAME_MAX, its staging name would not
        run(tmp_path, [compress(b"long name\n")], name=name)
        assert files_in(tmp_path) == [name]

    @settings(
        max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(
        data=st.binary(max_size=5000),
        cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
        via_part=st.booleans(),
    )
    def test_any_data_any_split(
        self, tmp_path_factory: pytest.TempPathFactory, data: bytes, cuts: list[int], via_part: bool
    ) -> None:
        root = tmp_path_factory.mktemp("prop")
        run(root, split(compress(data), cuts), via_part=via_part)
        assert (root / "files" / "out.bin").read_bytes() == data


class TestUnrecorded:
    def test_a_publish_whose_record_fails_leaves_files_as_they_were(self, tmp_path: Path) -> None:
        files = tmp_path / "files"
        info, patches = stored(tmp_path / "new", [compress(b"new content\n")])
        files.mkdir()
        (files / "out.bin").write_bytes(b"old content\n")

        def record(done: PublishedInfo) -> None:
            assert (files / "out.bin").read_bytes() == b"new content\n"
            raise IngestStorageError("cannot append to published.log: No space left on device")

        for existing in (True, False):
            with pytest.raises(IngestStorageError, match="No space left"):
                assemble(
                    info=info,
                    patches=patches,
                    files_dir=files,
                    max_output_bytes=MIB,
                    max_window_log=27,
                    record=record,
                )
            if existing:
                assert sorted(p.name for p in files.iterdir()) == ["out.bin"]
                assert (files / "out.bin").read_bytes() == b"old content\n"
                (files / "out.bin").unlink()
            else:
                assert list(files.iterdir()) == []

    def test_a_recorded_publish_keeps_no_second_name_of_the_file_it_replaced(
        self, tmp_path: Path
    ) -> None:
        info, patches = stored(tmp_path, [compress(b"new content\n")])
        files = tmp_path / "files"
        files.mkdir()
        (files / "out.bin").write_bytes(b"old content\n")
        recorded: list[PublishedInfo] = []
        done = assemble(
            info=info,
            patches=patches,
            files_dir=files,
            max_output_bytes=MIB,
            max_window_log=27,
            record=recorded.append,
        )
        assert recorded == [done]
        assert done.replaced
        assert sorted(p.name for p in files.iterdir()) == ["out.bin"]
        assert (files / "out.bin").read_bytes() == b"new content\n"


class TestRefused:
    @pytest.mark.parametrize("via_part", [False, True])
    def test_a_decompression_bomb_stops_at_the_limit(
        self, tmp_path: Path, bomb: bytes, via_part: bool
    ) -> None:
        limit = 10 * MIB
        with pytest.raises(
            AssemblyError, match=rf"^payload {HEX}: decompressed output exceeds limit {limit}$"
        ):
            run(tmp_path, split(bomb, [len(bomb) // 3]), max_output_bytes=limit, via_part=via_part)
        assert files_in(tmp_path) == []

    @pytest.mark.parametrize("via_part", [False, True])
    def test_a_bomb_under_the_size_limit_stops_at_the_ratio_limit(
        self, tmp_path: Path, bomb: bytes, via_part: bool
    ) -> None:
        """The absolute limit alone would let 1 GiB through; the ratio stops it at once."""
        with pytest.raises(
            OutputRatioError,
            match=rf"^payload {HEX}: decompressed output exceeds ratio limit 100: \d+ bytes"
            r" from \d+ compressed bytes$",
        ) as refused:
            run(
                tmp_path,
                split(bomb, [len(bomb) // 3]),
                max_output_bytes=4 * 1024 * MIB,
                max_output_ratio=100,
                via_part=via_part,
            )
        written = int(str(refused.value).split(": ")[2].split()[0])
        # At most one block past the ratio of all it read (zstd reads ahead of its output).
        assert written <= max(assembly.RATIO_GRACE_BYTES, 100 * len(bomb)) + assembly.BLOCK_BYTES
        assert files_in(tmp_path) == []

    def test_the_ratio_limit_spares_small_outputs_and_ordinary_ratios(self, tmp_path: Path) -> None:
        zeros = bytes(assembly.RATIO_GRACE_BYTES)  # compresses far past the ratio, but small
        run(tmp_path / "small", [compress(zeros)], max_output_ratio=2)
        assert (tmp_path / "small" / "files" / "out.bin").read_bytes() == zeros
        text = text_bytes(450_000)  # log lines past the grace, about 10:1
        blob = compress(text)
        assert assembly.RATIO_GRACE_BYTES < len(text) < 20 * len(blob)
        run(tmp_path / "text", split(blob, [len(blob) // 2]), max_output_ratio=20)
        assert (tmp_path / "text" / "files" / "out.bin").read_bytes() == text

    def test_chunks_that_are_not_the_declared_payload_are_not_published(
        self, tmp_path: Path
    ) -> None:
        blob = compress(b"the declared content\n" * 100)
        info, patches = stored(tmp_path, [blob])
        declared = xxhash.xxh3_128_digest(b"some other payload")
        with pytest.raises(
            AssemblyError,
            match=rf"^payload {HEX} hashes to payload digest {xxhash.xxh3_128_hexdigest(blob)},"
            rf" its chunks declared {declared.hex()}$",
        ):
            assemble(
                info=dataclasses.replace(info, payload_digest=declared),
                patches=patches,
                files_dir=tmp_path / "files",
                max_output_bytes=MIB,
                max_window_log=27,
            )
        assert files_in(tmp_path) == []

    def test_a_window_over_the_limit(self, tmp_path: Path) -> None:
        params = zstandard.ZstdCompressionParameters.from_level(3, window_log=24)
        block = random_bytes(2 * MIB)
        streamed = zstandard.ZstdCompressor(compression_params=params).compressobj()
        blob = streamed.compress(block + random_bytes(100, salt=1) + block) + streamed.flush()
        with pytest.raises(
            AssemblyError,
            match=rf"^payload {HEX}: frame at offset 0 needs a window of 16777216 bytes,"
            rf" over the limit 1048576$",
        ):
            run(tmp_path, [blob], max_window_log=20)
        assert files_in(tmp_path) == []
        run(tmp_path / "ok", [blob], max_window_log=24)
        assert (tmp_path / "ok" / "files" / "out.bin").read_bytes().startswith(block)

    def test_zstd_enforces_the_window_too(self) -> None:
        """The walker checks first; zstd's own limit is the same, as a second guard."""
        params = zstandard.ZstdCompressionParameters.from_level(3, window_log=24)
        blob = zstandard.ZstdCompressor(compression_params=params).compressobj()
        frame = blob.compress(random_bytes(4 * MIB)) + blob.flush()
        reader = zstandard.ZstdDecompressor(max_window_size=1 << 20).stream_reader(frame)
        with pytest.raises(zstandard.ZstdError, match="too much memory"):
            reader.read(MIB)

    @pytest.mark.parametrize("cut", [1, 4, 6, 10, 100, -4, -1])
    def test_a_truncated_payload(self, tmp_path: Path, cut: int) -> None:
        blob = compress(random_bytes(300_000))
        with pytest.raises(AssemblyError, match=rf"^payload {HEX} ends inside a zstd frame"):
            run(tmp_path, [blob[:cut]])
        assert files_in(tmp_path) == []

    @pytest.mark.parametrize("tail", [b"garbage!", b"\x00", b"\x28\xb5\x2f"])
    def test_trailing_garbage(self, tmp_path: Path, tail: bytes) -> None:
        blob = compress(text_bytes(100))
        with pytest.raises(AssemblyError, match=rf"^payload {HEX}"):
            run(tmp_path, [blob, tail])
        assert files_in(tmp_path) == []

    def test_trailing_garbage_is_named(self, tmp_path: Path) -> None:
        blob = compress(b"x")
        with pytest.raises(
            AssemblyError,
            match=rf"^payload {HEX}: trailing bytes at offset {len(blob)} are not a zstd frame"
            r" \(magic 0x62726167\)$",
        ):
            run(tmp_path, [blob + b"garbage!"])

    def test_not_zstd_at_all(self, tmp_path: Path) -> None:
        with pytest.raises(
            AssemblyError, match=rf"^payload {HEX}: bytes at offset 0 are not a zstd frame"
        ):
            run(tmp_path, [b"PK\x03\x04 a zip file, not zstd"])

    def test_an_empty_payload(self, tmp_path: Path) -> None:
        with pytest.raises(AssemblyError, match=rf"^payload {HEX} holds no zstd frame$"):
            run(tmp_path, [b""])

    def test_corrupt_block_content(self, tmp_path: Path) -> None:
        blob = bytearray(compress(text_bytes(2000)))
        blob[len(blob) // 2] ^= 0xFF
        with pytest.raises(AssemblyError, match=rf"^payload {HEX} is not valid zstandard: "):
            run(tmp_path, [bytes(blob)])
        assert files_in(tmp_path) == []

    def test_patches_that_disagree_with_the_payload(self, tmp_path: Path) -> None:
        info, patches = stored(tmp_path, split(compress(b"abc" * 100), [10]))
        kwargs = {"files_dir": tmp_path / "files", "max_output_bytes": MIB, "max_window_log": 27}
        with pytest.raises(AssemblyError, match=r"has total 2, assembly was given 1 patches$"):
            assemble(info=info, patches=patches[:1], **kwargs)  # type: ignore[arg-type]  # kwargs
        patches[1].write_bytes(patches[1].read_bytes() + b"!")
        with pytest.raises(AssemblyError, match=rf"has size {info.size}, its patches hold"):
            assemble(info=info, patches=patches, **kwargs)  # type: ignore[arg-type]  # kwargs

    def test_a_disk_error_is_a_storage_error(self, tmp_path: Path) -> None:
        info, patches = stored(tmp_path, [compress(b"data")])
        blocker = tmp_path / "files"
        blocker.write_bytes(b"a file where files_dir should be")
        with pytest.raises(IngestStorageError, match=rf"^cannot create {blocker}: File exists$"):
            assemble(
                info=info,
                patches=patches,
                files_dir=blocker,
                max_output_bytes=MIB,
                max_window_log=27,
            )


class TestPublish:
    def test_a_second_payload_of_one_name_replaces_the_first(self, tmp_path: Path) -> None:
        first = run(tmp_path / "a", [compress(b"first\n")], name="same.txt")
        files = tmp_path / "a" / "files"
        info, patches = stored(
            tmp_path / "b", [compress(b"second\n")], name="same.txt", file_id=FileId(bytes(16))
        )
        second = assemble(
            info=info, patches=patches, files_dir=files, max_output_bytes=MIB, max_window_log=27
        )
        assert (first.replaced, second.replaced) == (False, True)
        assert (files / "same.txt").read_bytes() == b"second\n"
        assert sorted(p.name for p in files.iterdir()) == ["same.txt"]

    @pytest.mark.parametrize("via_part", [False, True])
    def test_files_dir_never_shows_a_partial_file(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, via_part: bool
    ) -> None:
        """Between every output block, only hidden staging names and old files are visible."""
        files = tmp_path / "files"
        files.mkdir()
        (files / "older.txt").write_bytes(b"published earlier")
        seen: list[list[str]] = []
        real_write = assembly._write_all

        def watching(fd: int, block: memoryview, before: int) -> None:
            seen.append(sorted(p.name for p in files.iterdir()))
            real_write(fd, block, before)

        monkeypatch.setattr(assembly, "_write_all", watching)
        original = random_bytes(5 * MIB)
        run(tmp_path, split(compress(original, level=1), [MIB, MIB]), via_part=via_part)
        tmp = staging_path(files, "out.bin", FID, "tmp").name
        part = staging_path(files, "out.bin", FID, "part").name
        expected = sorted(["older.txt", tmp, *([part] if via_part else [])])
        assert len(seen) >= 5
        assert all(names == expected for names in seen)
        assert files_in(tmp_path) == ["older.txt", "out.bin"]
        assert (files / "out.bin").read_bytes() == original

    def test_a_write_error_mid_stream_leaves_nothing(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        blocks = 0
        real_write = assembly._write_all

        def disk_full_on_the_third_block(fd: int, block: memoryview, before: int) -> None:
            nonlocal blocks
            blocks += 1
            if blocks == 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_write(fd, block, before)

        monkeypatch.setattr(assembly, "_write_all", disk_full_on_the_third_block)
        pieces = [compress(random_bytes(6 * MIB), level=1)]
        with pytest.raises(
            IngestStorageError, match=r"^cannot assemble .*: No space left on device$"
        ):
            run(tmp_path, pieces, via_part=True)
        assert files_in(tmp_path) == []

    def test_a_one_block_file_starts_no_thread(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def no_threads(*args: object, **kwargs: object) -> None:
            raise AssertionError("a thread pool was started")

        monkeypatch.setattr(assembly, "ThreadPoolExecutor", no_threads)
        run(tmp_path, [compress(text_bytes(1000))])
        assert (tmp_path / "files" / "out.bin").read_bytes() == text_bytes(1000)

    def test_staging_names(self, tmp_path: Path) -> None:
        assert staging_path(tmp_path, "a.log", FID, "tmp") == tmp_path / f".a.log.{HEX}.tmp"
        long = staging_path(tmp_path, "x" * 201 + " y" * 26, FID, "part")  # 253 bytes
        assert len(long.name.encode()) == 254  # cut to 216 bytes, then a trailing space
        assert long.name == "." + "x" * 201 + " y" * 7 + f".{HEX}.part"


class TestFrameWalker:
    @given(data=st.binary(max_size=300))
    def test_arbitrary_bytes_raise_only_assembly_error(self, data: bytes) -> None:
        walker = zstdframes.FrameWalker(max_window_size=1 << 27, hex_id=HEX)
        try:
            walker.feed(data)
            walker.finish()
        except AssemblyError:
            pass

    def test_every_cut_point_gives_the_same_verdict(self) -> None:
        blob = compress(text_bytes(50)) + compress(random_bytes(64), checksum=False)
        for cut in range(len(blob) + 1):
            walker = zstdframes.FrameWalker(max_window_size=1 << 27, hex_id=HEX)
            walker.feed(blob[:cut])
            walker.feed(blob[cut:])
            walker.finish()
            assert walker.frames == 2
            assert walker.offset == len(blob)


class TestPieces:
    """next_piece: the streaming assembler's source, asked for each piece in order."""

    def test_pieces_handed_over_one_by_one_from_another_thread(self, tmp_path: Path) -> None:
        original = text_bytes(30_000)
        info, patches = stored(tmp_path, split(compress(original), [4096] * 20))
        ready = [threading.Event() for _ in patches]
        waiting = [threading.Event() for _ in patches]
        asked: list[int] = []

        def next_piece(index: int) -> Path:
            asked.append(index)
            waiting[index].set()
            assert ready[index].wait(10)
            return patches[index]

        def feeder() -> None:
            # Each piece is handed over only once the assembler waits for it.
            for wanted, event in zip(waiting, ready, strict=True):
                assert wanted.wait(10)
                event.set()

        thread = threading.Thread(target=feeder)
        thread.start()
        done = assemble(
            info=info,
            next_piece=next_piece,
            files_dir=tmp_path / "files",
            max_output_bytes=64 * MIB,
            max_window_log=27,
            now=NOW,
        )
        thread.join()
        assert asked == list(range(len(patches)))
        assert (tmp_path / "files" / "out.bin").read_bytes() == original
        assert done.payload_digest == xxhash.xxh3_128_digest(
            b"".join(p.read_bytes() for p in patches)
        )

    def test_pieces_in_memory(self, tmp_path: Path) -> None:
        original = random_bytes(3 * MIB + 17)
        blob = compress(original, level=1)
        info, _ = stored(tmp_path, [blob])
        done = assemble(
            info=info,
            patches=[memoryview(blob)],
            files_dir=tmp_path / "files",
            max_output_bytes=64 * MIB,
            max_window_log=27,
        )
        assert (tmp_path / "files" / "out.bin").read_bytes() == original
        assert done.digest == xxhash.xxh3_128_digest(original)

    def test_pieces_from_memory_and_from_patches_mixed(self, tmp_path: Path) -> None:
        original = random_bytes(5 * MIB + 321)
        blob = compress(original, level=1)
        info, patches = stored(tmp_path, split(blob, [MIB + 5, 2 * MIB, 7, MIB]))
        # What a streaming assembly gets from the store: the chunks it kept, as bytes,
        # and the patch files of the others.
        pieces: list[Path | bytes] = [
            p.read_bytes() if i % 2 == 0 else p for i, p in enumerate(patches)
        ]
        done = assemble(
            info=info,
            next_piece=pieces.__getitem__,
            files_dir=tmp_path / "files",
            max_output_bytes=64 * MIB,
            max_window_log=27,
        )
        assert (tmp_path / "files" / "out.bin").read_bytes() == original
        assert done.digest == xxhash.xxh3_128_digest(original)
        assert done.payload_digest == xxhash.xxh3_128_digest(blob)

    def test_what_next_piece_raises_ends_the_assembly_and_leaves_nothing(
        self, tmp_path: Path
    ) -> None:
        info, patches = stored(tmp_path, split(compress(random_bytes(2 * MIB), level=1), [MIB]))

        def next_piece(index: int) -> Path:
            if index == 1:
                raise LookupError("chunk 1 never came")
            return patches[index]

        with pytest.raises(LookupError, match=r"^chunk 1 never came$"):
            assemble(
                info=info,
                next_piece=next_piece,
                files_dir=tmp_path / "files",
                max_output_bytes=64 * MIB,
                max_window_log=27,
            )
        assert files_in(tmp_path) == []

    def test_pieces_that_add_up_to_another_size_fail(self, tmp_path: Path) -> None:
        blob = compress(b"abc" * 1000)
        info, patches = stored(tmp_path, split(blob, [10]))
        short = dataclasses.replace(info, size=info.size + 1)
        with pytest.raises(
            AssemblyError, match=rf"has size {info.size + 1}, its patches hold {info.size} bytes$"
        ):
            assemble(
                info=short,
                next_piece=patches.__getitem__,
                files_dir=tmp_path / "files",
                max_output_bytes=MIB,
                max_window_log=27,
            )
        assert files_in(tmp_path) == []


@pytest.mark.parametrize("via_part", [False, True])
def test_a_tee_gets_every_output_block_in_order_after_its_write(
    tmp_path: Path, via_part: bool
) -> None:
    content = text_bytes(60_000)  # several output blocks, so the writer thread is used
    blob = compress(content)
    info, patches = stored(tmp_path, split(blob, [len(blob) // 3, len(blob) // 3]))
    staging = staging_path(tmp_path / "files", "out.bin", FID, "tmp")
    teed: list[bytes] = []

    def tee(block: memoryview) -> None:
        teed.append(bytes(block))
        # the block is on the disk before the tee has it
        assert os.path.getsize(staging) >= sum(len(b) for b in teed)

    assemble(
        info=info,
        patches=patches,
        files_dir=tmp_path / "files",
        max_output_bytes=64 * MIB,
        max_window_log=27,
        via_part=via_part,
        tee=tee,
    )
    assert len(teed) > 2
    assert b"".join(teed) == content == (tmp_path / "files" / "out.bin").read_bytes()


def test_a_tee_that_fails_fails_the_assembly_and_publishes_nothing(tmp_path: Path) -> None:
    blob = compress(text_bytes(60_000))
    info, patches = stored(tmp_path, [blob])

    def tee(block: memoryview) -> None:
        raise ConnectionAbortedError("the object store is gone")

    with pytest.raises(IngestStorageError, match="object store is gone"):
        assemble(
            info=info,
            patches=patches,
            files_dir=tmp_path / "files",
            max_output_bytes=64 * MIB,
            max_window_log=27,
            tee=tee,
        )
    assert files_in(tmp_path) == []
