"""Training data as webdataset-format tar shards: the streaming data format.

A shard is an uncompressed ``.tar`` file whose members are grouped into samples by basename,
as webdataset does: ``abc.jpg`` + ``abc.txt`` (+ ``abc.json``) are one sample with key ``abc``
(the key is the member's path up to the first dot of its file name; a sample's members follow
each other in the tar). A sample has one image (``.jpg``, ``.jpeg``, ``.png``, ``.webp``, or
another extension of :data:`~detailclip_cli.core.data.walk.IMAGE_EXTENSIONS`) and, for
pretraining, a caption: ``.txt``, or else ``.json`` with a ``"caption"`` or ``"text"`` string.
Hidden members and folders are ignored.

A shard spec (``--data``) is a brace pattern (``shards/{000000..000099}.tar``, ``{a,b}.tar``),
one ``.tar`` file, or a folder of shards: what ``detailclip shard`` writes, or what img2dataset
writes with ``--output_format webdataset`` (see :mod:`.spec`).

One module per job:

- :mod:`.spec`: what a spec names (brace patterns, folders of shards, their sidecar files).
- :mod:`.index`: counting each shard's samples, from ``shards.json`` or the tar headers.
- :mod:`.stream`: :class:`ShardSource` (opened, counted) and :class:`ShardDataset` (the
  deterministic, resumable stream of training batches).
- :mod:`.write`: :func:`write_shards`.
"""

from detailclip_cli.core.data.shards.index import (
    IMAGE_EXTS,
    INDEX_FORMAT,
    Member,
    ShardInfo,
    epoch_samples,
    image_ext,
    scan_shard,
    shard_infos,
    tar_groups,
)
from detailclip_cli.core.data.shards.spec import (
    INDEX_FILE,
    expand_braces,
    is_shard_spec,
    shard_folder,
    shard_paths,
    streams_shards,
)
from detailclip_cli.core.data.shards.stream import (
    SHUFFLE_BUFFER,
    ShardDataset,
    ShardSource,
    shuffle_buffer,
)
from detailclip_cli.core.data.shards.write import (
    WriteSummary,
    kept_format,
    prepare_out_dir,
    write_shards,
)

__all__ = [
    "IMAGE_EXTS",
    "INDEX_FILE",
    "INDEX_FORMAT",
    "SHUFFLE_BUFFER",
    "Member",
    "ShardDataset",
    "ShardInfo",
    "ShardSource",
    "WriteSummary",
    "epoch_samples",
    "expand_braces",
    "image_ext",
    "is_shard_spec",
    "kept_format",
    "prepare_out_dir",
    "scan_shard",
    "shard_folder",
    "shard_infos",
    "shard_paths",
    "shuffle_buffer",
    "streams_shards",
    "tar_groups",
    "write_shards",
]
