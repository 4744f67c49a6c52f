"""FramedAssembly on real files and real zstd: chunks in any order and on threads, the
checks a lying client meets, and nothing published when one fails."""

from __future__ import annotations

import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import xxhash
import zstandard

from postoffice.ingest import framed
from postoffice.ingest.errors import AssemblyError
from postoffice.ingest.framed import FramedAssembly
from postoffice.ingest.messages import FileId
from postoffice.ingest.patches import PayloadInfo

FID = FileId(bytes.fromhex("00112233445566778899aabbccddeeff"))
NOW = 1_700_000_000.0
SEED = 20261207


def text(size: int, salt: int = 0) -> bytes:
    rng = random.Random(SEED + salt)
    words = [b"GET", b"POST", b"/a", b"/b/c", b"200", b"404", b"ok", b"user=bob", b"ms=7"]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choices(words, k=8)) + b"\n"
    return bytes(out[:size])


def frame(data: bytes, *, content_size: bool = True) -> bytes:
    return zstandard.ZstdCompressor(level=3, write_content_size=content_size).compress(data)


def cut(content: bytes, piece: int) -> list[bytes]:
    return [content[at : at + piece] for at in range(0, len(content), piece)] or [b""]


def offsets(pieces: Sequence[bytes]) -> list[int]:
    out, at = [], 0
    for piece in pieces:
        out.append(at)
        at += len(piece)
    return out


def info_for(
    frames: Sequence[bytes], content_size: int, *, payload_digest: bytes | None = None
) -> PayloadInfo:
    payload = b"".join(frames)
    return PayloadInfo(
        file_id=FID,
        name="log.txt",
        total=len(frames),
        size=len(payload),
        committed=frozenset(range(len(frames))),
        created=NOW,
        updated=NOW,
        payload_digest=payload_digest or xxhash.xxh3_128_digest(payload),
        content_size=content_size,
    )


def patches(root: Path, frames: Sequence[bytes]) -> list[Path]:
    folder = root / "patches"
    folder.mkdir(exist_ok=True)
    paths = []
    for index, data in enumerate(frames):
        path = folder / f"patch_{index}.bin"
        path.write_bytes(data)
        paths.append(path)
    return paths


def assembly(root: Path, info: PayloadInfo, **kwargs: int) -> FramedAssembly:
    done = FramedAssembly(info=info, files_dir=root / "files", max_window_log=27, **kwargs)
    done.create()
    return done


def listing(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "files").iterdir())


class TestPublished:
    @pytest.mark.parametrize("hold_bytes", [framed.HOLD_BYTES, 0])
    def test_chunks_decompressed_out_of_order_on_threads_publish_the_file(
        self, tmp_path: Path, hold_bytes: int
    ) -> None:
        """Output goes to each chunk's offset; both digests come out as if sequential,
        whether the hash lane holds finished chunks or reads them back."""
        content = text(3_000_000)
        pieces = cut(content, 100_000)
        frames = [frame(p) for p in pieces]
        info = info_for(frames, len(content))
        paths = patches(tmp_path, frames)
        job = assembly(tmp_path, info, hold_bytes=hold_bytes)
        order = list(range(len(frames)))
        random.Random(SEED).shuffle(order)
        with ThreadPoolExecutor(4) as pool:
            for future in [
                pool.submit(job.decompress, i, frames[i], offsets(pieces)[i], paths[i])
                for i in order
            ]:
                future.result(timeout=30)
        done = job.finish(fsync=False, now=NOW)
        assert (tmp_path / "files" / "log.txt").read_bytes() == content
        assert done.size == len(content)
        assert done.digest == xxhash.xxh3_128_digest(content)
        assert done.payload_digest == info.payload_digest
        assert listing(tmp_path) == ["log.txt"]

    def test_a_chunk_may_be_its_patch_file(self, tmp_path: Path) -> None:
        content = text(50_000)
        pieces = cut(content, 20_000)
        frames = [frame(p) for p in pieces]
        paths = patches(tmp_path, frames)
        job = assembly(tmp_path, info_for(frames, len(content)))
        for index in (2, 0, 1):
            job.decompress(index, paths[index], offsets(pieces)[index])
        job.finish(fsync=False)
        assert (tmp_path / "files" / "log.txt").read_bytes() == content

    def test_a_frame_larger_than_the_block_is_decompressed_in_blocks(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(framed, "STREAM_BLOCK_BYTES", 4096)
        content = text(200_000)
        pieces = cut(content, 70_000)
        frames = [frame(p) for p in pieces]
        paths = patches(tmp_path, frames)
        job = assembly(tmp_path, info_for(frames, len(content)))
        for index in (1, 2, 0):
            job.decompress(index, frames[index], offsets(pieces)[index], paths[index])
        done = job.finish(fsync=False)
        assert (tmp_path / "files" / "log.txt").read_bytes() == content
        assert done.digest == xxhash.xxh3_128_digest(content)

    def test_an_empty_file_is_one_empty_frame(self, tmp_path: Path) -> None:
        frames = [frame(b"")]
        job = assembly(tmp_path, info_for(frames, 0))
        job.decompress(0, frames[0], 0, patches(tmp_path, frames)[0])
        job.finish(fsync=False)
        assert (tmp_path / "files" / "log.txt").read_bytes() == b""


class TestRefused:
    """Every lie fails the upload with AssemblyError; nothing reaches files/<name>."""

    def _two(self, tmp_path: Path) -> tuple[list[bytes], list[bytes], FramedAssembly]:
        content = text(40_000)
        pieces = cut(content, 20_000)
        frames = [frame(p) for p in pieces]
        patches(tmp_path, frames)
        return pieces, frames, assembly(tmp_path, info_for(frames, len(content)))

    def test_data_that_is_not_a_zstd_frame(self, tmp_path: Path) -> None:
        _, _, job = self._two(tmp_path)
        with pytest.raises(
            AssemblyError,
            match=rf"^chunk 0 of {FID.hex()} is not one zstd frame: payload {FID.hex()}: "
            r"bytes at offset 0 are not a zstd frame \(magic 0x[0-9a-f]{8}\)$",
        ):
            job.decompress(0, b"not zstd at all", 0)

    def test_two_frames_in_one_chunk(self, tmp_path: Path) -> None:
        _pieces, frames, job = self._two(tmp_path)
        with pytest.raises(
            AssemblyError, match=rf"^chunk 0 of {FID.hex()} holds 2 zstd frames, expected one$"
        ):
            job.decompress(0, frames[0] + frames[0], 0)

    def test_a_truncated_frame(self, tmp_path: Path) -> None:
        _, frames, job = self._two(tmp_path)
        with pytest.raises(
            AssemblyError, match=r"^chunk 1 of .* is not one zstd frame: .*truncated"
        ):
            job.decompress(1, frames[1][:-5], 20_000)

    def test_a_frame_without_content_size(self, tmp_path: Path) -> None:
        pieces, _, job = self._two(tmp_path)
        with pytest.raises(
            AssemblyError,
            match=rf"^chunk 0 of {FID.hex()}: its zstd frame does not record its content size$",
        ):
            job.decompress(0, frame(pieces[0], content_size=False), 0)

    def test_a_content_size_that_disagrees_with_the_output(self, tmp_path: Path) -> None:
        """The header says 19,999 bytes, the blocks hold 20,000: zstd or our count says no."""
        _pieces, frames, job = self._two(tmp_path)
        lying = bytearray(frames[0])
        descriptor = lying[4]
        assert descriptor >> 6 == 1
        assert descriptor & 0x20
        stored = int.from_bytes(lying[5:7], "little")
        lying[5:7] = (stored - 1).to_bytes(2, "little")
        with pytest.raises(AssemblyError, match=rf"^chunk 0 of {FID.hex()}"):
            job.decompress(0, bytes(lying), 0)

    def test_overlapping_ranges(self, tmp_path: Path) -> None:
        content = text(60_000)
        frames = [frame(p) for p in cut(content, 20_000)]
        job = assembly(tmp_path, info_for(frames, len(content)))
        job.decompress(0, frames[0], 0)
        with pytest.raises(
            AssemblyError,
            match=rf"^chunk 1 of {FID.hex()} starts at content offset 19000, chunk 0 ends at "
            r"20000: ranges with a gap or an overlap$",
        ):
            job.decompress(1, frames[1], 19_000)

    def test_a_gap_found_by_the_earlier_chunk(self, tmp_path: Path) -> None:
        """Chunk 1 of 3 arrives first, with its offset 5000 too far; chunk 0 finds it."""
        content = text(60_000)
        pieces = cut(content, 20_000)
        frames = [frame(p) for p in pieces]
        patches(tmp_path, frames)
        job = assembly(tmp_path, info_for(frames, len(content)))
        job.decompress(1, frames[1], 25_000)
        with pytest.raises(
            AssemblyError,
            match=rf"^chunk 0 of {FID.hex()} ends at content offset 20000, chunk 1 starts at "
            r"25000: ranges with a gap or an overlap$",
        ):
            job.decompress(0, frames[0], 0)

    def test_the_first_chunk_must_start_at_zero(self, tmp_path: Path) -> None:
        _, frames, job = self._two(tmp_path)
        with pytest.raises(
            AssemblyError, match=rf"^chunk 0 of {FID.hex()} starts at content offset 7, expected 0$"
        ):
            job.decompress(0, frames[0], 7)

    def test_the_last_chunk_must_end_at_the_content_size(self, tmp_path: Path) -> None:
        content = text(40_000)
        pieces = cut(content, 20_000)
        frames = [frame(p) for p in pieces]
        job = assembly(tmp_path, info_for(frames, 50_000))
        with pytest.raises(
            AssemblyError,
            match=rf"^chunk 1 of {FID.hex()}, the last, ends at content offset 40000, "
            r"expected the content size 50000$",
        ):
            job.decompress(1, frames[1], 20_000)

    def test_a_bomb_past_the_declared_content_size_writes_nothing(self, tmp_path: Path) -> None:
        """A frame of 64 MiB of zeros in an upload that declared 40,000 bytes: refused
        from its header, before one byte of it is decompressed."""
        _, _, job = self._two(tmp_path)
        bomb = zstandard.ZstdCompressor(level=1, write_content_size=True).compress(
            bytes(64 * 1024 * 1024)
        )
        with pytest.raises(
            AssemblyError,
            match=rf"^chunk 0 of {FID.hex()} covers content bytes 0\.\.67108864, past the "
            r"upload's content size 40000$",
        ):
            job.decompress(0, bomb, 0)
        assert job.tmp.stat().st_size == 0

    def test_a_window_over_the_limit(self, tmp_path: Path) -> None:
        content = text(40_000)
        frames = [frame(content)]
        job = FramedAssembly(
            info=info_for(frames, len(content)), files_dir=tmp_path / "files", max_window_log=10
        )
        job.create()
        with pytest.raises(
            AssemblyError, match=r"needs a window of \d+ bytes, over the limit 1024"
        ):
            job.decompress(0, frames[0], 0)

    def test_chunks_that_are_not_the_declared_payload_are_not_published(
        self, tmp_path: Path
    ) -> None:
        content = text(40_000)
        pieces = cut(content, 20_000)
        frames = [frame(p) for p in pieces]
        info = info_for(frames, len(content), payload_digest=bytes(16))
        job = assembly(tmp_path, info)
        for index in (0, 1):
            job.decompress(index, frames[index], offsets(pieces)[index])
        with pytest.raises(
            AssemblyError, match=rf"^payload {FID.hex()} hashes to payload digest [0-9a-f]{{32}}"
        ):
            job.finish(fsync=False)
        assert not (tmp_path / "files" / "log.txt").exists()
        job.discard()
        assert listing(tmp_path) == []

    def test_a_refused_upload_leaves_nothing_behind(self, tmp_path: Path) -> None:
        _, frames, job = self._two(tmp_path)
        job.decompress(0, frames[0], 0)
        with pytest.raises(AssemblyError):
            job.decompress(1, frames[1], 1)
        with pytest.raises(AssemblyError, match=r"1 of 2 chunks assembled, cannot publish$"):
            job.finish(fsync=False)
        job.discard()
        assert listing(tmp_path) == []
