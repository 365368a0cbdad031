"""A small built-in data set, generated offline from images that ship inside installed packages.

Each demo image is a 64x64 crop of one of scikit-image's bundled photos with one handwritten
digit from scikit-learn's ``load_digits`` painted over it. Every image comes with a caption
naming the digit and often its colour and the photo, and with a per-pixel mask of the digit's
strokes, so the same set serves contrastive training (captions), zero-shot and linear-probe
evaluation (class folders) and segmentation probes (masks).

The classes are the eight ink colours, not the ten digits. A tiny model trained for minutes on
two CPU cores reads the colour (the shipped model: 91 % zero-shot) but not the digit's shape
(chance, even under supervision for a tiny ViT: see ``examples/digit_learnability.py`` and the
README), so colour classes are the label whose figures move with training; each record still
names its digit.

Layout under :func:`demo_root`::

    classes.json                      ["red", "green", ..., "purple"], in label order
    train.jsonl, val.jsonl            one JSON record per image (how it was made)
    train/<class>/<id>.png            RGB image
    train/<class>/<id>.txt            caption, one line
    train/<class>/<id>.mask.png       mode "L": 0 = background, k + 1 = strokes of colour class k
    val/...                           the same

The set is generated from a fixed seed, so it is byte-identical on every machine with the same
scikit-image / scikit-learn / Pillow data and encoders.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

DEMO_VERSION = "demo-v5"
DEMO_IMAGE_SIZE = 64
DEMO_SPLIT_SIZES = {"train": 2000, "val": 500}
DEMO_SEED = 20240906
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# skimage.data loader name -> how a caption names it. All of these ship inside the scikit-image
# wheel (no pooch download), which is why e.g. ``eagle`` is not here.
BACKGROUNDS = {
    "astronaut": "an astronaut",
    "chelsea": "a cat",
    "coffee": "a cup of coffee",
    "rocket": "a rocket",
    "horse": "a horse silhouette",
    "camera": "a cameraman",
    "immunohistochemistry": "stained tissue",
    "hubble_deep_field": "deep space",
    "brick": "a brick wall",
    "grass": "grass",
}

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 60),
    "blue": (30, 70, 230),
    "yellow": (245, 225, 40),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
    "orange": (250, 140, 20),
    "purple": (150, 50, 200),
}

# A 3x3 grid of placements: (row, column) -> the phrase a caption uses.
POSITIONS = {
    (0, 0): "in the upper left",
    (0, 1): "at the top",
    (0, 2): "in the upper right",
    (1, 0): "on the left",
    (1, 1): "in the centre",
    (1, 2): "on the right",
    (2, 0): "in the lower left",
    (2, 1): "at the bottom",
    (2, 2): "in the lower right",
}

# Captions centre on what zero-shot and dense evaluation ask about: the digit. Half name only
# the digit, three in ten add its colour, two in ten its colour and the background photo. When
# every caption names the background, colour and position (demo-v1), the combinations are almost
# unique within a batch and the contrastive loss is solved without reading the digit: after 200
# steps retrieval was far above chance while zero-shot digit accuracy stayed at chance. With
# digit + colour in every caption (demo-v2) a 600-step tiny model reached 79 % zero-shot
# accuracy on the colour and still 10 % (chance) on the digit.
CAPTION_TEMPLATES = (
    "a handwritten {word}",
    "the digit {num}",
    "the number {word}, written by hand",
    "a handwritten digit: {word}",
    "the digit {word}",
    "{a_colour} handwritten {word}",
    "the digit {num} written in {colour}",
    "{a_colour} digit {word}",
    "{a_colour} handwritten {word} over a photo of {bg}",
    "the digit {num} painted {colour} over {bg}",
)

# Prompt templates for zero-shot classification of the demo classes (the ink colours), in the
# words the captions use for colours.
ZERO_SHOT_TEMPLATES = (
    "a {} handwritten digit.",
    "a digit written in {}.",
    "a {} digit.",
    "a handwritten digit painted {}.",
)

DIGIT_SIZE_RANGE = (36, 52)  # pixels, inclusive
VAL_DIGIT_FRACTION = 0.2
# A colour must differ this much (RGB Euclidean distance) from most of the photo under the
# strokes, so the digit stays visible; otherwise the most distant colour is used.
MIN_COLOUR_CONTRAST = 120.0
BACKGROUND_SHORT_SIDE = 256
# Fast zlib level: the files are tiny and generation time matters more than disk.
PNG_COMPRESS_LEVEL = 1


def default_cache_dir() -> Path:
    """The cache folder: ``$DETAILCLIP_CACHE`` if set, else ``~/.cache/detailclip``."""
    env = os.environ.get("DETAILCLIP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "detailclip"


def demo_root(cache_dir: Path | None = None) -> Path:
    """Return the folder of the demo data set, generating it on first use.

    Generation writes into a temporary folder beside the final one and renames it into place,
    so a reader never sees a half-written set and two processes racing to create it both end up
    using one complete copy.

    Args:
        cache_dir: base cache folder; defaults to :func:`default_cache_dir`. The set lives in
            its ``DEMO_VERSION`` sub-folder.

    Returns:
        The demo root folder (contains ``classes.json``, ``train/`` and ``val/``).
    """
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = base / DEMO_VERSION
    # The rename below is atomic, so an existing root is always a complete one.
    if root.is_dir():
        return root
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEMO_VERSION}-", dir=base))
    try:
        generate_demo(tmp)
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


def generate_demo(out_dir: Path, *, seed: int = DEMO_SEED, sizes: dict[str, int] | None = None) -> None:
    """Write the demo set into ``out_dir`` (which must exist and be empty).

    Args:
        out_dir: destination folder.
        seed: seed of every random choice.
        sizes: images per split; defaults to ``DEMO_SPLIT_SIZES``. Image ``j`` of a split is the
            same whatever the size, so a smaller set is a prefix of the full one.
    """
    out_dir = Path(out_dir)
    sizes = DEMO_SPLIT_SIZES if sizes is None else sizes
    backgrounds = _load_backgrounds()
    digit_images, digit_targets = _load_digits()

    # Split the digit *source* images, so validation digits are drawings never seen in training.
    order = np.random.default_rng(seed).permutation(len(digit_targets))
    n_val = int(round(VAL_DIGIT_FRACTION * len(order)))
    pools = {"train": np.sort(order[n_val:]), "val": np.sort(order[:n_val])}

    (out_dir / "classes.json").write_text(json.dumps(list(COLOURS)) + "\n")
    for split, size in sizes.items():
        split_index = list(DEMO_SPLIT_SIZES).index(split)
        pool = pools[split]
        records = []
        for j in range(size):
            # One generator per image: any image can be regenerated alone, which keeps the
            # determinism test cheap and lets split sizes change without reshuffling the rest.
            rng = np.random.default_rng([seed, split_index, j])
            # Cycling through the digits gives exactly size / 10 images of each digit.
            label = j % len(DIGIT_WORDS)
            candidates = pool[digit_targets[pool] == label]
            source = int(rng.choice(candidates))
            image, mask, record = _compose(rng, backgrounds, digit_images[source], label)
            record = {"id": f"{j:05d}", "split": split, "digit_source": source, **record}
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


def _load_backgrounds() -> dict[str, Image.Image]:
    """The bundled photos as RGB PIL images, keyed by their ``skimage.data`` name."""
    import skimage.data

    out = {}
    for name in BACKGROUNDS:
        array = np.asarray(getattr(skimage.data, name)())
        if array.dtype == bool:  # horse is a binary silhouette
            array = array.astype(np.uint8) * 255
        if array.ndim == 2:
            array = np.repeat(array[:, :, None], 3, axis=2)
        photo = Image.fromarray(np.ascontiguousarray(array[:, :, :3]).astype(np.uint8), mode="RGB")
        # Every crop ends up 64 px wide, so shrinking the photos once up front loses nothing
        # visible and makes the thousands of per-image resizes cheap.
        scale = BACKGROUND_SHORT_SIDE / min(photo.size)
        if scale < 1.0:
            photo = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.LANCZOS)
        out[name] = photo
    return out


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's handwritten digits: images ``(N, 8, 8)`` in [0, 16] and targets ``(N,)``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype(np.float32), digits.target.astype(np.int64)


def _compose(
    rng: np.random.Generator, backgrounds: dict[str, Image.Image], digit: np.ndarray, label: int
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Paint one digit over one background crop.

    Args:
        rng: the generator all choices are drawn from (in a fixed order).
        backgrounds: output of :func:`_load_backgrounds`.
        digit: ``(8, 8)`` digit image in [0, 16].
        label: the digit's class.

    Returns:
        ``image`` ``(S, S, 3)`` uint8, ``mask`` ``(S, S)`` uint8 (0, or the colour's class
        index + 1 on the strokes) and a record of the choices made, including the caption.
    """
    size = DEMO_IMAGE_SIZE
    names = list(BACKGROUNDS)
    bg_name = names[int(rng.integers(len(names)))]
    photo = backgrounds[bg_name]
    short = min(photo.size)
    side = int(rng.integers(int(0.35 * short), short + 1))
    left = int(rng.integers(photo.width - side + 1))
    top = int(rng.integers(photo.height - side + 1))
    crop = photo.resize((size, size), Image.BILINEAR, box=(left, top, left + side, top + side))
    image = np.asarray(crop, dtype=np.float32)

    # Smooth upscaling turns the 8x8 grid into strokes; alpha in [0, 1] keeps soft edges. The
    # zero border lets strokes that touch the 8x8 edge fade out instead of ending in a hard line.
    d = int(rng.integers(DIGIT_SIZE_RANGE[0], DIGIT_SIZE_RANGE[1] + 1))
    padded = np.pad(digit, 1)
    up = np.asarray(Image.fromarray(padded, mode="F").resize((d, d), Image.BICUBIC))
    alpha = np.clip(up / 16.0, 0.0, 1.0)

    row, col = int(rng.integers(3)), int(rng.integers(3))
    # The free range of the top-left corner, split in thirds: the digit lands in grid cell (row, col).
    free = size - d
    y0 = int(rng.integers(row * free // 3, (row + 1) * free // 3 + 1))
    x0 = int(rng.integers(col * free // 3, (col + 1) * free // 3 + 1))

    strokes = alpha > 0.5
    under = image[y0 : y0 + d, x0 : x0 + d][strokes]  # (n, 3) photo pixels under the strokes
    colour_names = list(COLOURS)
    palette = np.array([COLOURS[c] for c in colour_names], dtype=np.float32)  # (C, 3)
    per_pixel = np.linalg.norm(palette[:, None, :] - under[None, :, :], axis=2)  # (C, n)
    # A low percentile rather than the mean: a stroke half over a matching colour is unreadable.
    distance = np.percentile(per_pixel, 20, axis=1)  # (C,)
    visible = [c for c, dist in zip(colour_names, distance) if dist >= MIN_COLOUR_CONTRAST]
    colour = visible[int(rng.integers(len(visible)))] if visible else colour_names[int(distance.argmax())]

    region = image[y0 : y0 + d, x0 : x0 + d]
    a = alpha[:, :, None]
    image[y0 : y0 + d, x0 : x0 + d] = region * (1.0 - a) + np.array(COLOURS[colour], np.float32) * a
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    mask = np.zeros((size, size), dtype=np.uint8)
    mask[y0 : y0 + d, x0 : x0 + d][strokes] = colour_names.index(colour) + 1

    where = POSITIONS[(row, col)]
    template = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]
    article = "an" if colour[0] in "aeiou" else "a"
    caption = template.format(
        colour=colour,
        a_colour=f"{article} {colour}",
        word=DIGIT_WORDS[label],
        num=label,
        where=where,
        bg=BACKGROUNDS[bg_name],
    )
    record = {
        "label": colour,
        "digit": DIGIT_WORDS[label],
        "background": bg_name,
        "colour": colour,
        "position": where.split(" ", 2)[-1],
        "digit_size": d,
        "box": [x0, y0, x0 + d, y0 + d],
        "caption": caption,
    }
    return image, mask, record
