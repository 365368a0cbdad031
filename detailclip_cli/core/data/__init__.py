"""The data layer: readers for user data specs, the built-in demo set, transforms, datasets."""

from detailclip_cli.core.data.dataset import (
    EvalDataset,
    TwoViewDataset,
    collate_skipping_bad,
    item_seed,
    truncated_captions,
)
from detailclip_cli.core.data.demo import DEMO_VERSION, default_cache_dir, demo_root, generate_demo
from detailclip_cli.core.data.readers import (
    IMAGE_EXTENSIONS,
    DataError,
    ReadReport,
    Sample,
    SampleList,
    class_names,
    clean_caption,
    decode_image,
    image_files,
    is_image_file,
    load_image,
    load_mask,
    read_samples,
    walk_files,
)
from detailclip_cli.core.data.shards import ShardDataset, is_shard_spec, write_shards
from detailclip_cli.core.data.transforms import (
    AugmentConfig,
    make_eval_geometry,
    make_eval_transform,
    make_normalize,
    make_view_transform,
)

__all__ = [
    "DEMO_VERSION",
    "IMAGE_EXTENSIONS",
    "AugmentConfig",
    "DataError",
    "EvalDataset",
    "ReadReport",
    "Sample",
    "SampleList",
    "ShardDataset",
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
    "read_samples",
    "truncated_captions",
    "walk_files",
    "write_shards",
]
