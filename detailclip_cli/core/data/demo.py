"""The built-in demo data sets, generated offline from what installed packages ship.

Two versions exist; ``--data demo`` is the latest, ``--data demo:v5`` names one:

- **v6** (the default, :mod:`.demo_textures`): one to three objects over a photo crop, classed by
  their pattern (striped, dotted, checkered, plain) in colours chosen independently of the class;
  validation photos are never used in training. Learnable by a tiny model in minutes, and its
  masks need learned features to segment.
- **v5** (:mod:`.demo_digits`): a handwritten digit over a photo crop, classed by its ink colour
  (a tiny model learns the colour, not the digit). Kept so figures made with it can be
  reproduced.

Every image comes with a caption and a per-pixel mask, so one set serves contrastive training
(captions), zero-shot and linear-probe evaluation (class folders) and segmentation probes
(masks). Layout under :func:`demo_root`::

    classes.json                      class names, in label order
    train.jsonl, val.jsonl            one JSON record per image (how it was made)
    train/<class>/<id>.png            RGB image, 64 x 64
    train/<class>/<id>.txt            caption, one line
    train/<class>/<id>.mask.png       mode "L": 0 = background, k + 1 = pixels of class k
    val/...                           the same

A set is generated from a fixed seed, so it is byte-identical on every machine with the same
scikit-image / scikit-learn / Pillow data and encoders.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from detailclip_cli.core.data import demo_digits, demo_textures
from detailclip_cli.core.data.demo_photos import COLOURS, load_backgrounds
from detailclip_cli.core.data.samples import DataError

DEMO_VERSIONS = ("v5", "v6")
LATEST_DEMO = "v6"
DEMO_VERSION = f"demo-{LATEST_DEMO}"  # the cache folder of the default set
DEMO_IMAGE_SIZE = 64
DEMO_SPLIT_SIZES = {"train": 2000, "val": 500}
DEMO_SEED = 20240906
# Fast zlib level: the files are tiny and generation time matters more than disk.
PNG_COMPRESS_LEVEL = 1

# A painter draws image ``j`` of a split: (rng, label) -> (image, mask, record).
Painter = Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray, dict]]


def demo_version(spec: str | Path) -> str | None:
    """The demo version a data spec names (``"demo"`` -> the latest, ``"demo:v5"`` -> ``"v5"``), else None.

    Raises:
        DataError: ``demo:`` followed by a version that does not exist.
    """
    spec = str(spec)
    if spec == "demo":
        return LATEST_DEMO
    if not spec.startswith("demo:"):
        return None
    version = spec.split(":", 1)[1]
    if version not in DEMO_VERSIONS:
        raise DataError(f"--data {spec}: the demo versions are {', '.join(DEMO_VERSIONS)}")
    return version


def demo_classes(version: str = LATEST_DEMO) -> list[str]:
    """The class names of a demo version, in label order (what its ``classes.json`` holds)."""
    return list(COLOURS) if version == "v5" else list(demo_textures.PATTERNS)


def demo_templates(version: str = LATEST_DEMO) -> tuple[str, ...]:
    """The zero-shot prompt templates of a demo version, in the words its captions use."""
    return demo_digits.ZERO_SHOT_TEMPLATES if version == "v5" else demo_textures.ZERO_SHOT_TEMPLATES


def default_cache_dir() -> Path:
    """The cache folder: ``$DETAILCLIP_CACHE`` if set, else ``~/.cache/detailclip``."""
    env = os.environ.get("DETAILCLIP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "detailclip"


def demo_root(cache_dir: Path | None = None, *, version: str = LATEST_DEMO) -> Path:
    """Return the folder of a demo set, generating it on first use.

    Generation writes into a temporary folder beside the final one and renames it into place,
    so a reader never sees a half-written set and two processes racing to create it both end up
    using one complete copy.

    Args:
        cache_dir: base cache folder; defaults to :func:`default_cache_dir`. A set lives in its
            ``demo-<version>`` sub-folder.
        version: one of :data:`DEMO_VERSIONS`.

    Returns:
        The demo root folder (contains ``classes.json``, ``train/`` and ``val/``).
    """
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = base / f"demo-{version}"
    # The rename below is atomic, so an existing root is always a complete one.
    if root.is_dir():
        return root
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".demo-{version}-", dir=base))
    try:
        generate_demo(tmp, version=version)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is meant to be shared
        try:
            os.rename(tmp, root)
        except OSError:
            # Another process finished first; its copy is identical, so use it.
            if not root.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def generate_demo(out_dir: Path, *, version: str = LATEST_DEMO, seed: int = DEMO_SEED,
                  sizes: dict[str, int] | None = None) -> None:
    """Write a demo set into ``out_dir`` (which must exist and be empty).

    Args:
        out_dir: destination folder.
        version: one of :data:`DEMO_VERSIONS`.
        seed: seed of every random choice.
        sizes: images per split; defaults to ``DEMO_SPLIT_SIZES``. Image ``j`` of a split is the
            same whatever the size, so a smaller set is a prefix of the full one.
    """
    if version not in DEMO_VERSIONS:
        raise DataError(f"unknown demo version {version!r} (there are {', '.join(DEMO_VERSIONS)})")
    out_dir = Path(out_dir)
    sizes = DEMO_SPLIT_SIZES if sizes is None else sizes
    classes = demo_classes(version)
    painters = _digit_painters(seed) if version == "v5" else _pattern_painters()
    (out_dir / "classes.json").write_text(json.dumps(classes) + "\n")
    for split, size in sizes.items():
        split_index = list(DEMO_SPLIT_SIZES).index(split)
        paint = painters[split]
        records = []
        for j in range(size):
            # One generator per image: any image can be regenerated alone, which keeps the
            # determinism test cheap and lets split sizes change without reshuffling the rest.
            rng = np.random.default_rng([seed, split_index, j])
            image, mask, record = paint(rng, j)
            record = {"id": f"{j:05d}", "split": split, **record}
            folder = out_dir / split / record["label"]
            folder.mkdir(parents=True, exist_ok=True)
            stem = folder / record["id"]
            Image.fromarray(image, mode="RGB").save(f"{stem}.png", compress_level=PNG_COMPRESS_LEVEL)
            Image.fromarray(mask, mode="L").save(f"{stem}.mask.png", compress_level=PNG_COMPRESS_LEVEL)
            Path(f"{stem}.txt").write_text(record["caption"] + "\n")
            records.append(record)
        with open(out_dir / f"{split}.jsonl", "w") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")


def _pattern_painters() -> dict[str, Painter]:
    """Demo v6: image ``j`` shows pattern ``j % 4``; validation photos are held out of training."""
    photos = load_backgrounds()
    val = {n: p for n, p in photos.items() if n in demo_textures.VAL_BACKGROUNDS}
    train = {n: p for n, p in photos.items() if n not in demo_textures.VAL_BACKGROUNDS}
    n = len(demo_textures.PATTERNS)

    def painter(backgrounds: dict[str, Image.Image]) -> Painter:
        return lambda rng, j: demo_textures.compose(rng, backgrounds, j % n, size=DEMO_IMAGE_SIZE)

    return {"train": painter(train), "val": painter(val)}


def _digit_painters(seed: int) -> dict[str, Painter]:
    """Demo v5: image ``j`` shows digit ``j % 10``, drawn from digit images its split owns."""
    photos = load_backgrounds()
    digit_images, digit_targets = demo_digits.load_digits()
    # Split the digit *source* images, so validation digits are drawings never seen in training.
    order = np.random.default_rng(seed).permutation(len(digit_targets))
    n_val = int(round(demo_digits.VAL_DIGIT_FRACTION * len(order)))
    pools = {"train": np.sort(order[n_val:]), "val": np.sort(order[:n_val])}

    def painter(pool: np.ndarray) -> Painter:
        def paint(rng: np.random.Generator, j: int) -> tuple[np.ndarray, np.ndarray, dict]:
            # Cycling through the digits gives exactly size / 10 images of each digit.
            label = j % len(demo_digits.DIGIT_WORDS)
            source = int(rng.choice(pool[digit_targets[pool] == label]))
            image, mask, record = demo_digits.compose(rng, photos, digit_images[source], label,
                                                      size=DEMO_IMAGE_SIZE)
            return image, mask, {"digit_source": source, **record}

        return paint

    return {split: painter(pool) for split, pool in pools.items()}
