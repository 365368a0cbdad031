"""The inference core: model resolution, zero-shot, metrics, attention maps, reconstruction."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from detailclip_cli.core.store import lookup
from detailclip_cli.core.use import batching
from detailclip_cli.core.use import metrics
from detailclip_cli.core.use import probes
from detailclip_cli.core.use import templates
from detailclip_cli.core.use import zeroshot
from detailclip_cli.core.config import load_preset
from detailclip_cli.core.store.io import ModelLoadError, save_model
from detailclip_cli.core.model.detailclip import DetailCLIP
from detailclip_cli.core.model.removal import num_kept, remove_tokens
from detailclip_cli.errors import UsageError


@pytest.fixture(scope="module")
def model():
    """A random tiny model with a decoder (no head: inference never uses it)."""
    cfg, _ = load_preset("tiny")
    cfg.vision.depth = 2
    cfg.head = None
    torch.manual_seed(0)
    return DetailCLIP(cfg).eval()


@pytest.fixture(scope="module")
def images(model):
    torch.manual_seed(1)
    size = model.cfg.vision.image_size
    return torch.randn(3, 3, size, size)


# -- resolving models ------------------------------------------------------------------------------


def test_default_model_missing_says_so_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(lookup, "shipped_model_dir", lambda: tmp_path / "assets" / "detailclip-tiny")
    with pytest.raises(ModelLoadError) as info:
        lookup.resolve_model(None)
    assert str(info.value) == "no --model given and the shipped model assets/detailclip-tiny is missing"


def test_default_and_folder_models_load(monkeypatch, tmp_path, model):
    folder = save_model(model, tmp_path / "detailclip-tiny")
    monkeypatch.setattr(lookup, "shipped_model_dir", lambda: folder)
    assert isinstance(lookup.resolve_model(None), DetailCLIP)
    loaded = lookup.resolve_model(str(folder))
    assert loaded.cfg == model.cfg and not loaded.training
    # A path to the weights file means its folder.
    assert lookup.resolve_model(str(folder / "model.safetensors")).cfg == model.cfg


def test_paths_that_are_not_models_are_named(tmp_path):
    with pytest.raises(ModelLoadError, match="model not found: .*nowhere"):
        lookup.resolve_model(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"empty is not a model"):
        lookup.resolve_model(str(tmp_path / "empty"))
    with pytest.raises(UsageError, match="--pretrained only applies"):
        lookup.resolve_model(str(tmp_path / "empty"), pretrained="openai")


# -- templates and labels --------------------------------------------------------------------------


def test_templates_by_name_and_file(tmp_path):
    import open_clip

    default = templates.resolve_templates(None)
    assert [t("cat") for t in default][0] == "a photo of a cat."
    assert len(templates.resolve_templates("openai_imagenet")) == len(open_clip.OPENAI_IMAGENET_TEMPLATES)
    assert templates.resolve_templates("simple_imagenet")[0]("dog") == open_clip.SIMPLE_IMAGENET_TEMPLATES[0]("dog")
    path = tmp_path / "t.txt"
    path.write_text("# mine\nart of {}\n\n{} {{literal}}\n")
    assert [t("x") for t in templates.resolve_templates(str(path))] == ["art of x", "x {{literal}}"]
    path.write_text("no slot here\n")
    with pytest.raises(templates.TemplateError, match="no {}"):
        templates.resolve_templates(str(path))
    with pytest.raises(templates.TemplateError, match="not a template set"):
        templates.resolve_templates("nope")


def test_parse_labels():
    assert templates.parse_labels(" cat, dog ,,bird\n") == ["cat", "dog", "bird"]
    assert templates.parse_labels("a, b\nc\n", one_per_line=True) == ["a, b", "c"]
    with pytest.raises(templates.TemplateError, match="twice"):
        templates.parse_labels("cat,cat")
    with pytest.raises(templates.TemplateError, match="no labels"):
        templates.parse_labels(" , ")


# -- zero-shot -----------------------------------------------------------------------------------


def test_classifier_is_the_mean_of_normalised_prompt_embeddings(model):
    fill = templates.resolve_templates(None)
    weights = zeroshot.build_classifier(model, ["red car", "blue_bird"], fill)
    assert weights.shape == (2, model.cfg.embed_dim)
    torch.testing.assert_close(weights.norm(dim=-1), torch.ones(2))
    with torch.no_grad():
        prompts = [t("blue bird") for t in fill]
        expected = F.normalize(model.encode_text(model.tokenize(prompts)).mean(dim=0), dim=-1)
    torch.testing.assert_close(weights[1], expected, atol=1e-6, rtol=0)
    # Batching does not change the result.
    torch.testing.assert_close(zeroshot.build_classifier(model, ["red car", "blue_bird"], fill, batch_size=1),
                               weights, atol=1e-6, rtol=0)


def test_classify_is_softmax_of_scaled_cosine(model, images):
    weights = zeroshot.build_classifier(model, ["a", "b", "c"], templates.resolve_templates(None))
    probs = zeroshot.classify(model, images, weights)
    assert probs.shape == (3, 3)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(3))
    with torch.no_grad():
        logits = model.scale() * model.encode_image(images) @ weights.T
    torch.testing.assert_close(probs, logits.softmax(dim=-1))


# -- metrics (hand-computed) -------------------------------------------------------------------------


def test_top_k_accuracy():
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    labels = torch.tensor([1, 1, 0, 2])
    assert metrics.top_k_accuracy(scores, labels, 1) == 0.25  # only row 0
    assert metrics.top_k_accuracy(scores, labels, 2) == 0.5  # rows 0 and 1
    assert metrics.top_k_accuracy(scores, labels, 5) == 1.0  # k clipped to C


def test_confusion_matrix_and_recall():
    preds = torch.tensor([0, 0, 1, 1, 1, 0])
    labels = torch.tensor([0, 1, 1, 1, 0, 0])
    conf = metrics.confusion_matrix(preds, labels, 3)
    assert conf.tolist() == [[2, 1, 0], [1, 2, 0], [0, 0, 0]]
    recall = metrics.per_class_recall(conf)
    assert recall[:2].tolist() == pytest.approx([2 / 3, 2 / 3]) and math.isnan(recall[2])
    assert metrics.mean_per_class_recall(conf) == pytest.approx(2 / 3)  # class 2 has no examples
    # Unbalanced: 3/3 right on class 0, 0/1 on class 1 -> accuracy 0.75 but balanced 0.5.
    conf = metrics.confusion_matrix(torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 0, 1]), 2)
    assert metrics.mean_per_class_recall(conf) == 0.5
    report = zeroshot.ZeroShotReport(classes=["a", "b"], top1=0.75, top5=1.0, mean_per_class_recall=0.5,
                                confusion=conf, num_images=4)
    rows = report.per_class()
    assert rows[0] == {"class": "a", "support": 3, "correct": 3, "recall": 1.0, "precision": 0.75}
    assert rows[1] == {"class": "b", "support": 1, "correct": 0, "recall": 0.0, "precision": None}


# -- attention maps and reconstruction ----------------------------------------------------------------


def test_attention_maps_are_the_scores_pretraining_uses(model, images):
    maps = probes.attention_maps(model, images, layer="mean", keep_ratio=0.25, block_size=2)
    gh, gw = model.visual.grid_size
    assert maps.scores.shape == (3, gh, gw) and maps.removed.shape == (3, gh, gw)
    assert maps.per_head.shape == (3, model.cfg.vision.heads, gh, gw)
    with torch.no_grad():
        _, scores = model.visual.forward_with_scores(images, "mean")  # what the objective's teacher_pass gives
        expected = remove_tokens(model.visual.embed_patches(images), scores, 0.25, grid=(gh, gw), block_size=2)
    torch.testing.assert_close(maps.scores.reshape(3, -1), scores)
    assert torch.equal(maps.removed.reshape(3, -1), expected.mask)
    assert int((~maps.removed[0]).sum()) == num_kept(gh * gw, 0.25, 2)
    last = probes.attention_maps(model, images, layer="last", keep_ratio=0.5, block_size=1)
    assert not torch.allclose(last.scores, maps.scores)


def test_layer_and_removal_checks(model):
    assert probes.check_layer(model, "1") == 1 and probes.check_layer(model, "mean") == "mean"
    with pytest.raises(UsageError, match="out of range"):
        probes.check_layer(model, "5")
    with pytest.raises(UsageError, match="does not divide"):
        probes.check_removal(model, 0.5, 3)
    with pytest.raises(UsageError, match="keep-ratio"):
        probes.check_removal(model, 0.0, 1)
    assert probes.default_block_size(model, 2) == 2 and probes.default_block_size(model, 3) == 1


def test_reconstruction_panels_and_errors(model, images):
    rec = probes.reconstruct(model, images, strategy="attention", keep_ratio=0.5, block_size=2)
    size = model.cfg.vision.image_size
    p = model.cfg.vision.patch_size
    for panel in (rec.original, rec.kept, rec.recon, rec.pasted):
        assert panel.shape == (3, 3, size, size) and panel.min() >= 0 and panel.max() <= 1
    pixel_removed = rec.removed.repeat_interleave(p, 1).repeat_interleave(p, 2)[:, None].expand_as(rec.original)
    assert torch.equal(rec.pasted[~pixel_removed], rec.original[~pixel_removed])
    assert torch.equal(rec.pasted[pixel_removed], rec.recon[pixel_removed])
    assert torch.all(rec.kept[pixel_removed] == 0.5)
    # MSE is over removed pixels only, and PSNR follows from it.
    diff = (rec.recon - rec.original).pow(2)
    expected = torch.stack([diff[i][pixel_removed[i]].mean() for i in range(3)])
    torch.testing.assert_close(rec.mse, expected)
    torch.testing.assert_close(rec.psnr, 10 * torch.log10(1 / rec.mse))


def test_random_reconstruction_is_seeded(model, images):
    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return probes.reconstruct(model, images, strategy="random", keep_ratio=0.5, block_size=1, generator=g)

    a, b, c = run(3), run(3), run(4)
    assert torch.equal(a.removed, b.removed) and torch.equal(a.recon, b.recon)
    assert not torch.equal(a.removed, c.removed)


def test_reconstruct_needs_a_decoder(model):
    cfg, _ = load_preset("tiny")
    cfg.vision.depth, cfg.decoder, cfg.head = 1, None, None
    bare = DetailCLIP(cfg).eval()
    with pytest.raises(probes.NoDecoderError):
        probes.reconstruct(bare, torch.zeros(1, 3, 64, 64))


def test_image_batches_report_bad_files_and_fit_any_size(tmp_path, model):
    v = model.cfg.vision
    good = tmp_path / "wide.png"
    Image.fromarray(np.zeros((30, 90, 3), dtype=np.uint8)).save(good)
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    batches = list(batching.iter_image_batches([good, bad, good], image_size=v.image_size, mean=v.mean, std=v.std,
                                          batch_size=2))
    assert [b.paths for b in batches] == [[good], [good]]
    assert batches[0].images.shape == (1, 3, v.image_size, v.image_size)
    assert [p for p, _ in batches[0].errors] == [bad] and "notes.txt" in batches[0].errors[0][1]


def test_core_does_not_import_cli_or_plotting_libraries():
    code = ("import sys, detailclip_cli.core.use.probes, detailclip_cli.core.use.zeroshot, detailclip_cli.core.store.lookup, detailclip_cli.core.store.openclip; "
            "bad = [m for m in ('typer', 'rich', 'matplotlib') if m in sys.modules]; "
            "print(','.join(bad)); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
