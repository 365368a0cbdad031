"""The data layer: what a data spec names and how it is read, the built-in demo set, transforms,
datasets.

- :mod:`.sources`: the data-source factory (:func:`open_source`) and its written protocols
  (:class:`MapSource`, :class:`StreamSource`, :class:`StreamingDataset`).
- :mod:`.formats`: one module per format read whole (``demo``, ``folder``, ``table``);
  :mod:`.shards`: the streaming format (webdataset tar shards: spec, index, stream, write).
- :mod:`.samples`: :class:`Sample`, :class:`SampleList`, :class:`ReadReport`, :class:`DataError`.
- :mod:`.decode`: images and masks; :mod:`.walk`: walking folders; :mod:`.captions`: cleaning.
- :mod:`.demo` (making the demo set), :mod:`.transforms`, :mod:`.dataset`, :mod:`.multicrop`.

Names load lazily (PEP 562): ``from detailclip_cli.core.data import load_image`` imports only
:mod:`.decode` and what it needs, so a one-image command never loads the training transforms,
the shard reader or torchvision.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> the module that defines it
_MODULES: dict[str, str] = {
    "CleanCaption": "detailclip_cli.core.data.captions",
    "clean_caption": "detailclip_cli.core.data.captions",
    "EvalDataset": "detailclip_cli.core.data.dataset",
    "TwoViewDataset": "detailclip_cli.core.data.dataset",
    "collate_skipping_bad": "detailclip_cli.core.data.dataset",
    "item_seed": "detailclip_cli.core.data.dataset",
    "truncated_captions": "detailclip_cli.core.data.dataset",
    "decode_image": "detailclip_cli.core.data.decode",
    "load_image": "detailclip_cli.core.data.decode",
    "load_mask": "detailclip_cli.core.data.decode",
    "DEMO_VERSION": "detailclip_cli.core.data.demo",
    "default_cache_dir": "detailclip_cli.core.data.demo",
    "demo_root": "detailclip_cli.core.data.demo",
    "generate_demo": "detailclip_cli.core.data.demo",
    "make_eval_geometry": "detailclip_cli.core.data.eval_transform",
    "make_eval_transform": "detailclip_cli.core.data.eval_transform",
    "make_normalize": "detailclip_cli.core.data.eval_transform",
    "DataError": "detailclip_cli.core.data.samples",
    "ReadReport": "detailclip_cli.core.data.samples",
    "Sample": "detailclip_cli.core.data.samples",
    "SampleList": "detailclip_cli.core.data.samples",
    "printable": "detailclip_cli.core.data.samples",
    "ShardDataset": "detailclip_cli.core.data.shards",
    "ShardSource": "detailclip_cli.core.data.shards",
    "is_shard_spec": "detailclip_cli.core.data.shards",
    "write_shards": "detailclip_cli.core.data.shards",
    "DataSource": "detailclip_cli.core.data.sources",
    "MapSource": "detailclip_cli.core.data.sources",
    "ReportingDataset": "detailclip_cli.core.data.sources",
    "StreamSource": "detailclip_cli.core.data.sources",
    "StreamingDataset": "detailclip_cli.core.data.sources",
    "class_names": "detailclip_cli.core.data.sources",
    "open_source": "detailclip_cli.core.data.sources",
    "read_samples": "detailclip_cli.core.data.sources",
    "AugmentConfig": "detailclip_cli.core.data.transforms",
    "make_view_transform": "detailclip_cli.core.data.transforms",
    "IMAGE_EXTENSIONS": "detailclip_cli.core.data.walk",
    "image_files": "detailclip_cli.core.data.walk",
    "is_image_file": "detailclip_cli.core.data.walk",
    "walk_files": "detailclip_cli.core.data.walk",
}

__all__ = [
    "DEMO_VERSION",
    "IMAGE_EXTENSIONS",
    "AugmentConfig",
    "CleanCaption",
    "DataError",
    "DataSource",
    "EvalDataset",
    "MapSource",
    "ReadReport",
    "ReportingDataset",
    "Sample",
    "SampleList",
    "ShardDataset",
    "ShardSource",
    "StreamSource",
    "StreamingDataset",
    "TwoViewDataset",
    "class_names",
    "clean_caption",
    "collate_skipping_bad",
    "decode_image",
    "default_cache_dir",
    "demo_root",
    "generate_demo",
    "image_files",
    "is_image_file",
    "is_shard_spec",
    "item_seed",
    "load_image",
    "load_mask",
    "make_eval_geometry",
    "make_eval_transform",
    "make_normalize",
    "make_view_transform",
    "open_source",
    "printable",
    "read_samples",
    "truncated_captions",
    "walk_files",
    "write_shards",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ serves these
    from detailclip_cli.core.data.captions import CleanCaption, clean_caption
    from detailclip_cli.core.data.dataset import (
        EvalDataset,
        TwoViewDataset,
        collate_skipping_bad,
        item_seed,
        truncated_captions,
    )
    from detailclip_cli.core.data.decode import decode_image, load_image, load_mask
    from detailclip_cli.core.data.demo import (
        DEMO_VERSION,
        default_cache_dir,
        demo_root,
        generate_demo,
    )
    from detailclip_cli.core.data.eval_transform import (
        make_eval_geometry,
        make_eval_transform,
        make_normalize,
    )
    from detailclip_cli.core.data.samples import (
        DataError,
        ReadReport,
        Sample,
        SampleList,
        printable,
    )
    from detailclip_cli.core.data.shards import (
        ShardDataset,
        ShardSource,
        is_shard_spec,
        write_shards,
    )
    from detailclip_cli.core.data.sources import (
        DataSource,
        MapSource,
        ReportingDataset,
        StreamingDataset,
        StreamSource,
        class_names,
        open_source,
        read_samples,
    )
    from detailclip_cli.core.data.transforms import AugmentConfig, make_view_transform
    from detailclip_cli.core.data.walk import (
        IMAGE_EXTENSIONS,
        image_files,
        is_image_file,
        walk_files,
    )


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULES[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
