"""The ViT's attention contract, DetailCLIP's encoders, and one step of the DetailCLIP objective.

Everything runs on a shrunken ``tiny`` preset (8x8 patch grid, depth 2, small text tower).
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from helpers import small_model_cfg
from detailclip_cli.core.config import TrainConfig, load_preset
from detailclip_cli.core.model.detailclip import DetailCLIP
from detailclip_cli.core.method.objective import DetailCLIPObjective
from detailclip_cli.core.method.teacher import cosine_schedule
from detailclip_cli.core.model.removal import restore_tokens
from detailclip_cli.core.model.vit import Attention, VisionTransformer, reduce_cls_attention

B = 4  # images per view



def small_train_cfg(**changes) -> TrainConfig:
    _, train = load_preset("tiny")
    return dataclasses.replace(train, batch_size=B, **changes)


def _images(n: int = 2, seed: int = 0, size: int = 64) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _text(n: int = B, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 500, (n, 8), generator=torch.Generator().manual_seed(seed))


# -- attention -------------------------------------------------------------------------------


def _manual_attention(attn: Attention, x: torch.Tensor):
    """Plain (non-fused) multi-head attention from the module's own weights."""
    b, n, d = x.shape
    h, hd = attn.heads, attn.head_dim
    qkv = x @ attn.qkv.weight.T + attn.qkv.bias  # (B, N, 3D)
    q, k, v = qkv.split(d, dim=-1)
    q, k, v = (t.reshape(b, n, h, hd).transpose(1, 2) for t in (q, k, v))  # (B, H, N, hd)
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(hd), dim=-1)  # (B, H, N, N)
    out = (weights @ v).transpose(1, 2).reshape(b, n, d)
    return out @ attn.proj.weight.T + attn.proj.bias, weights


def test_attention_matches_manual_attention_and_cls_row():
    torch.manual_seed(0)
    attn = Attention(12, 3).double()
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.5)  # large enough that the softmax is far from uniform
    x = torch.randn(2, 7, 12, dtype=torch.float64)
    out, cls_attn = attn(x, return_cls_attn=True)
    ref_out, ref_weights = _manual_attention(attn, x)
    assert cls_attn.shape == (2, 3, 7)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    assert cls_attn.dtype == torch.float32  # the row is reported in fp32 whatever the compute dtype
    torch.testing.assert_close(cls_attn, ref_weights[:, :, 0].float(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(cls_attn.sum(-1), torch.ones(2, 3))
    assert cls_attn.std() > 0.05  # not a trivially uniform row
    out2, none = attn(x)
    assert none is None and torch.equal(out2, out)


def _permute_split_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """The attention with q, k, v taken by a permute of the (B, N, 3, H, hd) view (timm's way)."""
    b, n, d = x.shape
    q, k, v = attn.qkv(x).reshape(b, n, 3, attn.heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return attn.proj(out.transpose(1, 2).reshape(b, n, d))


def test_attention_gradients_are_bitwise_those_of_the_permute_split():
    """The split along the q/k/v axis saves the backward a copy and changes no bit (float32)."""
    torch.manual_seed(0)
    attn = Attention(192, 3)
    x = torch.randn(4, 37, 192)
    grads = []
    for forward in (lambda t: attn(t)[0], lambda t: _permute_split_attention(attn, t)):
        attn.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        out = forward(xi)
        out.square().sum().backward()
        grads.append([out.detach(), xi.grad] + [p.grad for p in attn.parameters()])
    for ours, reference in zip(*grads):
        assert torch.equal(ours, reference)


@pytest.fixture(scope="module")
def vit() -> VisionTransformer:
    torch.manual_seed(0)
    cfg = small_model_cfg().vision
    model = VisionTransformer(cfg).eval()
    with torch.no_grad():  # sharpen attention so the maps differ between layers and heads
        for blk in model.blocks:
            blk.attn.qkv.weight.mul_(20)
    return model


def test_forward_with_scores_shapes_and_mass(vit):
    images = _images()
    with torch.no_grad():
        tokens, scores = vit.forward_with_scores(images)
        _, attns = vit.forward_tokens(vit.embed_patches(images), return_cls_attn=True)
        full = vit(images)
    assert tokens.shape == (2, 65, 48)
    torch.testing.assert_close(tokens, full)
    assert scores.shape == (2, 64)
    assert bool((scores >= 0).all())
    # each layer/head row sums to 1 over 1 + L tokens; the scores drop the [CLS]->[CLS] part
    cls_self = torch.stack(attns, dim=1)[..., 0].mean(dim=(1, 2))  # (B,)
    assert bool((cls_self > 0).all())
    torch.testing.assert_close(scores.sum(-1), 1 - cls_self)
    assert bool((scores.sum(-1) <= 1).all())


def test_score_layers_reduce_the_per_layer_maps(vit):
    images = _images(seed=1)
    with torch.no_grad():
        per_layer = vit.cls_attention(images)  # (B, depth, H, L)
        _, mean = vit.forward_with_scores(images, "mean")
        _, last = vit.forward_with_scores(images, "last")
        _, first = vit.forward_with_scores(images, 0)
    assert per_layer.shape == (2, 2, 3, 64)
    torch.testing.assert_close(mean, (per_layer[:, 0] + per_layer[:, 1]).mean(1) / 2)
    torch.testing.assert_close(last, per_layer[:, 1].mean(1))
    torch.testing.assert_close(first, per_layer[:, 0].mean(1))
    assert not torch.allclose(first, last)
    assert torch.equal(reduce_cls_attention(per_layer, "-1"), per_layer[:, -1])
    with pytest.raises(ValueError, match="out of range"):
        reduce_cls_attention(per_layer, 2)


def test_forward_tokens_on_a_subset(vit):
    images = _images(seed=2)
    patches = vit.embed_patches(images)  # (B, L, D)
    assert patches.shape == (2, 64, 48)
    ids = torch.tensor([5, 0, 63, 17, 42, 8, 9, 30, 31, 50])
    with torch.no_grad():
        out, attns = vit.forward_tokens(patches[:, ids], return_cls_attn=True)
        shuffled, _ = vit.forward_tokens(patches[:, ids.flip(0)])
    assert out.shape == (2, 11, 48)
    assert len(attns) == 2 and attns[0].shape == (2, 3, 11)
    # without positional terms added later, the [CLS] output does not depend on token order
    torch.testing.assert_close(shuffled[:, 0], out[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shuffled[:, 1:], out[:, 1:].flip(1), rtol=1e-5, atol=1e-5)


def test_forward_cls_equals_the_full_forwards_cls_token(vit):
    vit = copy.deepcopy(vit).double()  # float64: the two orders of work agree to rounding far below any tolerance that matters
    images = _images(n=3, seed=4).double()
    with torch.no_grad():
        full = vit(images)[:, 0]  # (B, D)
        torch.testing.assert_close(vit.forward_cls(images), full, rtol=0, atol=1e-12)
        bigger = _images(n=1, seed=5, size=80).double()  # another grid: the position embedding resampled
        tokens, _ = vit.forward_tokens(vit.embed_patches(bigger, interpolate_pos=True))
        torch.testing.assert_close(vit.forward_cls(bigger, interpolate_pos=True), tokens[:, 0], rtol=0, atol=1e-12)


def test_encode_image_reads_the_cls_token_of_the_full_forward(model):
    images = _images(n=2, seed=6)
    with torch.no_grad():
        full = torch.nn.functional.normalize(model.image_proj(model.visual(images)[:, 0]), dim=-1)
        torch.testing.assert_close(model.encode_image(images), full, rtol=0, atol=1e-6)


def test_embed_patches_rejects_the_wrong_image_size(vit):
    with pytest.raises(ValueError, match="64x64"):
        vit.embed_patches(_images(size=48))


# -- DetailCLIP ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> DetailCLIP:
    torch.manual_seed(0)
    return DetailCLIP(small_model_cfg()).eval()


def test_encoders_give_unit_norm_embeddings(model):
    with torch.no_grad():
        img = model.encode_image(_images(3))
        txt = model.encode_text(_text(3))
        raw = model.encode_image(_images(3), normalize=False)
    assert img.shape == (3, 32) and txt.shape == (3, 32)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(img, raw / raw.norm(dim=-1, keepdim=True))
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(3))


def test_logit_scale_init_and_clamp():
    m = DetailCLIP(small_model_cfg(init_logit_scale=math.log(1 / 0.07)))
    assert m.scale().item() == pytest.approx(1 / 0.07, rel=1e-6)
    with torch.no_grad():
        m.logit_scale.fill_(math.log(1000.0))
    assert m.scale().item() == 100.0
    m2 = DetailCLIP(small_model_cfg(max_logit_scale=50.0, init_logit_scale=10.0))
    assert m2.scale().item() == 50.0


def test_image_tower_and_param_counts(model):
    assert set(model.image_tower().keys()) == {"visual", "head"}
    no_head = DetailCLIP(small_model_cfg(head=None, decoder=None))
    assert set(no_head.image_tower().keys()) == {"visual"}
    assert no_head.decoder is None and no_head.head is None
    counts = model.num_params()
    parts = sum(v for k, v in counts.items() if k != "total")
    assert counts["total"] == parts + 1  # + logit_scale
    assert counts["image_proj"] == 48 * 32


# -- the objective ---------------------------------------------------------------------------


def _objective(model_changes=None, train_changes=None, seed: int = 0) -> DetailCLIPObjective:
    torch.manual_seed(seed)
    model = DetailCLIP(small_model_cfg(**(model_changes or {})))
    return DetailCLIPObjective(model, small_train_cfg(**(train_changes or {}))).train()


def _step(obj: DetailCLIPObjective, step: int = 0):
    return obj(_images(B, seed=10), _images(B, seed=11), _text(), step=step)


WEIGHTS = {"w_clip": 0.5, "w_rec": 2.0, "w_cls": 0.3, "w_patch": 1.5}


@pytest.mark.parametrize(
    "model_changes, train_changes, keys",
    [
        ({}, {}, {"clip", "rec", "cls", "patch"}),
        ({}, {"removal": "random"}, {"clip", "rec", "cls", "patch"}),
        ({"decoder": None}, {}, {"clip", "cls", "patch"}),
        ({"head": None}, {"removal": "random"}, {"clip", "rec"}),
    ],
    ids=["attention", "random", "no-decoder", "no-head"],
)
def test_one_step_gives_every_student_parameter_a_gradient(model_changes, train_changes, keys):
    obj = _objective(model_changes, {**WEIGHTS, **train_changes})
    losses = _step(obj)
    assert set(losses) == keys | {"loss"}
    weights = {"clip": 0.5, "rec": 2.0, "cls": 0.3, "patch": 1.5}
    expected = sum(weights[k] * losses[k] for k in keys)
    torch.testing.assert_close(losses["loss"], expected)
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    missing = [n for n, p in obj.model.named_parameters()
               if p.requires_grad and (p.grad is None or not bool(p.grad.abs().sum() > 0))]
    assert missing == []
    if obj.teacher is not None:
        assert all(not p.requires_grad and p.grad is None for p in obj.teacher.parameters())
        assert not obj.teacher.training


def test_without_head_decoder_or_removal_only_clip_remains():
    obj = _objective({"head": None, "decoder": None}, {"removal": "none", "w_clip": 0.7})
    assert obj.teacher is None and obj.cls_loss is None and obj.patch_loss is None
    losses = _step(obj)
    assert set(losses) == {"clip", "loss"}
    torch.testing.assert_close(losses["loss"], 0.7 * losses["clip"])
    # nothing is removed: the student sees all 64 patches
    r = obj.remove(obj.model.visual.embed_patches(_images(B)), None, step=0)
    assert r.kept.shape[1] == 64 and not bool(r.mask.any())


@pytest.mark.parametrize(
    "model_changes, removal, has_teacher",
    [
        ({}, "attention", True),
        ({"head": None}, "attention", True),
        ({}, "random", True),
        ({"head": None}, "random", False),
        ({}, "none", True),
        ({"head": None}, "none", False),
    ],
)
def test_teacher_exists_only_when_it_has_work(model_changes, removal, has_teacher):
    obj = _objective(model_changes, {"removal": removal})
    assert (obj.teacher is not None) == has_teacher
    if has_teacher:
        expected = {"visual", "head"} if obj.model.head is not None else {"visual"}
        assert set(obj.teacher.keys()) == expected


def test_random_removal_is_seeded_by_seed_and_step():
    obj = _objective({"head": None}, {"removal": "random", "seed": 3})
    patches = obj.model.visual.embed_patches(_images(B)).detach()
    a = obj.remove(patches, None, step=5)
    b = obj.remove(patches, None, step=5)
    c = obj.remove(patches, None, step=6)
    assert torch.equal(a.mask, b.mask) and not torch.equal(a.mask, c.mask)
    assert a.kept.shape == (B, 36, 48)  # 16 blocks of 2x2: floor(8) + 1 = 9 kept


def test_attention_removal_keeps_the_teachers_top_blocks():
    obj = _objective()
    images = torch.cat([_images(B, seed=10), _images(B, seed=11)])
    _, scores = obj.teacher_pass(images)
    _, ref = obj.teacher.visual.forward_with_scores(images, "mean")
    torch.testing.assert_close(scores, ref)
    r = obj.remove(obj.model.visual.embed_patches(images), scores, step=0)
    block_means = torch.nn.functional.avg_pool2d(scores.reshape(-1, 1, 8, 8), 2).reshape(-1, 16)
    kept_blocks = (~r.mask).reshape(-1, 4, 2, 4, 2)[:, :, 0, :, 0].reshape(-1, 16)
    for i in range(2 * B):
        top = set(torch.sort(block_means[i], descending=True).indices[:9].tolist())  # floor(16 * 0.5) + 1
        assert set(kept_blocks[i].nonzero().flatten().tolist()) == top


def test_patch_temperature_is_004_through_the_first_epoch_and_007_after():
    # an epoch of 30 steps, as new_configs fixes it from the data (None = one epoch)
    cfg = small_train_cfg(steps=100, teacher_temp_warmup_steps=None).with_epoch_length(30)
    obj = DetailCLIPObjective(DetailCLIP(small_model_cfg()), cfg)
    assert [obj.teacher_temp_patch(s) for s in (0, 15, 29)] == [0.04, 0.04, 0.04]
    assert [obj.teacher_temp_patch(s) for s in (30, 31, 99)] == [0.07, 0.07, 0.07]


def test_patch_temperature_without_warmup_is_constant():
    obj = _objective(train_changes={"steps": 100, "teacher_temp_warmup_steps": 0})
    assert obj.teacher_temp_patch(0) == 0.07
    assert obj.teacher_temp_patch(50) == 0.07


def test_update_teacher_moves_it_towards_the_student():
    # every part moves here (the frozen patch embedding is copied instead: test_teacher.py)
    obj = _objective(train_changes={"steps": 10, "momentum_base": 0.9, "freeze_patch_embed": False})
    with torch.no_grad():  # stand in for an optimiser step
        for p in obj.model.image_tower().parameters():
            p.add_(0.01 * torch.randn_like(p))
    before = [p.clone() for p in obj.teacher.parameters()]
    student = [p.detach().clone() for p in obj.model.image_tower().parameters()]
    m = obj.update_teacher(step=5)
    assert m == pytest.approx(cosine_schedule(5, 10, 0.9, 1.0)) and m == pytest.approx(0.95)
    dist_before = sum((t - s).pow(2).sum() for t, s in zip(before, student))
    dist_after = sum((t - s).pow(2).sum() for t, s in zip(obj.teacher.parameters(), student))
    assert dist_before > 0
    torch.testing.assert_close(dist_after, m**2 * dist_before, rtol=1e-4, atol=0)
    for t0, s, t in zip(before, student, obj.teacher.parameters()):
        torch.testing.assert_close(t, m * t0 + (1 - m) * s)
    assert obj.update_teacher(step=10) == 1.0


def test_teacher_stays_in_eval_mode():
    obj = _objective()
    obj.train()
    assert obj.model.training and not obj.teacher.training
    obj.eval()
    assert not obj.model.training and not obj.teacher.training


@pytest.mark.parametrize("keep_ratio", [0.5, 1.0])
def test_distill_losses_equal_the_full_grid_computation(keep_ratio):
    """Running the student head on [CLS] + removed positions only gives the losses (and centre)
    of running it on the whole grid and counting the removed positions by mask."""
    from detailclip_cli.core.method.losses import ClsDistillLoss, PatchDistillLoss

    obj = _objective(train_changes={"keep_ratio": keep_ratio})
    images = torch.cat([_images(B, seed=10), _images(B, seed=11)])
    teacher_tokens, scores = obj.teacher_pass(images)
    removal = obj.remove(obj.model.visual.embed_patches(images), scores, step=0)
    student_tokens = torch.randn(2 * B, 65, 48, generator=torch.Generator().manual_seed(4))
    student_cls = torch.randn(2 * B, 48, generator=torch.Generator().manual_seed(5))
    got = obj.distill_losses(student_tokens, student_cls, teacher_tokens, removal, step=0)

    # The [CLS] row is the encoder's [CLS] given separately, not the decoder's row 0.
    s_out = obj.model.head(torch.cat([student_cls.unsqueeze(1), student_tokens[:, 1:]], dim=1))
    t_out = obj.teacher.head(teacher_tokens)
    cls_ref = ClsDistillLoss(64, obj.cfg.center_momentum)
    patch_ref = PatchDistillLoss(64, obj.cfg.center_momentum)
    shape = (2, B, -1)
    want_cls = cls_ref(teacher_out=t_out[:, 0].reshape(shape), student_out=s_out[:, 0].reshape(shape),
                       teacher_temp=obj.cfg.teacher_temp_cls, student_temp=obj.cfg.student_temp)
    want_patch = patch_ref(teacher_out=t_out[:, 1:], student_out=s_out[:, 1:], mask=removal.mask,
                           teacher_temp=obj.teacher_temp_patch(0), student_temp=obj.cfg.student_temp)
    torch.testing.assert_close(got["cls"], want_cls)
    torch.testing.assert_close(got["patch"], want_patch)
    torch.testing.assert_close(obj.patch_loss.center, patch_ref.center)  # every patch, not the counted ones
    assert bool(removal.mask.any()) == (keep_ratio < 1.0)


def test_conv_stem_tokens_and_config_checks():
    from detailclip_cli.core.config import ConfigError

    cfg = small_model_cfg()
    vit = VisionTransformer(dataclasses.replace(cfg.vision, stem="conv"))
    # three stride-2 stages (8 px patches), channels doubling up to width / 2, then 1x1 to width
    convs = [m for m in vit.patch_embed.body if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride) for c in convs] == [(3, 8, (2, 2)), (8, 12, (2, 2)), (12, 24, (2, 2))]
    assert vit.patch_embed.proj.out_channels == 48
    assert vit.embed_patches(_images(2)).shape == (2, 64, 48)
    # a token depends on its own patch and a few neighbouring pixels, not on the far side
    x = _images(1)
    y = x.clone()
    y[..., 40:, 40:] += 1.0
    a, b = vit.patch_embed(x), vit.patch_embed(y)
    torch.testing.assert_close(a[:, 0], b[:, 0])  # top-left patch: unchanged
    assert not torch.allclose(a[:, 63], b[:, 63])
    # a per-pixel norm: an image's tokens do not depend on the rest of the batch
    torch.testing.assert_close(vit.patch_embed(torch.cat([x, y]))[:1], a)
    for bad, msg in [({"stem": "resnet"}, "stem must be patch or conv"),
                     ({"stem": "conv", "patch_size": 6, "image_size": 60}, "power-of-two patch_size")]:
        with pytest.raises(ConfigError, match=msg):
            dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, **bad)).validate()


def test_cls_loss_reads_the_encoders_cls_and_sends_no_gradient_to_the_decoder():
    """The iBOT [CLS] loss is computed from the encoder's [CLS] (as the authors wire it): its
    gradient with respect to every decoder parameter is exactly zero, it reaches the encoder,
    and its value equals the loss computed by hand from the encoder's [CLS] token."""
    from detailclip_cli.core.method import stages
    from detailclip_cli.core.method.losses import ClsDistillLoss

    obj = _objective()
    images = torch.cat([_images(B, seed=20), _images(B, seed=21)])
    teacher_tokens, scores = obj.teacher_pass(images)
    latent, removal = stages.encode_student(obj.model, obj.cfg, images, scores, 0, None)
    _, features = stages.reconstruct(obj.model, obj.cfg, images, latent, removal)
    assert features is not None and removal.mask.any()
    ref = ClsDistillLoss(64, obj.cfg.center_momentum)
    ref.load_state_dict(obj.cls_loss.state_dict())  # the same centre before the call
    losses = obj.distill_losses(features, latent[:, 0], teacher_tokens, removal, step=0)

    obj.model.zero_grad(set_to_none=True)
    losses["cls"].backward(retain_graph=True)
    decoder_grads = [p.grad for p in obj.model.decoder.parameters()]
    assert all(g is None or bool((g == 0).all()) for g in decoder_grads)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in obj.model.visual.parameters())

    with torch.no_grad():
        shape = (2, B, -1)
        want = ref(teacher_out=obj.teacher.head(teacher_tokens)[:, 0].reshape(shape),
                   student_out=obj.model.head(latent[:, 0]).reshape(shape),
                   teacher_temp=obj.cfg.teacher_temp_cls, student_temp=obj.cfg.student_temp)
    torch.testing.assert_close(losses["cls"].detach(), want)


# -- the authors' recipe settings ------------------------------------------------------------


def test_frozen_patch_embedding_gets_no_update_and_the_teacher_keeps_it_equal():
    from detailclip_cli.core.training.optim import build_optimizer

    obj = _objective(train_changes={"steps": 10, "momentum_base": 0.5, "lr": 1e-2})
    patch = dict(obj.model.visual.patch_embed.named_parameters())
    assert set(patch) == {"proj.weight", "proj.bias"} and not any(p.requires_grad for p in patch.values())
    start = {k: p.clone() for k, p in patch.items()}
    optimizer = build_optimizer(obj, obj.cfg)
    optimised = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not optimised & {id(p) for p in patch.values()}  # out of the optimiser
    assert id(obj.model.visual.cls_token) in optimised  # the rest trains
    cls_before = obj.model.visual.cls_token.clone()
    for step in range(2):
        optimizer.zero_grad()
        _step(obj, step)["loss"].backward()
        optimizer.step()
        obj.update_teacher(step)
    assert not torch.equal(cls_before, obj.model.visual.cls_token)
    teacher_patch = dict(obj.teacher.visual.patch_embed.named_parameters())
    for k, p in patch.items():
        assert torch.equal(p, start[k]) and torch.equal(teacher_patch[k], p)  # bit for bit


def test_unfrozen_or_conv_stem_patch_embedding_trains():
    obj = _objective(train_changes={"freeze_patch_embed": False})
    assert all(p.requires_grad for p in obj.model.visual.patch_embed.parameters())
    conv = _objective({"vision": dataclasses.replace(small_model_cfg().vision, stem="conv")})
    assert all(p.requires_grad for p in conv.model.visual.patch_embed.parameters())  # a conv stem learns


def test_decoder_as_wide_as_the_encoder_has_no_bridge_and_feeds_the_head_its_tokens():
    from detailclip_cli.core.config import DecoderConfig

    wide = DetailCLIP(small_model_cfg(decoder=DecoderConfig(width=48, depth=1, heads=3)))
    narrow = DetailCLIP(small_model_cfg())  # decoder 32 wide, encoder 48: bridged
    assert wide.decoder.to_features is None and not any("to_features" in k for k in wide.state_dict())
    assert isinstance(narrow.decoder.to_features, torch.nn.Linear) and narrow.decoder.to_features.out_features == 48
    latent, ids_restore = torch.randn(2, 1 + 16, 48), torch.stack([torch.randperm(64) for _ in range(2)])
    pred, features = wide.decoder(latent, ids_restore)
    assert pred.shape == (2, 64, 8 * 8 * 3) and features.shape == (2, 65, 48)
    # the features are the decoder's normalised tokens themselves
    d = wide.decoder
    x = torch.cat([d.embed(latent)[:, :1], restore_tokens(d.embed(latent)[:, 1:], ids_restore, d.mask_token)], 1)
    x = x + d.pos_embed
    for blk in d.blocks:
        x, _ = blk(x)
    torch.testing.assert_close(features, d.norm(x))
    assert DetailCLIP(small_model_cfg(head=None, decoder=DecoderConfig(width=48, heads=3))).decoder(
        latent, ids_restore)[1] is None  # no head, no features
