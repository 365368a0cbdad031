"""The shared stages: every objective composes them, marks them, and keeps only the parts it uses."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from helpers import small_model_cfg
from detailclip_cli.core.config import load_preset
from detailclip_cli.core.method import stages
from detailclip_cli.core.method.distill import FrozenTeacherObjective, SelfDistillObjective
from detailclip_cli.core.method.objective import DetailCLIPObjective
from detailclip_cli.core.method.stages import observe_stages, stage
from detailclip_cli.core.model.detailclip import DetailCLIP

B = 2


def _train_cfg(**changes):
    _, train = load_preset("tiny")
    return dataclasses.replace(train, batch_size=B, **changes)


def _views(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, 64, 64, generator=g), torch.randn(B, 3, 64, 64, generator=g)


def _objectives() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    cfg = _train_cfg()
    return {
        "detailclip": DetailCLIPObjective(DetailCLIP(small_model_cfg()), cfg),
        "self": SelfDistillObjective(DetailCLIP(small_model_cfg()), cfg),
        "frozen": FrozenTeacherObjective(DetailCLIP(small_model_cfg()), cfg, teacher=DetailCLIP(small_model_cfg())),
    }


def _run(name: str, objective: torch.nn.Module) -> dict[str, torch.Tensor]:
    view1, view2 = _views()
    text = torch.randint(0, 500, (B, 8), generator=torch.Generator().manual_seed(1)) if name == "detailclip" else None
    return objective(view1, view2, text, step=0)


def test_detailclip_forward_marks_its_stages_in_order():
    objective = _objectives()["detailclip"]
    seen: list[str] = []
    with observe_stages(seen.append):
        _run("detailclip", objective)
    assert seen == ["teacher", "student_encoder", "text_tower", "heads_losses",  # CLIP loss
                    "decoder", "heads_losses",  # reconstruction loss
                    "heads_losses", "heads_losses"]  # iBOT heads, weighted total
    assert set(seen) == set(stages.STAGES)
    _run("detailclip", objective)
    assert len(seen) == 8  # outside observe_stages nothing is told


def test_a_failing_stage_is_not_reported_and_the_observer_is_restored():
    seen: list[str] = []
    with pytest.raises(RuntimeError), observe_stages(seen.append):
        with stage("decoder"):
            raise RuntimeError("boom")
    with stage("teacher"):
        pass
    assert seen == []


@pytest.mark.parametrize("name", ["detailclip", "self", "frozen"])
def test_every_objective_composes_the_shared_stages(name, monkeypatch):
    """Removal, encoding and reconstruction go through the one shared function in each objective."""
    calls: dict[str, int] = {}

    def counted(fn):
        def wrapper(*args, **kwargs):
            calls[fn.__name__] = calls.get(fn.__name__, 0) + 1
            return fn(*args, **kwargs)
        return wrapper

    for fn in (stages.remove, stages.reconstruct, stages.teacher_pass):
        monkeypatch.setattr(stages, fn.__name__, counted(fn))
    losses = _run(name, _objectives()[name])
    assert calls == {"remove": 1, "reconstruct": 1, "teacher_pass": 1}
    assert "rec" in losses and torch.isfinite(losses["loss"])


def test_each_objective_keeps_only_the_parts_it_uses():
    """The state-dict layout checkpoints rely on: no objective carries a part it discards."""
    objectives = _objectives()

    def parts(objective):
        return {k.split(".")[0] if not k.startswith("teacher.") else ".".join(k.split(".")[:2])
                for k in objective.state_dict()}

    assert parts(objectives["detailclip"]) == {"model", "teacher.visual", "teacher.head", "cls_loss", "patch_loss"}
    assert parts(objectives["self"]) == {"model", "teacher.visual", "teacher.head", "cls_loss", "patch_loss"}
    frozen = objectives["frozen"]
    assert parts(frozen) == {"model", "teacher.visual", "teacher.image_proj", "bridge_kept", "bridge_removed"}
    assert not hasattr(frozen, "cls_loss") and not hasattr(frozen, "patch_loss")
    assert frozen.update_teacher(5) == 1.0


def test_the_weights_table_is_the_one_every_objective_totals_with():
    cfg = _train_cfg(w_rec=0.25, w_cls=3.0, w_patch=0.5)
    torch.manual_seed(0)
    frozen = FrozenTeacherObjective(DetailCLIP(small_model_cfg()), cfg, teacher=DetailCLIP(small_model_cfg()))
    losses = _run("frozen", frozen)
    want = (0.25 * losses["rec"] + 3.0 * losses["cls"] + 0.5 * losses["patch_kept"]
            + 0.5 * losses["patch_removed"])
    torch.testing.assert_close(losses["loss"], want)
