"""The probes of ``evaluate``: weighted k-NN, the logistic probe, the dense linear probe end to end,
token extraction at any resolution, and ``run_evaluation``'s record on miniature layouts."""

from __future__ import annotations

import math
import pickle

import benchmark_minis as minis
import pytest
import torch

from detailclip_cli.core.data.benchmarks import open_eval_set
from detailclip_cli.core.use import cls_probes as P
from detailclip_cli.core.use.batching import EvalCollate, SkipLog
from detailclip_cli.core.use.dense import DenseProbeConfig, dense_probe
from detailclip_cli.core.use.embed import ImageEncoder, embed_eval_set, encode_images, image_tokens
from detailclip_cli.core.use.evaluate import run_evaluation


def test_knn_weighted_vote():
    train = torch.tensor([[1.0, 0.0], [0.9, math.sqrt(1 - 0.81)], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    test = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert P.knn_classify(train, labels, test, num_classes=2, k=2).tolist() == [0, 1]
    # k=3: for the second query, one near vote for class 1 (sim 1) outweighs two far ones.
    assert P.knn_classify(train, labels, test, num_classes=2, k=3).tolist() == [0, 1]
    votes = P.knn_scores(train, labels, test[:1], num_classes=2, k=3, temperature=0.5)
    assert votes[0].tolist() == pytest.approx([math.exp(2) + math.exp(1.8), math.exp(0)])


def test_logistic_probe_chooses_c_on_held_out_train_data():
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(3)
    y = torch.arange(60) % 3
    x = centres[y] + 0.05 * torch.randn(60, 3, generator=g)
    out = P.logistic_probe(x, y, centres, torch.arange(3), seed=0)
    assert out["top1"] == 1.0 and out["protocol"]["held_out_accuracy"] == 1.0
    # The smallest C reaching the best held-out accuracy is chosen (the strongest regularisation).
    assert out["protocol"]["C"] in P.LOGREG_C_GRID and out["protocol"]["held_out_fraction"] == 0.2


def test_tokens_are_exact_at_the_training_size_and_resampled_elsewhere(model, images):
    tokens = image_tokens(model, images)[0]
    assert torch.equal(tokens, model.visual(images))  # nothing resampled at the model's own size
    assert torch.equal(encode_images(model, images), model.encode_image(images))
    size = model.cfg.vision.image_size
    bigger = torch.nn.functional.interpolate(images, size=(2 * size, size + 8), mode="bilinear")
    p = model.visual.patch_size
    assert image_tokens(model, bigger)[0].shape == (3, 1 + (2 * size // p) * ((size + 8) // p), model.visual.width)
    last2 = image_tokens(model, images, last_k=2)
    assert len(last2) == 2 and torch.allclose(last2[1], tokens, atol=1e-6)


@pytest.mark.slow
def test_dense_probe_reaches_miou_one_where_a_linear_map_can(model, tmp_path):
    # Each ADE20K miniature image is one flat colour per class with an ignored ("other") stripe, at
    # 40x48 px, not the model's 64: the probe must classify every counted pixel at label resolution.
    minis.ade20k(tmp_path)
    train, val = open_eval_set(tmp_path, split="train"), open_eval_set(tmp_path)
    cfg = DenseProbeConfig(iterations=40, lr=1e-2, batch_size=4, scale=(1.0, 1.0), inference="slide")
    skipped = SkipLog()
    out = dense_probe(model, train, val, cfg, skipped=skipped)
    assert out["mIoU"] == 1.0 and out["pixel_accuracy"] == 1.0
    assert out["num_classes"] == 150 and out["iou"]["name1"] == 1.0 and out["iou"]["name4"] is None
    assert out["protocol"]["crop"] == model.cfg.vision.image_size and out["protocol"]["iterations"] == 40
    resize = dense_probe(model, train, val, DenseProbeConfig(iterations=40, lr=1e-2, batch_size=4, scale=(1.0, 1.0),
                                                            inference="resize", last_k=2), skipped=skipped)
    assert resize["mIoU"] == 1.0 and skipped.count == 0


def test_run_evaluation_on_a_clip_benchmark_miniature(model, tmp_path):
    minis.colour_clip_benchmark(tmp_path, n=7)
    record = run_evaluation(model, str(tmp_path), workers=0)
    assert record["data"]["layout"] == "clip_benchmark" and record["data"]["images"] == 7
    assert set(record["metrics"]) == {"zeroshot"}
    z = record["metrics"]["zeroshot"]
    assert z["protocol"]["templates"] == "the data's own" and z["protocol"]["num_templates"] == 2
    assert z["top5"] == 1.0 and round(z["top1"] * 7, 6) == round(z["top1"] * 7)  # a count of 7 images
    assert record["skipped"] == {"retrieval": "the clip_benchmark layout has no captions",
                                 "dense": "the clip_benchmark layout has no label maps",
                                 "probe": "the data has no labelled train split to fit the probes on"}


def test_workers_encode_the_evaluation_images_as_the_main_process_does(model, tmp_path):
    # On a CPU evaluate's workers encode (EvalCollate); rows, order and labels are those of
    # reading and encoding in the main process.
    minis.colour_clip_benchmark(tmp_path, n=7)
    val = open_eval_set(tmp_path)
    main = embed_eval_set(model, val, batch_size=3, workers=0, skipped=SkipLog())
    workers = embed_eval_set(model, val, batch_size=3, workers=2, skipped=SkipLog())
    assert torch.equal(workers.indices, main.indices) and torch.equal(workers.labels, main.labels)
    torch.testing.assert_close(workers.embeddings, main.embeddings, rtol=0, atol=1e-6)
    assert workers.embeddings.dtype == torch.float32 and workers.embeddings.shape == (7, model.cfg.embed_dim)


def test_eval_collate_encodes_the_readable_items_and_pickles(model, images):
    items = [{"image": images[i], "index": i, "label": 10 + i} for i in range(3)]
    items.insert(1, {"bad": "cannot read x.png"})
    collate = EvalCollate(encode=ImageEncoder(model))
    batch = pickle.loads(pickle.dumps(collate))(items)  # as a worker started with spawn gets it
    assert set(batch) == {"embedding", "index", "label", "bad", "size"}
    assert torch.equal(batch["embedding"], encode_images(model, images))
    assert batch["index"].tolist() == [0, 1, 2] and batch["label"].tolist() == [10, 11, 12]
    assert batch["bad"] == ["cannot read x.png"] and batch["size"] == 4
