"""Can a small image model learn the demo digits from their labels in a CPU budget?

Supervised classification of the digit each demo v5 image shows (v5's classes are the ink
colours; the digit is in every record), to separate "the contrastive signal
is too weak" from "the image model cannot learn these shapes this fast". Prints validation
accuracy six times during training. Reproduces the README's table ("What the demo data teaches
a tiny model"), e.g.::

    python examples/digit_learnability.py --model cnn --steps 600
    python examples/digit_learnability.py --model vit --steps 600
    python examples/digit_learnability.py --model vit-conv --train-size 20000 --steps 600
    python examples/digit_learnability.py --model vit-conv --train-size 20000 --augment --steps 600

``--train-size`` above 2,000 generates a larger demo set (the same generator; image ``j`` is
identical whatever the size) into a temporary folder first (~35 s for 20,000 images).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from detailclip_cli.core.config import VisionConfig
from detailclip_cli.core.data import AugmentConfig, demo_root, generate_demo, read_samples
from detailclip_cli.core.data.dataset import EvalDataset, TwoViewDataset
from detailclip_cli.core.model.vit import VisionTransformer
from demo_bounds import cnn  # the same small CNN as the demo bounds (examples/ is on sys.path)

MEAN, STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)


class ViTClassifier(nn.Module):
    """The tiny preset's image tower with a linear layer on its [CLS] token."""

    def __init__(self, stem: str, num_classes: int):
        super().__init__()
        self.vit = VisionTransformer(VisionConfig(image_size=64, patch_size=8, width=192, depth=4, heads=3, stem=stem))
        self.fc = nn.Linear(192, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.vit(images)[:, 0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["cnn", "vit", "vit-conv"], default="vit-conv")
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--augment", action="store_true", help="train on pretraining's first view (demo settings)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        root = demo_root(version="v5")
        if args.train_size != 2000:
            root = Path(tmp)
            generate_demo(root, version="v5", sizes={"train": args.train_size, "val": 500})
        train, val = read_samples(root / "train"), read_samples(root / "val")
        # The demo's classes are the ink colours; the digit each image shows is in its record.
        digit = {}
        for split in ("train", "val"):
            for line in (root / f"{split}.jsonl").read_text().splitlines():
                record = json.loads(line)
                digit[(split, record["id"])] = record["digit"]
        train = [dataclasses.replace(s, label=digit[("train", s.image.stem)]) for s in train]
        val = [dataclasses.replace(s, label=digit[("val", s.image.stem)]) for s in val]
        classes = sorted({s.label for s in train})
        labels = torch.tensor([classes.index(s.label) for s in train])
        plain = EvalDataset(train, image_size=64, mean=MEAN, std=STD)
        aug = dataclasses.replace(AugmentConfig.for_image_size(64), hflip=0.0)
        views = TwoViewDataset(train, image_size=64, mean=MEAN, std=STD, aug=aug, tokenize=None, seed=0)
        ev = EvalDataset(val, image_size=64, mean=MEAN, std=STD, classes=classes)
        x_val = torch.stack([ev[i]["image"] for i in range(len(ev))])
        y_val = torch.tensor([ev[i]["label"] for i in range(len(ev))])

        if args.model == "cnn":
            model = cnn(len(classes))
        else:
            model = ViTClassifier("conv" if args.model == "vit-conv" else "patch", len(classes))
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
        g = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        for step in range(1, args.steps + 1):
            idx = torch.randint(0, len(train), (args.batch_size,), generator=g).tolist()
            if args.augment:
                x = torch.stack([views[i]["view1"] for i in idx])
            else:
                x = torch.stack([plain[i]["image"] for i in idx])
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if step % max(1, args.steps // 6) == 0 or step == args.steps:
                model.eval()
                with torch.no_grad():
                    acc = (model(x_val).argmax(1) == y_val).float().mean().item()
                model.train()
                print(f"{args.model} step {step}: loss {loss.item():.3f}, val accuracy {acc:.1%} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
