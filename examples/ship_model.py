"""Copy a trained run into the package as its shipped model, in half precision, with its provenance.

    .venv/bin/detailclip pretrain --preset tiny --steps 600 --seed 0 --out runs/tiny-ship
    .venv/bin/python examples/ship_model.py runs/tiny-ship

The weights are stored as float16 (half the size; every command loads them back as float32),
next to ``config.json`` and ``run.json`` (the command's settings, for anyone who retrains it).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from detailclip_cli.core.store.io import load_model, save_model
from detailclip_cli.core.store.run import RunFolder
from detailclip_cli.core.store.shipped import shipped_model_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="the run folder to ship")
    parser.add_argument("--out", type=Path, default=shipped_model_dir())
    args = parser.parse_args()
    model = load_model(args.run)
    save_model(model, args.out, dtype=torch.float16, metadata={"source": "detailclip pretrain (see run.json)"})
    # The shipped folder keeps the run's settings where a run folder has them (``info`` reads them).
    shutil.copyfile(RunFolder(args.run).settings_file, RunFolder(args.out).settings_file)
    size = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"{args.out}: {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
