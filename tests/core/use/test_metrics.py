"""Metrics against hand-computed cases: top-k, confusion and recall, retrieval recall@k, mIoU."""

from __future__ import annotations

import math

import pytest
import torch

from detailclip_cli.core.use import metrics as M


def test_accuracy():
    assert M.accuracy(torch.tensor([0, 2, 1, 1]), torch.tensor([0, 1, 1, 2])) == 0.5
    assert M.accuracy(torch.tensor([3]), torch.tensor([3])) == 1.0


def test_top_k_accuracy():
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    labels = torch.tensor([1, 1, 0, 2])
    assert M.top_k_accuracy(scores, labels, 1) == 0.25  # only row 0
    assert M.top_k_accuracy(scores, labels, 2) == 0.5  # rows 0 and 1
    assert M.top_k_accuracy(scores, labels, 5) == 1.0  # k clipped to C


def test_confusion_matrix_and_recall():
    preds = torch.tensor([0, 0, 1, 1, 1, 0])
    labels = torch.tensor([0, 1, 1, 1, 0, 0])
    conf = M.confusion_matrix(preds, labels, 3)
    assert conf.tolist() == [[2, 1, 0], [1, 2, 0], [0, 0, 0]]
    recall = M.per_class_recall(conf)
    assert recall[:2].tolist() == pytest.approx([2 / 3, 2 / 3]) and math.isnan(recall[2])
    assert M.mean_per_class_recall(conf) == pytest.approx(2 / 3)  # class 2 has no examples
    # Unbalanced: 3/3 right on class 0, 0/1 on class 1 -> accuracy 0.75 but balanced 0.5.
    conf = M.confusion_matrix(torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 0, 1]), 2)
    assert M.mean_per_class_recall(conf) == 0.5


def test_recall_at_k_hand_computed():
    scores = torch.tensor([
        [0.9, 0.1, 0.0],   # correct first
        [0.8, 0.5, 0.2],   # correct second
        [0.7, 0.6, 0.1],   # correct last
    ])
    r = M.recall_at_k(scores, ks=(1, 2, 3))
    assert r == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: pytest.approx(1.0)}


def test_recall_at_k_ties_count_against_the_query():
    flat = torch.ones(4, 4)  # everything ties: no credit at k=1
    assert M.recall_at_k(flat, ks=(1, 4)) == {1: 0.0, 4: 1.0}
    scores = torch.tensor([[0.5, 0.5], [0.1, 0.9]])  # row 0 ties with one other item
    assert M.recall_at_k(scores, ks=(1, 2)) == {1: 0.5, 2: 1.0}


def test_retrieval_metrics_both_directions():
    img = torch.eye(3)
    txt = torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])  # texts 1 and 2 swapped
    m = M.retrieval_metrics(img, txt, ks=(1, 5))
    assert m["image_to_text_R@1"] == pytest.approx(1 / 3)
    assert m["text_to_image_R@1"] == pytest.approx(1 / 3)
    assert m["image_to_text_R@5"] == 1.0


def test_miou_with_an_absent_class():
    target = torch.tensor([[0, 0, 1, 1]])
    pred = torch.tensor([[0, 1, 1, 1]])
    conf = M.segmentation_confusion(pred, target, num_classes=3)  # class 2 absent everywhere
    assert conf.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    m = M.miou_from_confusion(conf)
    # class 0: tp 1, union 2 -> 0.5; class 1: tp 2, union 3 -> 2/3; class 2 absent -> excluded
    assert m["iou"][0] == pytest.approx(0.5) and m["iou"][1] == pytest.approx(2 / 3) and m["iou"][2] is None
    assert m["mIoU"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert m["pixel_accuracy"] == pytest.approx(3 / 4)


def test_miou_counts_a_predicted_but_absent_class_as_zero():
    conf = M.segmentation_confusion(torch.tensor([2, 1]), torch.tensor([1, 1]), num_classes=3)
    m = M.miou_from_confusion(conf)
    assert m["iou"] == [None, pytest.approx(0.5), pytest.approx(0.0)]
    assert m["mIoU"] == pytest.approx(0.25)


def test_retrieval_with_five_captions_per_image():
    # 2 images, 5 captions each (captions 0-4 -> image 0, 5-9 -> image 1), hand-built scores.
    img = torch.eye(2)
    owner = torch.tensor([0] * 5 + [1] * 5)
    # Captions of image 0 all point at image 1 but one (caption 3), which points at image 0;
    # captions of image 1 all point at image 1 except caption 9, which points at image 0.
    txt = torch.tensor([[0.0, 1.0]] * 3 + [[1.0, 0.0], [0.0, 1.0]] + [[0.0, 1.0]] * 4 + [[1.0, 0.0]])
    m = M.retrieval_metrics(img, txt, owner, ks=(1, 5, 10))
    # Image 0: its best caption (3, score 1) ties with caption 9 (foreign): 1 ahead -> miss at 1, hit at 5.
    # Image 1: its best captions score 1, foreign captions 0, 1, 2, 4 also score 1: 4 ahead -> hit at 5.
    assert m["image_to_text_R@1"] == 0.0 and m["image_to_text_R@5"] == 1.0
    # Text -> image: caption 3, captions 5-8 hit; 0, 1, 2, 4 prefer image 1 and 9 prefers image 0.
    assert m["text_to_image_R@1"] == pytest.approx(5 / 10)
    assert m["text_to_image_R@5"] == 1.0 and m["text_to_image_R@10"] == 1.0


def test_segmentation_confusion_honours_the_ignore_label():
    target = torch.tensor([[0, 255, 1, 1], [255, 0, 2, 255]])
    pred = torch.tensor([[0, 1, 1, 0], [2, 0, 2, 2]])
    conf = M.segmentation_confusion(pred, target, num_classes=4, ignore_index=255)
    assert conf.sum() == 5  # three ignored pixels are not counted, whatever was predicted there
    m = M.miou_from_confusion(conf)
    # class 0: tp 2, union 3 (one 1 predicted as 0); class 1: tp 1, union 2; class 2: tp 1, union 1; class 3 absent.
    assert m["iou"][3] is None
    assert m["iou"][:3] == pytest.approx([2 / 3, 1 / 2, 1.0])
    assert m["mIoU"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert m["pixel_accuracy"] == pytest.approx(4 / 5)
