"""Each evaluation layout read from a miniature in its exact distributed form: detection, splits,
classes, label coding, and one error line when a folder matches none."""

from __future__ import annotations

import benchmark_minis as minis
import numpy as np
import pytest

from detailclip_cli.core.data import DataError
from detailclip_cli.core.data.benchmarks import (
    IGNORE_INDEX,
    EvalSetDataset,
    Layout,
    MaskCoding,
    detect_layout,
    open_eval_set,
    read_image,
)


def test_ade20k(tmp_path):
    minis.ade20k(tmp_path)
    assert detect_layout(tmp_path) is Layout.ade20k
    val = open_eval_set(tmp_path)
    assert (val.layout, val.split, len(val)) == ("ade20k", "validation", 6)
    assert val.mask_classes[:2] == ["name1", "name2"] and len(val.mask_classes) == 150  # objectInfo150.csv's Name
    assert open_eval_set(tmp_path, split="train").split == "training"
    # 0 ("other") is ignored and k is class k - 1.
    item = EvalSetDataset(val, lambda image, mask, i: {"mask": mask})[1]
    assert set(np.unique(item["mask"])) == {IGNORE_INDEX, 1}


def test_ade20k_without_object_info_gets_the_standard_names(tmp_path):
    (minis.ade20k(tmp_path) / "objectInfo150.csv").unlink()
    names = open_eval_set(tmp_path).mask_classes
    assert (names[0], names[12], names[149]) == ("wall", "person", "flag")


def test_voc_palette_labels_and_boundary(tmp_path):
    minis.voc(tmp_path)
    val = open_eval_set(tmp_path)
    assert (val.layout, val.split, len(val), len(val.mask_classes)) == ("voc", "val", 6, 21)
    masks = EvalSetDataset(val, lambda image, mask, i: {"mask": mask})
    assert set(np.unique(masks[1]["mask"])) == {2, IGNORE_INDEX}  # palette index 2, boundary 255 kept as ignore
    with pytest.raises(DataError, match="no split 'test'"):
        open_eval_set(tmp_path, split="test")


def test_cityscapes_train_ids(tmp_path):
    minis.cityscapes(tmp_path)
    val = open_eval_set(tmp_path)
    assert (val.layout, val.split, len(val), len(val.mask_classes)) == ("cityscapes", "val", 6, 19)
    assert val.items[0].mask.name == "frankfurt_000000_000019_gtFine_labelTrainIds.png"


def test_coco_captions_five_per_image(tmp_path):
    minis.coco(tmp_path)
    val = open_eval_set(tmp_path)
    assert (val.layout, val.split, len(val), val.num_captions) == ("coco", "val2017", 4, 20)
    assert val.items[2].captions[4] == "image 2 caption 4"


def test_karpathy_split_and_image_folder(tmp_path):
    minis.karpathy(tmp_path)
    test = open_eval_set(tmp_path)
    assert (test.layout, test.split, len(test), test.num_captions) == ("karpathy", "test", 3, 15)
    assert test.items[0].image == tmp_path / "flickr30k-images" / "1000.jpg"
    assert len(open_eval_set(tmp_path / "dataset_flickr30k.json", split="train")) == 1


def test_clip_benchmark_reads_images_by_offset(tmp_path):
    minis.colour_clip_benchmark(tmp_path, n=7)
    test = open_eval_set(tmp_path)
    assert (test.layout, test.split, len(test), test.classes) == ("clip_benchmark", "test", 7, ["red", "green", "blue"])
    assert [i.label for i in test.items] == [0, 1, 2, 0, 1, 2, 0]
    assert test.templates == ["a photo of a {}.", "a {} thing."]  # clip_benchmark's {c} read as ours
    assert read_image(test.items[3].image).size == (40, 48)  # the second shard's first member


def test_imagenet_wordnet_ids(tmp_path):
    minis.imagenet(tmp_path, wnids=("n01440764", "n15075141"))
    val = open_eval_set(tmp_path)
    assert (val.layout, val.split, len(val), len(val.classes)) == ("imagenet", "val", 4, 1000)
    assert [i.label for i in val.items] == [0, 0, 999, 999]  # sorted wnid order
    assert (val.classes[0], val.classes[999]) == ("tench", "toilet paper")
    assert val.template_set == "openai_imagenet"


def test_ours_and_forcing_a_layout(demo_cache, tmp_path):
    minis.voc(tmp_path)
    assert open_eval_set("demo").layout == "demo"
    with pytest.raises(DataError, match="is not in the ade20k layout"):
        open_eval_set(tmp_path, layout="ade20k")


def test_a_folder_in_no_layout_is_one_line_naming_each(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(DataError) as info:
        open_eval_set(tmp_path)
    message = str(info.value)
    assert "\n" not in message
    for layout in ("ade20k", "voc", "cityscapes", "coco", "karpathy", "clip_benchmark", "imagenet", "folder"):
        assert f"{layout}: " in message


def test_limit_spreads_over_the_split(tmp_path):
    minis.imagenet(tmp_path, per_class=4)
    assert [i.label for i in open_eval_set(tmp_path, limit=3).items] == [0, 1, 2]  # every 4th, classes kept


def test_mask_coding():
    raw = np.array([[0, 1, 255], [150, 2, 3]])
    assert MaskCoding(reduce_zero_label=True).decode(raw).tolist() == [[255, 0, 255], [149, 1, 2]]
    assert MaskCoding().decode(raw).tolist() == [[0, 1, 255], [150, 2, 3]]
    assert MaskCoding(ignore_index=None).decode(raw).tolist() == raw.tolist()
