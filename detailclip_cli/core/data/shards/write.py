"""Writing samples as webdataset tar shards ``000000.tar``, ``000001.tar``, ... and ``shards.json``
(``detailclip shard``): whole shards only, even after a crash, and the same bytes for the same input."""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import re
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from detailclip_cli.core.data.decode import load_image
from detailclip_cli.core.data.samples import DataError, Sample, printable
from detailclip_cli.core.data.shards.index import INDEX_FORMAT, ShardInfo
from detailclip_cli.core.data.shards.spec import INDEX_FILE
from detailclip_cli.core.files import atomic_write, write_json

# The formats whose bytes are kept as they are (by their magic numbers), and their extensions.
_KEPT_FORMATS = ((b"\xff\xd8\xff", "jpg"), (b"\x89PNG\r\n\x1a\n", "png"))
_SHARD_NAME = re.compile(r"\d{6,}\.tar")


def kept_format(data: bytes) -> str | None:
    """``jpg``, ``png`` or ``webp`` when ``data`` is such a file (its bytes go into shards as they are)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return next((ext for magic, ext in _KEPT_FORMATS if data.startswith(magic)), None)


@dataclass
class WriteSummary:
    """What :func:`write_shards` wrote.

    Attributes:
        shards: the shard files, in order.
        samples: samples written.
        skipped: one line for each input left out (its image could not be read).
        bytes: the shards' total size.
    """

    shards: list[Path] = field(default_factory=list)
    samples: int = 0
    skipped: list[str] = field(default_factory=list)
    bytes: int = 0


def prepare_out_dir(out_dir: Path, *, force: bool) -> None:
    """Make ``out_dir`` ready for new shards: refuse a non-empty one unless ``force``, which
    removes only the shards and index a previous run wrote (other files stay).

    Raises:
        DataError: ``out_dir`` is not empty and ``force`` is off, or is not a folder.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out {printable(out_dir)} is a file, not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    # Temporary shards and index of a crashed run (atomic_write's names): never data of anyone else.
    for stale in [*out_dir.glob(".*.tar.*.tmp"), *out_dir.glob(f".{INDEX_FILE}.*.tmp")]:
        stale.unlink(missing_ok=True)
    entries = sorted(e.name for e in out_dir.iterdir())
    if entries and not force:
        raise DataError(f"--out {printable(out_dir)} is not empty ({printable(entries[0])}"
                        f"{f' and {len(entries) - 1} more' if len(entries) > 1 else ''}); "
                        "give --force to replace the shards in it")
    for name in entries:
        if _SHARD_NAME.fullmatch(name) or name == INDEX_FILE:
            (out_dir / name).unlink()


def sample_members(sample: Sample, key: str) -> list[tuple[str, bytes]]:
    """A sample's tar members: its image (original bytes when JPEG, PNG or WebP; else lossless
    PNG of the decoded image), ``.txt`` caption, and ``.json`` label when it has one.

    Raises:
        DataError: the image cannot be read (checked with :func:`load_image`'s safe decoding).
    """
    image = load_image(sample.image)  # refuses what training would refuse (pixel limit, garbage)
    try:
        data = Path(sample.image).read_bytes()
    except OSError as e:
        raise DataError(f"cannot read image {printable(sample.image)}: {e.strerror or e}") from None
    ext = kept_format(data)
    if ext is None:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data, ext = buffer.getvalue(), "png"
    members = [(f"{key}.{ext}", data), (f"{key}.txt", sample.caption.encode("utf-8"))]
    if sample.label is not None:
        members.append((f"{key}.json", json.dumps({"label": sample.label}, ensure_ascii=False).encode("utf-8")))
    return members


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # fixed: the same input writes the same bytes
    tar.addfile(info, io.BytesIO(data))


def write_shards(samples: Sequence[Sample], out_dir: Path, *, samples_per_shard: int = 1000,
                 force: bool = False, progress: Callable[[int, str | None], None] | None = None) -> WriteSummary:
    """Write samples as webdataset tar shards ``000000.tar``, ``000001.tar``, ... plus ``shards.json``.

    Each shard is written under a temporary hidden name and renamed when complete (fsynced), so
    a crash leaves whole shards only; the index (per-shard sizes and sample counts, which spare
    the reader a scan) is written last. Sample keys number the samples from ``000000000``.

    Args:
        samples: what to write, in order.
        out_dir: the folder (created; see :func:`prepare_out_dir`).
        samples_per_shard: samples in each shard but the last.
        force: replace the shards of an earlier run in ``out_dir``.
        progress: called after each sample with how many are done and, for one that was left
            out, the one-line reason.

    Raises:
        DataError: ``out_dir`` is not empty (without ``force``), or ``samples_per_shard`` < 1.
    """
    if samples_per_shard < 1:
        raise DataError(f"--samples-per-shard must be at least 1, got {samples_per_shard}")
    out_dir = Path(out_dir)
    prepare_out_dir(out_dir, force=force)
    summary = WriteSummary()
    infos: list[ShardInfo] = []

    def prepared() -> Iterator[list[tuple[str, bytes]]]:
        for done, sample in enumerate(samples, 1):
            try:
                members = sample_members(sample, f"{summary.samples:09d}")
            except DataError as e:
                summary.skipped.append(str(e))
                if progress:
                    progress(done, str(e))
                continue
            summary.samples += 1
            yield members
            if progress:
                progress(done, None)

    pending = prepared()
    for first in pending:  # a shard is started only once it has a sample
        path = out_dir / f"{len(infos):06d}.tar"

        def write(tmp: Path, first=first) -> None:
            with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
                for members in itertools.chain([first], itertools.islice(pending, samples_per_shard - 1)):
                    for name, data in members:
                        _add_member(tar, name, data)

        before = summary.samples - 1
        atomic_write(path, write)
        infos.append(ShardInfo(name=path.name, bytes=path.stat().st_size, samples=summary.samples - before))
        summary.shards.append(path)
        summary.bytes += infos[-1].bytes
    if infos:
        write_json(out_dir / INDEX_FILE, {"format": INDEX_FORMAT, "version": 1, "samples": summary.samples,
                                          "shards": [dataclasses.asdict(i) for i in infos]})
    return summary
