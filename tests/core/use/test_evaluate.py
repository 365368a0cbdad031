"""The probes of ``evaluate`` on constructed features: weighted k-NN and the dense linear probe."""

from __future__ import annotations

import math

import torch

from detailclip_cli.core.use import evaluate as E


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
