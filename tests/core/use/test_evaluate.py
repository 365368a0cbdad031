"""Evaluation metrics against hand-computed cases, and the probes on constructed features."""

from __future__ import annotations

import math

import pytest
import torch

from detailclip_cli.core.use import evaluate as E
from detailclip_cli.core.use import metrics as M


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


def test_knn_weighted_vote():
    train = torch.tensor([[1.0, 0.0], [0.9, math.sqrt(1 - 0.81)], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    test = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert E.knn_classify(train, labels, test, num_classes=2, k=2).tolist() == [0, 1]
    # k=3: for the second query, one near vote for class 1 (sim 1) outweighs two far ones.
    assert E.knn_classify(train, labels, test, num_classes=2, k=3).tolist() == [0, 1]


def test_dense_probe_learns_a_separable_layout():
    # Patch features that encode the class of their patch exactly: the probe must reach ~1 mIoU.
    g = torch.Generator().manual_seed(0)
    n, grid, classes = 64, (4, 4), 3
    patch_classes = torch.randint(0, classes, (n, 16), generator=g)
    feats = torch.nn.functional.one_hot(patch_classes, classes).float() * 3 + 0.1 * torch.randn(n, 16, classes, generator=g)
    masks = patch_classes.reshape(n, 1, 4, 4).float()
    masks = torch.nn.functional.interpolate(masks, size=(16, 16), mode="nearest").reshape(n, 16, 16).long()
    data = E.Features(cls=torch.zeros(n, 2), patches=feats, masks=masks, labels=None)
    probe = E.train_dense_probe(data, classes, grid, epochs=40, lr=0.05, batch_size=16)
    m = E.dense_probe_metrics(probe, data, classes, grid)
    assert m["pixel_accuracy"] > 0.8 and m["mIoU"] > 0.65
