"""Losses against hand-computed values and open_clip's ClipLoss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from open_clip import ClipLoss

from detailclip_cli.core.config import TrainConfig
from detailclip_cli.core.method.losses import (
    ClsDistillLoss,
    PatchDistillLoss,
    clip_loss,
    cls_cosine_loss,
    cosine_distance,
    entropy,
    kept_patch_cosine_loss,
    loss_weights,
    patchify,
    pooled_mean,
    reconstruction_loss,
    removed_patch_cosine_loss,
    unpatchify,
    weighted_total,
)

# -- plain-Python references ----------------------------------------------------------------


def _softmax(xs: list[float]) -> list[float]:
    top = max(xs)
    e = [math.exp(x - top) for x in xs]
    return [v / sum(e) for v in e]


def _ce(teacher: list[float], student: list[float], center: list[float], tt: float, st: float) -> float:
    """H(softmax((t - c) / tt), softmax(s / st)) computed with math only."""
    q = _softmax([(t - c) / tt for t, c in zip(teacher, center)])
    p = _softmax([s / st for s in student])
    return -sum(qi * math.log(pi) for qi, pi in zip(q, p))


# -- CLIP ------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 5, 16])
def test_clip_loss_matches_open_clip(batch):
    g = torch.Generator().manual_seed(batch)
    img = F.normalize(torch.randn(batch, 32, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(torch.randn(batch, 32, generator=g, dtype=torch.float64), dim=-1)
    scale = torch.tensor(1 / 0.07, dtype=torch.float64)
    ours = clip_loss(img, txt, scale)
    ref = ClipLoss()(img, txt, scale)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_clip_loss_hand_computed_2x2():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    s = 2.0
    # logits = s * img @ txt.T = s * [[1, 0.6], [0, 0.8]]
    image_to_text = [math.log1p(math.exp(s * (0.6 - 1.0))), math.log1p(math.exp(s * (0.0 - 0.8)))]
    text_to_image = [math.log1p(math.exp(s * (0.0 - 1.0))), math.log1p(math.exp(s * (0.6 - 0.8)))]
    expected = 0.5 * (sum(image_to_text) / 2 + sum(text_to_image) / 2)
    got = clip_loss(img, txt, torch.tensor(s, dtype=torch.float64))
    assert got.item() == pytest.approx(expected, rel=1e-12)


# -- pixels ----------------------------------------------------------------------------------


@pytest.mark.parametrize("hw", [(4, 4), (4, 6), (16, 8)])
def test_patchify_pixel_positions_and_round_trip(hw):
    h, w = hw
    p = 2
    images = torch.randn(2, 3, h, w)
    patches = patchify(images, p)
    gh, gw = h // p, w // p
    assert patches.shape == (2, gh * gw, p * p * 3)
    for y in range(h):
        for x in range(w):
            for c in range(3):
                l = (y // p) * gw + x // p
                j = ((y % p) * p + x % p) * 3 + c
                assert patches[1, l, j] == images[1, c, y, x]
    assert torch.equal(unpatchify(patches, p, (gh, gw)), images)
    other = torch.randn(2, gh * gw, p * p * 3)
    assert torch.equal(patchify(unpatchify(other, p, (gh, gw)), p), other)


def test_patchify_hand_checked_pixel():
    images = torch.arange(3 * 4 * 4, dtype=torch.float32).reshape(1, 3, 4, 4)
    patches = patchify(images, 2)
    # pixel (row 3, col 2) of channel 1 lives in patch (1, 1) = index 3, at (p=1, q=0, c=1) = 7
    assert patches[0, 3, 7].item() == images[0, 1, 3, 2].item() == 16 + 3 * 4 + 2
    # the first patch is the top-left 2x2 square, pixels interleaved by channel
    assert patches[0, 0].tolist() == [0, 16, 32, 1, 17, 33, 4, 20, 36, 5, 21, 37]


def test_reconstruction_loss_counts_only_removed_patches():
    target = torch.zeros(2, 2, 4)
    # per-patch squared errors: [[1, 10000], [4, 9]]
    pred = torch.tensor([1.0, 100.0, 2.0, 3.0]).reshape(2, 2, 1).expand(2, 2, 4)
    mask = torch.tensor([[True, False], [True, True]])
    for norm_pix in (False, True):  # an all-zero target normalises to zero
        got = reconstruction_loss(pred, target, mask, norm_pix=norm_pix)
        assert got.item() == pytest.approx((1 + 4 + 9) / 3, rel=1e-6)
    # nothing removed: every patch counts
    none = torch.zeros(2, 2, dtype=torch.bool)
    got = reconstruction_loss(pred, target, none, norm_pix=False)
    assert got.item() == pytest.approx((1 + 10000 + 4 + 9) / 4, rel=1e-6)


def test_reconstruction_loss_norm_pix_hand_computed():
    target = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [7.0, 7.0, 7.0, 9.0]]])
    pred = torch.zeros(1, 2, 4)
    mask = torch.tensor([[True, False]])
    # raw: (1 + 4 + 9 + 16) / 4
    assert reconstruction_loss(pred, target, mask, norm_pix=False).item() == pytest.approx(7.5)
    # normalised (MAE: unbiased variance + 1e-6): deviations (-1.5, -.5, .5, 1.5), var = 5/3
    expected = ((2.25 + 0.25 + 0.25 + 2.25) / 4) / (5 / 3 + 1e-6)
    assert reconstruction_loss(pred, target, mask, norm_pix=True).item() == pytest.approx(expected, rel=1e-6)
    # the unmasked patch does not count: changing its prediction changes nothing
    pred2 = pred.clone()
    pred2[0, 1] = 123.0
    assert reconstruction_loss(pred2, target, mask, norm_pix=True).item() == pytest.approx(expected, rel=1e-6)


# -- distillation ------------------------------------------------------------------------------

TEACHER_CLS = [[[2.0, 0.0, -1.0]], [[0.5, 1.5, 0.0]]]  # (V=2, B=1, C=3)
STUDENT_CLS = [[[0.3, -0.2, 0.1]], [[-1.0, 0.4, 0.9]]]


def test_cls_distill_loss_hand_computed_with_centre_update():
    loss_fn = ClsDistillLoss(3, center_momentum=0.9)
    t = torch.tensor(TEACHER_CLS, requires_grad=True)
    s = torch.tensor(STUDENT_CLS, requires_grad=True)
    zero = [0.0, 0.0, 0.0]
    # teacher view v against student view u != v
    expected = 0.5 * (
        _ce(TEACHER_CLS[0][0], STUDENT_CLS[1][0], zero, 0.5, 0.25)
        + _ce(TEACHER_CLS[1][0], STUDENT_CLS[0][0], zero, 0.5, 0.25)
    )
    got = loss_fn(teacher_out=t, student_out=s, teacher_temp=0.5, student_temp=0.25)
    assert got.item() == pytest.approx(expected, rel=1e-5)

    # centre after one call from zero = (1 - m) * mean teacher logit vector
    mean = [(a + b) / 2 for a, b in zip(TEACHER_CLS[0][0], TEACHER_CLS[1][0])]
    center = [0.1 * v for v in mean]
    assert loss_fn.center.shape == (1, 3)
    torch.testing.assert_close(loss_fn.center, torch.tensor([center]))

    # the teacher side gets no gradient, the student does
    got.backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0

    # the second call subtracts that centre
    expected2 = 0.5 * (
        _ce(TEACHER_CLS[0][0], STUDENT_CLS[1][0], center, 0.5, 0.25)
        + _ce(TEACHER_CLS[1][0], STUDENT_CLS[0][0], center, 0.5, 0.25)
    )
    got2 = loss_fn(teacher_out=t, student_out=s, teacher_temp=0.5, student_temp=0.25)
    assert got2.item() == pytest.approx(expected2, rel=1e-5)
    center2 = [0.9 * c + 0.1 * m for c, m in zip(center, mean)]
    torch.testing.assert_close(loss_fn.center, torch.tensor([center2]))


def test_cls_distill_loss_same_view_pairs_are_excluded():
    loss_fn = ClsDistillLoss(3, center_momentum=0.9)
    t = torch.tensor(TEACHER_CLS)
    # making the student match the teacher on the same view does not help: only u != v counts
    same = loss_fn(teacher_out=t, student_out=t / 0.4 * 0.1, teacher_temp=0.4)
    zero = [0.0] * 3
    expected = 0.5 * (
        _ce(TEACHER_CLS[0][0], [v / 4 for v in TEACHER_CLS[1][0]], zero, 0.4, 0.1)
        + _ce(TEACHER_CLS[1][0], [v / 4 for v in TEACHER_CLS[0][0]], zero, 0.4, 0.1)
    )
    assert same.item() == pytest.approx(expected, rel=1e-5)


TEACHER_PATCH = [
    [[1.0, 0.0, 0.0], [0.0, 2.0, 1.0]],
    [[-1.0, 0.5, 0.5], [3.0, 0.0, -2.0]],
]  # (B=2, L=2, C=3)
STUDENT_PATCH = [
    [[0.2, 0.1, -0.3], [1.0, 1.0, 0.0]],
    [[0.0, -0.5, 0.7], [0.4, 0.4, 0.9]],
]


def _patch_ce(b: int, l: int, center=(0.0, 0.0, 0.0)) -> float:
    return _ce(TEACHER_PATCH[b][l], STUDENT_PATCH[b][l], list(center), 0.07, 0.1)


@pytest.mark.parametrize(
    "mask, expected",
    [
        ([[True, False], [False, True]], lambda: (_patch_ce(0, 0) + _patch_ce(1, 1)) / 2),
        ([[True, True], [True, False]],
         lambda: ((_patch_ce(0, 0) + _patch_ce(0, 1)) / 2 + _patch_ce(1, 0)) / 2),
        # nothing removed anywhere: every position counts
        ([[False, False], [False, False]],
         lambda: ((_patch_ce(0, 0) + _patch_ce(0, 1)) / 2 + (_patch_ce(1, 0) + _patch_ce(1, 1)) / 2) / 2),
    ],
)
def test_patch_distill_loss_hand_computed(mask, expected):
    loss_fn = PatchDistillLoss(3, center_momentum=0.9)
    t = torch.tensor(TEACHER_PATCH, requires_grad=True)
    s = torch.tensor(STUDENT_PATCH, requires_grad=True)
    got = loss_fn(teacher_out=t, student_out=s, mask=torch.tensor(mask), teacher_temp=0.07, student_temp=0.1)
    assert got.item() == pytest.approx(expected(), rel=1e-5)
    # centre from all four teacher patch vectors, masked or not
    mean = [sum(TEACHER_PATCH[b][l][c] for b in range(2) for l in range(2)) / 4 for c in range(3)]
    torch.testing.assert_close(loss_fn.center, torch.tensor([[0.1 * v for v in mean]]))
    got.backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_patch_distill_loss_ignores_unmasked_positions():
    mask = torch.tensor([[True, False], [False, True]])
    s = torch.tensor(STUDENT_PATCH, requires_grad=True)
    loss = PatchDistillLoss(3, 0.9)(teacher_out=torch.tensor(TEACHER_PATCH), student_out=s, mask=mask,
                                    teacher_temp=0.07)
    loss.backward()
    assert bool((s.grad[~mask] == 0).all())
    assert bool((s.grad[mask].abs().sum(-1) > 0).all())
    s2 = torch.tensor(STUDENT_PATCH)
    s2[~mask] = 50.0
    loss2 = PatchDistillLoss(3, 0.9)(teacher_out=torch.tensor(TEACHER_PATCH), student_out=s2, mask=mask,
                                     teacher_temp=0.07)
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-6)


def test_patch_distill_loss_uses_the_centre_on_the_next_call():
    loss_fn = PatchDistillLoss(3, center_momentum=0.5)
    t, s = torch.tensor(TEACHER_PATCH), torch.tensor(STUDENT_PATCH)
    mask = torch.ones(2, 2, dtype=torch.bool)
    loss_fn(teacher_out=t, student_out=s, mask=mask, teacher_temp=0.07)
    center = loss_fn.center[0].tolist()
    got = loss_fn(teacher_out=t, student_out=s, mask=mask, teacher_temp=0.07)
    expected = sum(_patch_ce(b, l, center) for b in range(2) for l in range(2)) / 4
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_entropy_reference_values():
    assert entropy(torch.full((3, 4), 0.25)).item() == pytest.approx(math.log(4))
    assert entropy(torch.tensor([[1.0, 0.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-9)


def test_local_to_global_is_every_local_crop_against_every_global_view():
    loss = ClsDistillLoss(3, 0.9)
    center = torch.tensor([[0.2, -0.1, 0.0]])
    loss.center.copy_(center)
    teacher = torch.tensor([[[1.0, 0.0, -1.0]], [[0.5, 0.5, 0.0]]])  # (V=2, B=1, C=3)
    student = torch.tensor([[[0.3, -0.2, 0.1]], [[0.0, 1.0, 0.0]], [[-1.0, 0.0, 2.0]]])  # (N=3, B=1, C=3)
    got = loss.local_to_global(teacher_out=teacher, student_out=student, teacher_temp=0.5, student_temp=0.2)
    want = sum(_ce(teacher[v, 0].tolist(), student[n, 0].tolist(), [0.2, -0.1, 0.0], 0.5, 0.2)
               for v in range(2) for n in range(3)) / 6
    assert got.item() == pytest.approx(want, rel=1e-5)
    assert torch.equal(loss.center, center)  # read, never moved


# -- the weighted total ------------------------------------------------------------------------


def test_weighted_total_uses_each_terms_own_weight():
    cfg = TrainConfig(w_clip=0.5, w_rec=2.0, w_cls=3.0, w_patch=5.0)
    assert loss_weights(cfg) == {"clip": 0.5, "rec": 2.0, "cls": 3.0, "patch": 5.0,
                                 "patch_kept": 5.0, "patch_removed": 5.0, "dino": 3.0, "byol": 1.0, "simclr": 1.0}
    losses = weighted_total({"clip": torch.tensor(1.0), "rec": torch.tensor(10.0), "cls": torch.tensor(100.0)}, cfg)
    assert losses["loss"].item() == 0.5 + 20.0 + 300.0
    kept = weighted_total({"rec": torch.tensor(1.0), "patch_kept": torch.tensor(2.0),
                           "patch_removed": torch.tensor(4.0)}, cfg)
    assert kept["loss"].item() == 2.0 + 10.0 + 20.0
    with pytest.raises(KeyError):
        weighted_total({"unknown": torch.tensor(1.0)}, cfg)  # a new term needs a weight


# -- distillation from a frozen teacher: cosine terms ------------------------------------------


def test_cosine_distance_reference_values():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [3.0, 4.0]])
    b = torch.tensor([[2.0, 0.0], [0.0, 5.0], [-1.0, 0.0], [4.0, 3.0]])
    torch.testing.assert_close(cosine_distance(a, b), torch.tensor([0.0, 1.0, 2.0, 1.0 - 24.0 / 25.0]))


def test_pooled_mean_weighs_by_pair_counts():
    assert pooled_mean((torch.tensor(1.0), 2), (torch.tensor(4.0), 6)).item() == pytest.approx((2 + 24) / 8)


def test_cls_cosine_loss_pools_same_view_and_local_pairs():
    e = torch.eye(3)
    teacher = torch.stack([e[0], e[0], e[1], e[1]])  # (V*B=4, E): view 0 = [e0, e0], view 1 = [e1, e1]
    student = torch.stack([e[0], -e[0], e[1], e[2]])  # distances 0, 2, 0, 1
    assert cls_cosine_loss(teacher_emb=teacher, student_emb=student).item() == pytest.approx(3 / 4)
    local = torch.stack([e[0], e[0]]).unsqueeze(0)  # (N=1, B=2, E): both crops along e0
    # local pairs: against view 0 (e0): 0, 0; against view 1 (e1): 1, 1 -> mean 0.5 over V*N = 2 pairs
    got = cls_cosine_loss(teacher_emb=teacher, student_emb=student, local_emb=local, views=2)
    assert got.item() == pytest.approx((3 / 4 * 2 + 0.5 * 2) / 4)


def test_patch_cosine_losses_compare_the_right_positions():
    e = torch.eye(2)
    teacher = torch.stack([e[0], e[1], -e[0]]).unsqueeze(0)  # (B=1, L=3, D=2)
    kept = kept_patch_cosine_loss(teacher_patches=teacher, student_kept=torch.stack([e[1], e[1]]).unsqueeze(0),
                                  ids_keep=torch.tensor([[1, 2]]))
    assert kept.item() == pytest.approx((0.0 + 1.0) / 2)  # position 1 matches, position 2 is orthogonal
    student = torch.stack([-e[0], e[0], e[0]]).unsqueeze(0)  # distances 2, 1, 2
    removed = removed_patch_cosine_loss(teacher_patches=teacher, student_patches=student,
                                        mask=torch.tensor([[True, False, True]]))
    assert removed.item() == pytest.approx(2.0)  # the kept position 1 does not count


def test_nt_xent_hand_computed():
    """Two images, unit vectors at known angles: each view's loss is -log of its partner's share."""
    import math

    from detailclip_cli.core.method.losses import nt_xent_loss

    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[0.6, 0.8], [-0.8, 0.6]])  # image 0's second view is 53 degrees off its first
    t = 0.5
    z = [z1[0], z1[1], z2[0], z2[1]]
    partner = [2, 3, 0, 1]
    expected = 0.0
    for i in range(4):
        logits = [float(z[i] @ z[j]) / t for j in range(4) if j != i]
        others = [j for j in range(4) if j != i]
        expected += -(float(z[i] @ z[partner[i]]) / t - math.log(sum(math.exp(x) for x in logits)))
        assert partner[i] in others
    expected /= 4
    got = nt_xent_loss(z1 * 3.0, z2, temperature=t)  # scale does not matter: the views are normalised
    assert abs(got.item() - expected) < 1e-6, (got.item(), expected)
    # Swapping the views is the same loss; a batch of identical pairs far apart is near zero.
    assert abs(nt_xent_loss(z2, z1, t).item() - expected) < 1e-6
    far = torch.eye(3) * 10
    assert nt_xent_loss(far, far, temperature=0.01).item() < 1e-6
