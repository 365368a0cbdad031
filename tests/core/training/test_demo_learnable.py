"""The demo set is learnable in a demo budget: a short tiny run reads its classes zero-shot.

Demo v6's classes are patterns (striped, dotted, checkered, plain) in random colours, which a
model must learn to see; demo v5's ink colours were learned by any model, and an untrained one
probed as well as a trained one. This is the end-to-end check that the data, captions, recipe
and zero-shot templates fit together: the tiny preset, the library's own training entry point,
then the clip_benchmark-style zero-shot evaluation on the 500 validation images (photos never
seen in training).
"""

from __future__ import annotations

import pytest

from detailclip_cli.core.config import TrainConfig, load_preset

# The shipped model's recipe (86.6 % top-1 measured, seed 0). 300 steps are not enough: seed 1
# reached 38 %, with one class (dotted) never predicted. About 6 minutes on 2 CPU cores.
STEPS = 600
CHANCE = 0.25
MIN_TOP1 = 0.6


@pytest.mark.slow
def test_a_short_tiny_run_reads_the_demo_patterns(demo_cache, tmp_path):
    from detailclip_cli.core.data.benchmarks import open_eval_set
    from detailclip_cli.core.store.lookup import resolve_model
    from detailclip_cli.core.training.pretrain import train
    from detailclip_cli.core.use.templates import resolve_templates
    from detailclip_cli.core.use.zeroshot import evaluate_zero_shot

    model_cfg, train_cfg = load_preset("tiny")
    train_cfg = TrainConfig.from_dict({**train_cfg.to_dict(), "steps": STEPS, "seed": 0, "log_every": STEPS,
                                       "save_every": STEPS})
    list(train(model_cfg, train_cfg, data="demo", out_dir=tmp_path / "run", device="cpu"))
    eval_set = open_eval_set("demo")
    assert eval_set.classes == ["striped", "dotted", "checkered", "plain"] and len(eval_set) == 500
    report = evaluate_zero_shot(resolve_model(str(tmp_path / "run")), eval_set, resolve_templates("demo"))
    assert report.num_images == 500
    assert report.top1 > MIN_TOP1 > 2 * CHANCE - 0.01, report.top1
    # No class is left at zero: the run reads every pattern, not one or two.
    assert report.mean_per_class_recall > MIN_TOP1 - 0.1, report.mean_per_class_recall
