"""open_clip -> DetailCLIP conversion: the same embeddings, and a clear refusal for what does not map."""

from __future__ import annotations

import open_clip
import pytest
import torch
from helpers import register

from detailclip_cli.core.store.io import ModelLoadError, load_model, save_model
from detailclip_cli.core.store.lookup import resolve_model
from detailclip_cli.core.store.openclip import from_open_clip
from detailclip_cli.core.use.zeroshot import build_classifier


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A random tiny OpenAI-style (QuickGELU) open_clip model saved as a torch state dict."""
    tmp = tmp_path_factory.mktemp("openclip")
    name = register(tmp, "detailclip-test-tiny-qg", quick_gelu=True)
    torch.manual_seed(0)
    model = open_clip.create_model(name)
    with torch.no_grad():
        model.logit_scale.fill_(3.1)  # not the init value, so the copy is visible
    weights = tmp / "tiny.pt"
    torch.save(model.state_dict(), weights)
    return name, weights


def reference(name, weights):
    return open_clip.create_model(name, pretrained=str(weights)).eval()


def test_embeddings_match_open_clip(tiny_weights):
    name, weights = tiny_weights
    ours = resolve_model(f"open_clip:{name}", pretrained=str(weights))
    theirs = reference(name, weights)
    images = torch.randn(3, 3, 32, 32)
    text = open_clip.tokenize(["a photo of a cat", "a dog", ""])
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(images, normalize=False), theirs.encode_image(images),
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.encode_text(ours.tokenize(["a photo of a cat", "a dog", ""]),
                                                    normalize=False), theirs.encode_text(text), atol=1e-5, rtol=0)
    assert ours.logit_scale.item() == pytest.approx(3.1)
    cfg = ours.cfg
    assert cfg.decoder is None and cfg.head is None
    assert (cfg.vision.act, cfg.text.act) == ("quick_gelu", "quick_gelu")
    assert cfg.vision.pre_norm and cfg.vision.norm_eps == 1e-5 and not cfg.vision.patch_bias
    assert cfg.vision.mean == pytest.approx(open_clip.OPENAI_DATASET_MEAN)


def test_gelu_model_and_safetensors_weights(tmp_path):
    from safetensors.torch import save_file

    name = register(tmp_path, "detailclip-test-tiny-gelu")
    torch.manual_seed(1)
    model = open_clip.create_model(name)
    weights = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    ours = resolve_model(f"open_clip:{name}", pretrained=str(weights))
    assert ours.cfg.vision.act == "gelu" and ours.cfg.text.act == "gelu"
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(images), model.eval().encode_image(images, normalize=True),
                                   atol=1e-5, rtol=0)


def test_converted_model_saves_and_reloads(tiny_weights, tmp_path):
    name, weights = tiny_weights
    ours = resolve_model(f"open_clip:{name}", pretrained=str(weights))
    save_model(ours, tmp_path / "converted")
    again = load_model(tmp_path / "converted")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again.encode_image(images), ours.encode_image(images), atol=1e-6, rtol=0)


def test_zero_shot_classifier_matches_open_clip(tiny_weights):
    from open_clip import build_zero_shot_classifier

    name, weights = tiny_weights
    ours = resolve_model(f"open_clip:{name}", pretrained=str(weights))
    theirs = reference(name, weights)
    labels = ["cat", "dog", "golden_retriever"]
    templates = list(open_clip.SIMPLE_IMAGENET_TEMPLATES)
    expected = build_zero_shot_classifier(theirs, open_clip.get_tokenizer(name), [x.replace("_", " ") for x in labels],
                                          templates, num_classes_per_batch=2)  # (E, C)
    got = build_classifier(ours, labels, templates, batch_size=4)  # (C, E)
    torch.testing.assert_close(got, expected.T, atol=1e-5, rtol=0)


@pytest.mark.parametrize("changes, words", [
    ({"vision_cfg": {"pool_type": "avg"}}, "pools with 'avg'"),
    ({"vision_cfg": {"attentional_pool": True, "attn_pooler_heads": 2, "attn_pooler_queries": 4}},
     "attentional pooling"),
    ({"vision_cfg": {"layers": [1, 1, 1, 1], "width": 16}}, "ModifiedResNet"),
    ({"vision_cfg": {"ls_init_value": 0.1}}, "layer scale"),
    ({"text_cfg": {"pool_type": "last"}, "custom_text": True}, "pools with 'last'"),
])
def test_architectures_that_do_not_map_are_refused(tmp_path, changes, words):
    name = register(tmp_path, f"detailclip-test-bad-{abs(hash(words)) % 10**8}", **changes)
    with pytest.raises(ModelLoadError) as info:
        from_open_clip(open_clip.create_model(name), name=name)
    message = str(info.value)
    assert name in message and words in message and "\n" not in message


def test_unknown_name_and_missing_weights_are_one_line_errors(tiny_weights, tmp_path):
    with pytest.raises(ModelLoadError, match="unknown open_clip model 'no-such-arch'"):
        resolve_model("open_clip:no-such-arch")
    name, _ = tiny_weights
    with pytest.raises(ModelLoadError) as info:
        resolve_model(f"open_clip:{name}", pretrained=str(tmp_path / "missing.pt"))
    assert name in str(info.value) and "\n" not in str(info.value)


class _Payload:
    """Unpickling this would create a file: the proof that a pickle ran code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_that_would_run_code_is_refused_and_not_run(tiny_weights, tmp_path):
    name, _ = tiny_weights
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": _Payload(marker)}}, evil)
    assert not marker.exists()
    with pytest.raises(ModelLoadError) as info:
        resolve_model(f"open_clip:{name}", pretrained=str(evil))
    assert not marker.exists()
    assert "evil.pt" in str(info.value) or name in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_hub_tags_respect_hf_hub_offline(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    result = subprocess.run(
        [sys.executable, "-m", "detailclip_cli", "zero-shot", str(image), "--labels", "a,b",
         "--model", "open_clip:ViT-B-32", "--pretrained", "laion2b_s34b_b79k"],
        capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot load open_clip model 'ViT-B-32'"), result.stderr
    assert "Traceback" not in result.stderr
