"""The data layer: what a data spec names and how it is read, the built-in demo set, transforms,
datasets.

- :mod:`.sources`: the data-source factory (:func:`open_source`) and its written protocols
  (:class:`MapSource`, :class:`StreamSource`, :class:`StreamingDataset`).
- :mod:`.formats`: one module per format read whole (``demo``, ``folder``, ``table``);
  :mod:`.shards`: the streaming format (webdataset tar shards: spec, index, stream, write).
- :mod:`.samples`: :class:`Sample`, :class:`SampleList`, :class:`ReadReport`, :class:`DataError`.
- :mod:`.decode`: images and masks; :mod:`.walk`: walking folders; :mod:`.captions`: cleaning.
- :mod:`.demo` (making the demo set), :mod:`.transforms`, :mod:`.dataset`, :mod:`.multicrop`.
"""

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
from detailclip_cli.core.data.transforms import (
    AugmentConfig,
    make_eval_geometry,
    make_eval_transform,
    make_normalize,
    make_view_transform,
)
from detailclip_cli.core.data.walk import (
    IMAGE_EXTENSIONS,
    image_files,
    is_image_file,
    walk_files,
)

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
