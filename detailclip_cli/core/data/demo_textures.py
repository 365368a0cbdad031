"""Demo v6: scenes of patterned objects over photos, classed by their pattern.

Each 64x64 image is a crop of one of scikit-image's bundled photos with one or two objects
painted over it (a disc, a square, a diamond or an ellipse, 26-40 px across: at least 3 x 3
patches of the tiny preset). Every object in an image carries the same **pattern**, the image's
class: ``striped``, ``dotted``, ``checkered`` or ``plain``. The pattern is drawn in two colours
chosen at random from a palette of eight, independently of the class, at a random period and
phase, along one image axis or the other, so neither colour nor a fixed pixel layout tells the
classes apart: a model has to learn what stripes, dots and checks look like. This is the kind of fine, local
property a tiny ViT *can* learn in minutes on two CPU cores (a supervised tiny ViT does; it does
not learn global shape or digit identity in that budget: see docs/experiments.md).

Validation images use two photos that no training image uses, and fresh objects.

Captions always name the pattern, sometimes a shape, the number of objects or the colours. Per-pixel masks hold 0 for the photo and ``k + 1`` on the objects of
class ``k``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from detailclip_cli.core.data.demo_photos import COLOURS, random_crop

PATTERNS = ("striped", "dotted", "checkered", "plain")
SHAPES = ("disc", "square", "diamond", "ellipse")
# The photos validation images are cut from; training never sees them.
VAL_BACKGROUNDS = ("chelsea", "coffee")
# Pixels, inclusive: 3-5 patches of the tiny preset across. With 1-3 objects of 18-30 px a tiny
# DetailCLIP stayed at chance zero-shot after 300 steps; with these, 86.6 % after 600
# (docs/experiments.md).
OBJECT_SIZE_RANGE = (26, 40)
MAX_OBJECTS = 2
# Every object spans at least this many pixels both ways: 2 patches of the tiny preset, plus a
# margin for the anti-aliasing-free edge of a shape drawn on the pixel grid.
MIN_EXTENT = 17
PERIOD_RANGE = (4.0, 8.0)  # pixels per stripe / dot / check pair
# Patterns run along the image axes: stripes horizontal or vertical, dots and checks on an
# upright grid. At any angle a supervised tiny ViT reached 67 % validation accuracy after 450
# steps; axis-aligned, 82 % after 224 (docs/experiments.md). Period, phase and colours stay random.
ANGLES = (0.0, np.pi / 2)
# Two colours of one object must differ this much in luma (0-255) for its pattern to be visible.
MIN_PATTERN_CONTRAST = 70.0
COUNT_WORDS = ("one", "two", "three")

# Every caption names the pattern; few name anything easier to read than the pattern. With
# colours in two captions of ten, and counts, shapes or the photo in four more, a tiny CLIP
# lowered its loss on those and stayed at chance on the patterns after 300 steps (the lesson of
# demo v1 for digits, again): a word that is cheaper to see than the class is learned first.
CAPTION_TEMPLATES = (
    "{a_pattern} {shape}",
    "{pattern} objects",
    "something {pattern}",
    "{a_pattern} pattern",
    "{pattern} shapes",
    "{pattern}",
    "{pattern} things",
    "{count_word} {pattern} {shapes}",
    "{a_pattern} object",
    "{pattern} {colours} {shapes}",
)

ZERO_SHOT_TEMPLATES = (
    "{} objects.",
    "{} shapes.",
    "something {}.",
    "a {} pattern.",
)


def compose(rng: np.random.Generator, backgrounds: dict[str, Image.Image], label: int, *,
            size: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Paint one or two objects of pattern ``PATTERNS[label]`` over a crop of one of ``backgrounds``.

    Args:
        rng: the generator every choice is drawn from (in a fixed order).
        backgrounds: the photos this split may use, by ``skimage.data`` name.
        label: the pattern's index in :data:`PATTERNS`.
        size: the image side in pixels.

    Returns:
        ``image`` ``(S, S, 3)`` uint8, ``mask`` ``(S, S)`` uint8 (0, or ``label + 1`` on the
        objects) and a record of the choices made, including the caption.
    """
    names = sorted(backgrounds)
    bg_name = names[int(rng.integers(len(names)))]
    image = random_crop(rng, backgrounds[bg_name], size)
    palette = COLOURS
    mask = np.zeros((size, size), dtype=np.uint8)
    wanted = int(rng.integers(1, MAX_OBJECTS + 1))
    boxes: list[tuple[int, int, int, int]] = []
    objects = []
    colour_names = list(palette)
    for _ in range(20):  # rejection sampling of non-overlapping boxes
        if len(boxes) == wanted:
            break
        d = int(rng.integers(OBJECT_SIZE_RANGE[0], OBJECT_SIZE_RANGE[1] + 1))
        x0, y0 = int(rng.integers(size - d + 1)), int(rng.integers(size - d + 1))
        box = (x0, y0, x0 + d, y0 + d)
        if any(_overlap(box, other) for other in boxes):
            continue
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        first, second = _two_colours(rng, colour_names, palette)
        inside = _shape_mask(shape, d, rng)
        paint = _pattern(PATTERNS[label], d, rng, np.array(palette[first], np.float32),
                         np.array(palette[second], np.float32))
        region = image[y0 : y0 + d, x0 : x0 + d]
        region[inside] = paint[inside]
        mask[y0 : y0 + d, x0 : x0 + d][inside] = label + 1
        boxes.append(box)
        objects.append({"shape": shape, "colours": [first, second] if PATTERNS[label] != "plain" else [first],
                        "box": list(box)})
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    pattern = PATTERNS[label]
    shapes = sorted({o["shape"] for o in objects})
    shape = objects[0]["shape"]
    plural = f"{shape}s" if len(shapes) == 1 else "shapes"
    colours = sorted({c for o in objects for c in o["colours"]})
    template = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]
    article = "an" if pattern[0] in "aeiou" else "a"
    caption = template.format(
        count_word=COUNT_WORDS[len(objects) - 1],
        pattern=pattern,
        a_pattern=f"{article} {pattern}",
        shape=shape,
        shapes=plural if len(objects) > 1 else shape,
        colours=" and ".join(colours),
    )
    record = {"label": pattern, "background": bg_name, "objects": objects, "caption": caption}
    return image, mask, record


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _two_colours(rng: np.random.Generator, names: list[str],
                 palette: dict[str, tuple[int, int, int]]) -> tuple[str, str]:
    """Two palette colours whose lumas differ by at least ``MIN_PATTERN_CONTRAST``."""
    luma = {n: 0.299 * palette[n][0] + 0.587 * palette[n][1] + 0.114 * palette[n][2] for n in names}
    first = names[int(rng.integers(len(names)))]
    partners = [n for n in names if abs(luma[n] - luma[first]) >= MIN_PATTERN_CONTRAST]
    if not partners:  # no colour is far enough: take the most distant one
        partners = [max(names, key=lambda n: abs(luma[n] - luma[first]))]
    return first, partners[int(rng.integers(len(partners)))]


def _shape_mask(shape: str, d: int, rng: np.random.Generator) -> np.ndarray:
    """``(d, d)`` bool: the pixels inside a ``shape`` filling a ``d`` x ``d`` box."""
    c = (d - 1) / 2.0
    y, x = np.mgrid[0:d, 0:d].astype(np.float32)
    u, v = (x - c) / (d / 2.0), (y - c) / (d / 2.0)
    if shape == "disc":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.ones((d, d), dtype=bool)
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    # ellipse: one axis full, the other 60-80 % of it but at least MIN_EXTENT, either way round
    squash = max(float(rng.uniform(0.6, 0.8)), MIN_EXTENT / d)
    if rng.integers(2):
        u, v = v, u
    return u * u + (v / squash) ** 2 <= 1.0


def _pattern(name: str, d: int, rng: np.random.Generator, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """``(d, d, 3)`` float32: pattern ``name`` in two colours, at a random period, orientation and phase."""
    period = float(rng.uniform(*PERIOD_RANGE))
    angle = float(ANGLES[int(rng.integers(len(ANGLES)))])
    phase_x, phase_y = rng.uniform(0.0, period, size=2)
    y, x = np.mgrid[0:d, 0:d].astype(np.float32)
    # Coordinates in the pattern's rotated frame, shifted by its phase.
    s = x * np.cos(angle) + y * np.sin(angle) + phase_x
    t = -x * np.sin(angle) + y * np.cos(angle) + phase_y
    if name == "striped":
        on = (s % period) < period / 2.0
    elif name == "checkered":
        on = ((s % period) < period / 2.0) ^ ((t % period) < period / 2.0)
    elif name == "dotted":
        ds = (s % period) - period / 2.0
        dt = (t % period) - period / 2.0
        on = ds * ds + dt * dt <= (0.3 * period) ** 2
    else:  # plain
        on = np.ones((d, d), dtype=bool)
    return np.where(on[:, :, None], first, second).astype(np.float32)
