"""DINO, BYOL and SimCLR (``distill --method``): their losses against hand-computed values,
BYOL's stop-gradient, predictor and EMA target, SimCLR's temperature and negatives."""

from __future__ import annotations

import math

import pytest
import torch

from detailclip_cli.core.config import ConfigError, ModelConfig, TrainConfig, load_preset
from detailclip_cli.core.method.distill import SelfDistillObjective
from detailclip_cli.core.method.losses import ClsDistillLoss, byol_loss, loss_weights
from detailclip_cli.core.method.selfsup import ByolObjective, DinoObjective, SimCLRObjective, multi_crop_cls_loss
from detailclip_cli.core.model.detailclip import DetailCLIP


def tiny(**train) -> tuple[ModelConfig, TrainConfig]:
    """The tiny preset, shallower, without decoder or removal, small MLPs: a forward in milliseconds."""
    model_cfg, train_cfg = load_preset("tiny")
    model_cfg.vision.depth, model_cfg.head.out_dim, model_cfg.decoder = 2, 64, None
    train_cfg = TrainConfig.from_dict({**train_cfg.to_dict(), "removal": "none", "ssl_mlp_dim": 32,
                                       "ssl_emb_dim": 16, "steps": 10, **train})
    return model_cfg, train_cfg


def views(batch: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 64, 64, generator=g), torch.randn(batch, 3, 64, 64, generator=g)


# -- the losses, by hand ---------------------------------------------------------------------------


def test_byol_loss_hand_computed():
    # Online predictions of view 0 and 1 point along x and y; the target projections along the
    # diagonal (view 0) and x (view 1). Lengths do not matter: both sides are normalised.
    pred = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]]], requires_grad=True)  # (V, B, E) = (2, 1, 2)
    target = torch.tensor([[[1.0, 1.0]], [[3.0, 0.0]]], requires_grad=True)
    # pred 1 vs target 0: 2 - 2 cos 45 deg = 2 - sqrt 2; pred 0 vs target 1: same direction, 0.
    expected = ((2 - math.sqrt(2)) + 0.0) / 2
    loss = byol_loss(online_pred=pred, target_proj=target)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    assert target.grad is None  # stop-gradient: the target side is a constant
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    # Opposite directions give the maximum 4; a prediction of each other's view exactly, 0.
    assert byol_loss(online_pred=-target.detach(), target_proj=target.detach().flip(0)).item() == pytest.approx(4.0)
    assert byol_loss(online_pred=target.detach().flip(0), target_proj=target.detach()).item() == pytest.approx(0.0, abs=1e-6)


def test_dino_multi_crop_loss_hand_computed():
    ln3 = math.log(3)
    teacher = torch.tensor([[[0.0, ln3]], [[0.0, 0.0]]])  # (V, B, C): q0 = (1/4, 3/4), q1 = (1/2, 1/2)
    student = torch.tensor([[[0.0, 0.0]], [[ln3, 0.0]]])  # p0 = (1/2, 1/2), p1 = (3/4, 1/4)
    local = torch.tensor([[[0.0, ln3]]])  # (N, B, C) = (1, 1, 2): p = (1/4, 3/4)

    def h(q, p):
        return -sum(qi * math.log(pi) for qi, pi in zip(q, p))

    q0, q1, p0, p1, pl = (0.25, 0.75), (0.5, 0.5), (0.5, 0.5), (0.75, 0.25), (0.25, 0.75)
    # Teacher view 0 -> student view 1, teacher 1 -> student 0 (never the same view), each
    # teacher view -> the local crop: four pairs, weighed alike.
    expected = (h(q0, p1) + h(q1, p0) + h(q0, pl) + h(q1, pl)) / 4
    cls_loss = ClsDistillLoss(2, center_momentum=0.9)
    got = multi_crop_cls_loss(cls_loss, teacher_out=teacher, student_out=student, local_out=local,
                              teacher_temp=1.0, student_temp=1.0)
    assert got.item() == pytest.approx(expected, abs=1e-6)
    # The centre moved once, by the global views' mean teacher logits (0.1 x (0, ln 3 / 2)).
    assert torch.allclose(cls_loss.center, torch.tensor([[0.0, 0.1 * ln3 / 2]]))
    # Without local crops: the two global pairs alone, now read against the moved centre.
    c = cls_loss.center[0].tolist()
    expected_global = (_ce(teacher[0, 0], student[1, 0], c) + _ce(teacher[1, 0], student[0, 0], c)) / 2
    got = multi_crop_cls_loss(cls_loss, teacher_out=teacher, student_out=student, local_out=None,
                              teacher_temp=1.0, student_temp=1.0)
    assert got.item() == pytest.approx(expected_global, abs=1e-6)


def _ce(teacher: torch.Tensor, student: torch.Tensor, center: list[float]) -> float:
    """H(softmax(t - c), softmax(s)) with math only (temperatures 1)."""
    def softmax(xs):
        e = [math.exp(x) for x in xs]
        return [v / sum(e) for v in e]

    q = softmax([t - c for t, c in zip(teacher.tolist(), center)])
    p = softmax(student.tolist())
    return -sum(qi * math.log(pi) for qi, pi in zip(q, p))


def test_new_terms_have_weights():
    cfg = TrainConfig(w_cls=0.5)
    weights = loss_weights(cfg)
    assert weights["dino"] == 0.5 and weights["byol"] == 1.0 and weights["simclr"] == 1.0


# -- BYOL --------------------------------------------------------------------------------------------


def test_byol_objective_loss_predictor_and_stop_gradient():
    torch.manual_seed(0)
    model_cfg, train_cfg = tiny()
    objective = ByolObjective(DetailCLIP(model_cfg), train_cfg).train()
    v1, v2 = views()
    out = objective(v1, v2, step=0)
    assert set(out) == {"byol", "loss"}
    # The same loss by hand: online [CLS] -> projector -> predictor, target [CLS] -> its projector.
    with torch.no_grad():
        images = torch.cat([v1, v2])
        pred = objective.predictor(objective.projector(objective.model.visual(images)[:, 0]))  # (VB, E)
        target = objective.teacher.projector(objective.teacher.visual(images)[:, 0])
        pred, target = pred.reshape(2, 4, -1), target.reshape(2, 4, -1)
        cos = torch.nn.functional.cosine_similarity
        expected = ((2 - 2 * cos(pred[1], target[0], dim=-1)).mean() + (2 - 2 * cos(pred[0], target[1], dim=-1)).mean()) / 2
    assert out["byol"].item() == pytest.approx(expected.item(), abs=1e-5)

    out["loss"].backward()
    teacher_params = list(objective.teacher.named_parameters())
    assert teacher_params and all(not p.requires_grad and p.grad is None for _, p in teacher_params)
    online = [*objective.model.visual.named_parameters(), *objective.projector.named_parameters(),
              *objective.predictor.named_parameters()]
    for name, p in online:
        if p.requires_grad:  # all but the patch embedding, frozen at its initialisation by default
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    # The predictor is online only: the target mirrors the ViT and the projector.
    assert {k.split(".")[0] for k, _ in teacher_params} == {"visual", "projector"}
    # Only the image tower learns; the text tower, projection and logit scale stay as built.
    assert all(p.grad is None for p in objective.model.text.parameters())


def test_byol_ema_moves_the_target_towards_the_online_network():
    torch.manual_seed(0)
    model_cfg, train_cfg = tiny(momentum_base=0.9)
    objective = ByolObjective(DetailCLIP(model_cfg), train_cfg)
    target = objective.teacher.projector.net[0].weight
    before = target.clone()
    assert torch.equal(before, objective.projector.net[0].weight)  # the target starts as a copy
    with torch.no_grad():
        objective.projector.net[0].weight.add_(1.0)  # as an optimiser step would move it
    momentum = objective.update_teacher(0)
    assert momentum == pytest.approx(0.9)
    torch.testing.assert_close(target, 0.9 * before + 0.1 * objective.projector.net[0].weight)
    assert not torch.equal(target, before)
    objective.cfg.momentum_base = objective.cfg.momentum_final = 1.0
    frozen = target.clone()
    objective.update_teacher(5)
    assert torch.equal(target, frozen)  # momentum 1: the target stays


# -- SimCLR --------------------------------------------------------------------------------------------


def test_simclr_objective_is_nt_xent_of_its_projections_at_temperature_0_1():
    torch.manual_seed(0)
    model_cfg, train_cfg = tiny()
    assert TrainConfig().ssl_temp == 0.1
    objective = SimCLRObjective(DetailCLIP(model_cfg), train_cfg)
    v1, v2 = views()
    out = objective(v1, v2, step=0)
    assert set(out) == {"simclr", "loss"}
    with torch.no_grad():
        z = objective.project(torch.cat([v1, v2]), step=0, shard=None)[2]
    rows = torch.nn.functional.normalize(torch.cat([z["z0"], z["z1"]]), dim=-1).tolist()  # 2B views
    n, t = len(rows), 0.1
    expected = 0.0
    for i in range(n):
        partner = (i + n // 2) % n
        sims = {j: sum(a * b for a, b in zip(rows[i], rows[j])) / t for j in range(n) if j != i}
        expected += -(sims[partner] - math.log(sum(math.exp(s) for s in sims.values())))
    assert out["simclr"].item() == pytest.approx(expected / n, abs=1e-4)
    assert objective.teacher is None and objective.update_teacher(0) == 1.0


def test_simclr_refuses_attention_removal():
    model_cfg, train_cfg = tiny(removal="attention")
    with pytest.raises(ConfigError, match="no teacher whose attention"):
        SimCLRObjective(DetailCLIP(model_cfg), train_cfg)


# -- DINO ----------------------------------------------------------------------------------------------


def test_dino_objective_local_crops_and_gradients():
    torch.manual_seed(0)
    model_cfg, train_cfg = tiny()
    objective = DinoObjective(DetailCLIP(model_cfg), train_cfg).train()
    v1, v2 = views()
    local = torch.randn(4, 2, 3, 32, 32)
    out = objective(v1, v2, step=0, local_views=local)
    assert set(out) == {"dino", "loss"}  # [CLS] only: no patch term
    out["loss"].backward()
    assert all(p.grad is None for p in objective.teacher.parameters())
    assert objective.model.head.mlp[0].weight.grad.abs().sum() > 0
    assert 0 < objective.stats["teacher_entropy"].item() < math.log(64)
    # The objective's state besides the model: the teacher and the [CLS] centre, no patch centre.
    assert {k.split(".")[0] for k in objective.state_dict() if not k.startswith("model.")} == {"teacher", "cls_loss"}


def test_dino_needs_the_head():
    model_cfg, train_cfg = tiny()
    model_cfg.head = None
    with pytest.raises(ConfigError, match="dino needs the distillation head"):
        DinoObjective(DetailCLIP(model_cfg), train_cfg)


def test_ibot_state_keys_are_unchanged():
    """Runs saved before --method resume: the iBOT objective's state keeps its names."""
    model_cfg, train_cfg = tiny()
    objective = SelfDistillObjective(DetailCLIP(model_cfg), train_cfg)
    keys = [k for k in objective.state_dict() if not k.startswith("model.")]
    assert {k.split(".")[0] for k in keys} == {"teacher", "cls_loss", "patch_loss"}
    assert "cls_loss.center" in keys and "patch_loss.center" in keys and "teacher.head.prototypes" in keys
