"""Data parallel (torchrun, 2 CPU processes on gloo), gradient accumulation and activation
checkpointing all give the single-process, one-batch result.

Losses agree to 1e-4 (relative), gradients (AdamW's running mean of them) to 1e-3 of each
tensor's scale, weights to 1e-5 where the gradient is real. Where it is not, the split changes
them more: the key bias of an attention layer has a zero gradient in exact arithmetic (softmax
ignores a shift shared by a whole row), and a dead hidden unit almost so; what they get is float
noise, which Adam's per-element normalisation turns into steps of about ``lr`` whose sign
depends on the summation order. Those are held to that bound instead: the key biases, and one
element in 100,000 of a tensor for dead units (their value changes no output, or next to none).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from detailclip_cli.core.config import ConfigError, TrainConfig, load_config_file
from detailclip_cli.core.store.run import RunFolder
from detailclip_cli.core.training.pretrain import train

LR, STEPS = 3e-4, 3
CONFIG = {"preset": "tiny",
          "model": {"vision": {"depth": 2}, "text": {"layers": 1}, "head": {"out_dim": 256}},
          "train": {"batch_size": 8, "steps": STEPS, "lr": LR, "warmup_steps": 1, "log_every": 1,
                    "save_every": STEPS}}


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "config.json"
    path.write_text(json.dumps(CONFIG))
    return path


def configs(config_file: Path, **train_changes):
    model_cfg, train_cfg = load_config_file(config_file)
    return model_cfg, TrainConfig.from_dict({**train_cfg.to_dict(), **train_changes})


def torchrun(*args: str, processes: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node N -m detailclip_cli ARGS``, one thread per process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
           "-m", "detailclip_cli", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_losses(a: Path, b: Path, names=("loss", "clip", "rec", "cls", "patch")) -> None:
    ma, mb = metrics(a), metrics(b)
    assert [r["step"] for r in ma] == [r["step"] for r in mb]
    for ra, rb in zip(ma, mb):
        for k in names:
            if k in ra:
                assert rb[k] == pytest.approx(ra[k], rel=1e-4), (ra["step"], k)


def _key_bias_rows(name: str, shape: torch.Size) -> slice | None:
    """The key third of a fused q/k/v bias (zero true gradient; see the module docstring)."""
    if name.endswith(("attn.qkv.bias", "attn.in_proj_bias")):
        width = shape[0] // 3
        return slice(width, 2 * width)
    return None


def assert_same_weights(a: Path, b: Path, steps: int = STEPS, lr: float = LR) -> None:
    """Model and teacher within 1e-5, but key biases and one element in 100,000 of a tensor (a
    dead unit) within Adam's noise bound; the EMA of the gradients (AdamW's exp_avg) within 1e-3
    of each tensor's scale."""
    for file, prefix in (("model.safetensors", ""), ("train_state.safetensors", "objective.")):
        sa, sb = load_file(a / file), load_file(b / file)
        assert sa.keys() == sb.keys()
        for name in sa:
            if name.startswith("optim.") and name.endswith("exp_avg"):
                scale = sa[name].abs().max().item()
                torch.testing.assert_close(sb[name], sa[name], rtol=0, atol=1e-3 * scale + 1e-9, msg=lambda m: f"{name}: {m}")
            if not name.startswith(prefix) or name.startswith("optim.") or name.startswith("rng."):
                continue
            diff = (sa[name] - sb[name]).abs()
            assert diff.max() <= 2 * lr * steps, name  # the most Adam moves any element
            rows = _key_bias_rows(name, diff.shape)
            if rows is not None:
                diff[rows] = 0
            # A unit whose gradient was about zero at some step (a dead GELU unit) got float noise
            # then: one element in 100,000 may stray, so none in a tensor of fewer (logit_scale).
            far = int((diff > 1e-5).sum())
            assert far <= diff.numel() // 100_000, f"{name}: {far} elements differ by more than 1e-5"


def _record_batch_sizes(monkeypatch, objective_class) -> dict[str, list[int]]:
    """Record the batch size of every ``forward`` and ``contrastive_features`` call of the class."""
    seen: dict[str, list[int]] = {"contrastive_features": [], "forward": []}
    for method in seen:
        real = getattr(objective_class, method)

        def recording(self, view1, *args, _real=real, _calls=seen[method], **kwargs):
            _calls.append(view1.shape[0])
            return _real(self, view1, *args, **kwargs)

        monkeypatch.setattr(objective_class, method, recording)
    return seen


@pytest.fixture(scope="module")
def single_run(demo_cache, config_file, tmp_path_factory) -> Path:
    """The reference: one process, the whole batch of 8 in one piece."""
    out = tmp_path_factory.mktemp("single")
    model_cfg, train_cfg = configs(config_file)
    list(train(model_cfg, train_cfg, data="demo", out_dir=out, device="cpu"))
    return out


@pytest.mark.slow
def test_two_processes_equal_one_process_at_the_global_batch(single_run, config_file, tmp_path):
    out = tmp_path / "two"
    result = torchrun("pretrain", "--config", str(config_file), "--out", str(out), "--device", "cpu")
    # Only rank 0 speaks and writes.
    assert result.stderr.count("detailclip pretrain ->") == 1
    assert result.stderr.count(f"done: {STEPS} steps") == 1
    assert json.loads((out / "run.json").read_text())["processes"] == 2
    assert_same_losses(single_run, out)
    assert_same_weights(single_run, out)

    # A 2-process run resumed by one process continues as the 1-process run does.
    for run in (single_run, out):
        resumed = tmp_path / f"resumed-{run.name}"
        shutil.copytree(run, resumed)
        model_cfg, train_cfg, _ = RunFolder(resumed).settings()
        train_cfg.steps = STEPS + 2
        assert [i.step for i in train(model_cfg, train_cfg, out_dir=resumed, device="cpu", resume=True)] == [4, 5]
    assert_same_losses(tmp_path / f"resumed-{single_run.name}", tmp_path / "resumed-two")
    assert_same_weights(tmp_path / f"resumed-{single_run.name}", tmp_path / "resumed-two", steps=STEPS + 2)


def test_accumulation_equals_one_big_batch(single_run, config_file, tmp_path, monkeypatch):
    """Two micro-batches of 4, the CLIP loss over all 8 rows' negatives (cached features)."""
    from detailclip_cli.core.method.objective import DetailCLIPObjective

    seen = _record_batch_sizes(monkeypatch, DetailCLIPObjective)
    model_cfg, train_cfg = configs(config_file, accum_steps=2)
    list(train(model_cfg, train_cfg, data="demo", out_dir=tmp_path, device="cpu"))
    # Each step: two micro-batches' cached features (no gradient), then their two passes.
    assert seen == {"contrastive_features": [4] * 2 * STEPS, "forward": [4] * 2 * STEPS}
    assert_same_losses(single_run, tmp_path)
    assert_same_weights(single_run, tmp_path)


@pytest.mark.slow
def test_distill_two_processes_with_accumulation_equal_one_process(demo_cache, config_file, tmp_path):
    """Self-distillation (iBOT centres averaged over processes and micro-batches), random removal
    drawn per global row: 2 processes x 2 micro-batches of 2 equal one batch of 8."""
    from detailclip_cli.core.training.distill import distill

    model_cfg, train_cfg = configs(config_file, removal="random")
    list(distill(model_cfg, train_cfg, data="demo", out_dir=tmp_path / "one", device="cpu"))
    torchrun("distill", "--config", str(config_file), "--out", str(tmp_path / "two"), "--device", "cpu",
             "--removal", "random", "--accum-steps", "2")
    recorded = RunFolder(tmp_path / "two").recorded()
    assert recorded["processes"] == 2 and recorded["train"]["accum_steps"] == 2
    assert_same_losses(tmp_path / "one", tmp_path / "two")
    assert_same_weights(tmp_path / "one", tmp_path / "two")


def test_each_process_reads_its_slice_of_the_global_batch(demo_cache, config_file):
    from detailclip_cli.core.data import TwoViewDataset, read_samples
    from detailclip_cli.core.training.loop import iterate_batches
    from detailclip_cli.core.training.trainset import train_augment

    _, cfg = configs(config_file, workers=0)
    dataset = TwoViewDataset(read_samples("demo", split="train"), image_size=16, mean=(0, 0, 0), std=(1, 1, 1),
                             aug=train_augment(16, chiral=True), tokenize=None, seed=0)

    def indices(rank: int, world: int, start: int = 0, steps: int = 2) -> list[list[int]]:
        batches = iterate_batches(dataset, cfg, start, rank=rank, world_size=world)
        return [next(batches)["index"].tolist() for _ in range(steps)]

    whole = indices(0, 1)
    halves = [indices(r, 2) for r in range(2)]
    assert [h0 + h1 for h0, h1 in zip(*halves)] == whole
    assert indices(1, 2, start=1, steps=1) == [whole[1][4:]]


def test_a_batch_that_does_not_split_evenly_is_refused(demo_cache, config_file, tmp_path, monkeypatch):
    model_cfg, train_cfg = configs(config_file, batch_size=6)
    monkeypatch.setattr("detailclip_cli.core.training.loop.world_size", lambda: 4)
    with pytest.raises(ConfigError, match="batch size 6 .* does not split evenly into 4 processes"):
        train(model_cfg, train_cfg, out_dir=tmp_path, device="cpu")
    with pytest.raises(ConfigError, match="does not split into 3 equal micro-batches"):
        configs(config_file, accum_steps=3)[1].validate()


def test_grad_checkpointing_gives_the_same_loss_and_gradients(config_file):
    from detailclip_cli.core.method.objective import DetailCLIPObjective
    from detailclip_cli.core.model.detailclip import DetailCLIP

    model_cfg, train_cfg = configs(config_file)
    g = torch.Generator().manual_seed(0)
    size = model_cfg.vision.image_size
    views = [torch.randn(4, 3, size, size, generator=g) for _ in range(2)]
    text = torch.randint(0, model_cfg.text.vocab_size, (4, model_cfg.text.context_length), generator=g)
    results, recomputed = [], []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        cfg = TrainConfig.from_dict({**train_cfg.to_dict(), "grad_checkpointing": checkpointing})
        objective = DetailCLIPObjective(DetailCLIP(model_cfg), cfg).train()
        towers = {"visual": objective.model.visual.blocks, "text": objective.model.text.transformer.resblocks}
        calls = {name: 0 for name in towers}
        losses = objective(*views, text, step=0)
        # Checkpointing shows as the towers' blocks running again during the backward pass (a
        # pre-hook: a recomputation may stop inside a block once it has what the backward needs).
        def count(name: str, calls: dict = calls):
            return lambda *_: calls.__setitem__(name, calls[name] + 1)

        hooks = [block.register_forward_pre_hook(count(name)) for name, blocks in towers.items() for block in blocks]
        losses["loss"].backward()
        for hook in hooks:
            hook.remove()
        recomputed.append(calls)
        grads = {n: p.grad.clone() for n, p in objective.named_parameters() if p.grad is not None}
        results.append((losses, grads))
    assert recomputed[0] == {"visual": 0, "text": 0}
    assert recomputed[1]["visual"] >= model_cfg.vision.depth and recomputed[1]["text"] >= model_cfg.text.layers
    (la, ga), (lb, gb) = results
    for k in la:
        torch.testing.assert_close(lb[k], la[k], rtol=1e-5, atol=1e-6)
    assert ga.keys() == gb.keys() and any("text" in n for n in ga)
    for n in ga:
        torch.testing.assert_close(gb[n], ga[n], rtol=1e-4, atol=1e-6, msg=n)


def test_gradients_are_reduced_by_ddp_once_per_step(demo_cache, config_file, tmp_path, monkeypatch):
    """In a process group, DDP's reducer averages the gradients (its communication hook sees every
    trained parameter, once per step: the first micro-batch runs under ``no_sync``), and no
    Python-level all-reduce of a gradient remains (the loop's own all-reduces are a few numbers)."""
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    import detailclip_cli.core.distributed as distributed

    assert not hasattr(distributed, "average_gradients")
    reduced: list[int] = []  # parameters in each bucket DDP all-reduced
    wrapped: list[torch.nn.parallel.DistributedDataParallel] = []

    class RecordingDDP(torch.nn.parallel.DistributedDataParallel):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            wrapped.append(self)

            def hook(state, bucket):
                reduced.append(len(bucket.parameters()))
                in_hook.append(True)  # the hook's own all-reduce is DDP's, not the loop's
                try:
                    return allreduce_hook(state, bucket)
                finally:
                    in_hook.pop()

            self.register_comm_hook(None, hook)

    python_all_reduces: list[int] = []
    in_hook: list[bool] = []
    real_all_reduce = dist.all_reduce
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", RecordingDDP)
    monkeypatch.setattr(dist, "all_reduce", lambda t, *a, **k: (in_hook or python_all_reduces.append(t.numel()),
                                                                  real_all_reduce(t, *a, **k))[1])
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model_cfg, train_cfg = configs(config_file, accum_steps=2, steps=2)
        run = train(model_cfg, train_cfg, data="demo", out_dir=tmp_path / "run", device="cpu")
        list(run)
        trained = sum(1 for p in run.objective.parameters() if p.requires_grad)
    finally:
        dist.destroy_process_group()
    assert len(wrapped) == 1 and wrapped[0].module is run.objective
    # Two steps, each reducing every trained parameter once (bucket sizes sum to all of them).
    assert sum(reduced) == 2 * trained
    assert python_all_reduces and max(python_all_reduces) < 1000
    # The checkpoint keeps the plain objective's parameter names (no "module." prefix).
    assert not any(k.startswith("module.") for k in load_file(tmp_path / "run" / "model.safetensors"))


@pytest.mark.slow
def test_sharded_two_processes_equal_one_process_and_resume_on_one(single_run, config_file, tmp_path):
    """FSDP2 (--shard) over 2 processes gives the 1-process losses and weights; its checkpoint is the
    plain one (gathered), and one process resumes it as it resumes the 1-process run."""
    out = tmp_path / "sharded"
    torchrun("pretrain", "--config", str(config_file), "--out", str(out), "--device", "cpu", "--shard")
    recorded = RunFolder(out).recorded()
    assert recorded["processes"] == 2 and recorded["sharded"] is True
    assert_same_losses(single_run, out)
    assert_same_weights(single_run, out)
    for run in (single_run, out):
        resumed = tmp_path / f"resumed-{run.name}"
        shutil.copytree(run, resumed)
        model_cfg, train_cfg, _ = RunFolder(resumed).settings()
        train_cfg.steps = STEPS + 2
        assert [i.step for i in train(model_cfg, train_cfg, out_dir=resumed, device="cpu", resume=True)] == [4, 5]
    assert_same_losses(tmp_path / f"resumed-{single_run.name}", tmp_path / "resumed-sharded")
    assert_same_weights(tmp_path / f"resumed-{single_run.name}", tmp_path / "resumed-sharded", steps=STEPS + 2)
