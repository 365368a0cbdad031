"""How learnable is a demo set? Upper and lower bounds for what pretraining can show on it.

- **Upper bound**: the tiny preset's image tower (or, for reference, a small CNN) trained with
  the class labels for a fixed budget; validation accuracy during training and, for the ViT,
  the dense linear probe on its frozen patch tokens at the end.
- **Lower bound**: the same dense probe on an *untrained* tiny DetailCLIP's patch tokens (and
  its [CLS] k-NN and logistic-regression accuracy).

The dense probe is ``evaluate``'s standard protocol at its default budget (BatchNorm + linear
head on the last block's patch tokens, 1,000 iterations; see docs/benchmarks.md). A set on which the untrained probe is near the trained one cannot
  show what pretraining adds to patch features.

Prints one JSON line per learner, e.g.::

    python examples/demo_bounds.py --learner vit --steps 450
    python examples/demo_bounds.py --learner cnn --steps 300
    python examples/demo_bounds.py --learner untrained
    python examples/demo_bounds.py --learner vit --data demo:v5      # the ink-colour demo

The ViT runs AdamW with a one-cycle learning rate (3e-4 peak: at 1e-3 a supervised tiny ViT
stayed at chance on patterns), batch 64, on pretraining's plain evaluation view (no
augmentation), one seed.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch import nn

from detailclip_cli.core.config import load_preset
from detailclip_cli.core.data import EvalDataset, class_names, read_samples
from detailclip_cli.core.device import seed_everything
from detailclip_cli.core.model.detailclip import DetailCLIP
from detailclip_cli.core.use.dense import DenseProbeConfig
from detailclip_cli.core.use.evaluate import run_evaluation


def cnn(num_classes: int) -> nn.Module:
    """Five 3x3 conv + BatchNorm + ReLU stages (32-128 channels), global pooling, a linear layer."""

    def stage(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

    return nn.Sequential(*stage(3, 32), nn.MaxPool2d(2), *stage(32, 64), nn.MaxPool2d(2), *stage(64, 128),
                         nn.MaxPool2d(2), *stage(128, 128), nn.MaxPool2d(2), *stage(128, 128),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes))


class TowerClassifier(nn.Module):
    """A DetailCLIP model's image tower with a linear layer on its [CLS] token."""

    def __init__(self, model: DetailCLIP, num_classes: int):
        super().__init__()
        self.model = model
        self.fc = nn.Linear(model.cfg.vision.width, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.model.visual(images)[:, 0])


def tensors(data: str, split: str, classes: list[str], model: DetailCLIP) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of a split, eval-transformed for ``model``, and their class ids."""
    v = model.cfg.vision
    ds = EvalDataset(read_samples(data, split=split), image_size=v.image_size, mean=v.mean, std=v.std,
                     classes=classes)
    items = [ds[i] for i in range(len(ds))]
    return torch.stack([it["image"] for it in items]), torch.tensor([it["label"] for it in items])


def supervised(learner: str, data: str, *, steps: int, lr: float, batch_size: int, seed: int) -> dict:
    classes = class_names(data)
    seed_everything(seed)
    model = DetailCLIP(load_preset("tiny")[0])
    x_train, y_train = tensors(data, "train", classes, model)
    x_val, y_val = tensors(data, "val", classes, model)
    net = cnn(len(classes)) if learner == "cnn" else TowerClassifier(model, len(classes))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    curve, t0 = [], time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(x_train), (batch_size,), generator=g)
        loss = F.cross_entropy(net(x_train[idx]), y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % max(1, steps // 6) == 0 or step == steps:
            net.eval()
            with torch.no_grad():
                acc = sum((net(x_val[i:i + 250]).argmax(1) == y_val[i:i + 250]).sum().item()
                          for i in range(0, len(x_val), 250)) / len(x_val)
            net.train()
            curve.append({"step": step, "val_accuracy": round(acc, 4), "seconds": round(time.perf_counter() - t0, 1)})
            print(f"{learner} step {step}: loss {loss.item():.3f}, val accuracy {acc:.1%}", flush=True)
    result = {"learner": learner, "data": data, "steps": steps, "lr": lr, "batch_size": batch_size,
              "seed": seed, "curve": curve}
    if learner == "vit":
        model.eval()
        result["dense"] = run_evaluation(model, data, tasks=("dense",), dense=DenseProbeConfig(seed=seed),
                                         seed=seed)["metrics"]["dense"]
    return result


def untrained(data: str, *, seed: int) -> dict:
    seed_everything(seed)
    model = DetailCLIP(load_preset("tiny")[0]).eval()
    metrics = run_evaluation(model, data, tasks=("dense", "probe"), dense=DenseProbeConfig(seed=seed),
                             seed=seed)["metrics"]
    return {"learner": "untrained", "data": data, "seed": seed, **metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--learner", choices=["vit", "cnn", "untrained"], default="vit")
    parser.add_argument("--data", default="demo", help="demo (the latest) or demo:v5")
    parser.add_argument("--steps", type=int, default=450)
    parser.add_argument("--lr", type=float, default=None, help="peak lr (vit 3e-4, cnn 1e-3)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.learner == "untrained":
        result = untrained(args.data, seed=args.seed)
    else:
        lr = args.lr if args.lr is not None else (1e-3 if args.learner == "cnn" else 3e-4)
        result = supervised(args.learner, args.data, steps=args.steps, lr=lr, batch_size=args.batch_size,
                            seed=args.seed)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
