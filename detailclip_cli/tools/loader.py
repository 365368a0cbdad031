"""Data feeding: how many training images one CPU core prepares per second, ours against open_clip's.

Each figure is one process on one thread (``torch.set_num_threads(1)``, as a ``DataLoader``
worker runs), over the same JPEG files: decode, then the training transform. ``ours`` makes a
DetailCLIP training item (two augmented global views: crop, jitter, grey, blur, solarise,
normalise); ``open_clip`` is open_clip's training transform (``image_transform(is_train=True)``:
one random resized crop, normalise), run once per image as open_clip trains, and twice (the
views DetailCLIP needs) for the like-for-like figure. ``bench`` (section ``data``) reports the
loader's images/s per worker next to what a step consumes; this module measures the transform
itself, on photographs of the training size. The three take turns in short slices, so on a
shared machine their ratio holds even when the load changes.

    python -m detailclip_cli.tools.loader --size 224 --seconds 5
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from detailclip_cli.core.data.dataset import TwoViewDataset
from detailclip_cli.core.data.decode import decode_image
from detailclip_cli.core.data.transforms import AugmentConfig

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # CLIP's


def sample_jpegs(count: int = 8, *, side: int = 500) -> list[bytes]:
    """``count`` JPEG files (quality 90) of photographs scikit-image ships, resized so the longer
    side is ``side`` px (500: the typical web photo of CC3M / LAION), as bytes."""
    from skimage import data as photos

    names = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry"]
    files = []
    for k in range(count):
        image = Image.fromarray(np.asarray(getattr(photos, names[k % len(names)])())).convert("RGB")
        scale = side / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
        if k % 2:
            image = image.transpose(Image.Transpose.ROTATE_90)  # portrait as well as landscape
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        files.append(buffer.getvalue())
    return files


def images_per_second(prepares: dict[str, Callable[[bytes, int], object]], files: list[bytes], seconds: float,
                      *, rounds: int = 10) -> dict[str, float]:
    """Images each ``prepare(jpeg, index)`` handles per second on this thread.

    The candidates take turns, ``rounds`` slices of ``seconds / rounds`` each (after one warm-up
    pass), so a machine whose load changes during the run slows all of them alike and their
    ratio holds.
    """
    done = dict.fromkeys(prepares, 0)
    spent = dict.fromkeys(prepares, 0.0)
    for prepare in prepares.values():
        for i, f in enumerate(files):
            prepare(f, i)
    for _ in range(rounds):
        for name, prepare in prepares.items():
            start = time.perf_counter()
            while time.perf_counter() - start < seconds / rounds:
                prepare(files[done[name] % len(files)], done[name])
                done[name] += 1
            spent[name] += time.perf_counter() - start
    return {name: done[name] / spent[name] for name in prepares}


def measure(*, image_size: int = 224, seconds: float = 3.0, side: int = 500) -> dict[str, float]:
    """Images/s per core at ``image_size``: ours (two views), open_clip's (one view, and two)."""
    import open_clip

    torch.set_num_threads(1)
    files = sample_jpegs(side=side)
    ours = TwoViewDataset(None, image_size=image_size, mean=MEAN, std=STD,
                          aug=AugmentConfig.for_image_size(image_size), tokenize=None, seed=0)
    theirs = open_clip.image_transform(image_size, is_train=True, mean=MEAN, std=STD)

    def ours_item(jpeg: bytes, i: int) -> object:
        return ours.make_item(decode_image(jpeg, "bench.jpg"), i, "")

    def theirs_one(jpeg: bytes, i: int) -> object:
        return theirs(decode_image(jpeg, "bench.jpg"))

    def theirs_two(jpeg: bytes, i: int) -> object:
        image = decode_image(jpeg, "bench.jpg")
        return theirs(image), theirs(image)

    rates = images_per_second({"ours_two_views": ours_item, "open_clip_one_view": theirs_one,
                               "open_clip_two_views": theirs_two}, files, seconds)
    return {"image_size": image_size, "source_side": side, **{k: round(v, 1) for k, v in rates.items()},
            "ours_over_open_clip_two_views": round(rates["ours_two_views"] / rates["open_clip_two_views"], 3)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="training view side, px")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per figure")
    parser.add_argument("--side", type=int, default=500, help="longer side of the source photos, px")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    record = measure(image_size=args.size, seconds=args.seconds, side=args.side)
    text = json.dumps(record)
    print(text)
    if args.output is not None:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
