"""Demo v5: one handwritten digit over a photo, classed by its ink colour.

Each 64x64 image is a crop of one of scikit-image's bundled photos with one handwritten digit
from scikit-learn's ``load_digits`` painted over it. The classes are the eight ink colours, not
the ten digits: a tiny model trained for minutes on two CPU cores reads the colour but not the
digit's shape (chance, even under supervision for a tiny ViT: ``examples/digit_learnability.py``),
so colour was the label whose figures moved with training; each record still names its digit.
Masks hold ``k + 1`` on the strokes of colour class ``k``. Kept as ``--data demo:v5`` so figures
made with it can be reproduced; demo v6 (:mod:`.demo_textures`) is the default.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from detailclip_cli.core.data.demo_photos import BACKGROUNDS, COLOURS, random_crop

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

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


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's handwritten digits: images ``(N, 8, 8)`` in [0, 16] and targets ``(N,)``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype(np.float32), digits.target.astype(np.int64)


def compose(
    rng: np.random.Generator, backgrounds: dict[str, Image.Image], digit: np.ndarray, label: int, *, size: int
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Paint one digit over one background crop.

    Args:
        rng: the generator all choices are drawn from (in a fixed order).
        backgrounds: output of :func:`_load_backgrounds`.
        digit: ``(8, 8)`` digit image in [0, 16].
        label: the digit's class.
        size: the image side in pixels.

    Returns:
        ``image`` ``(S, S, 3)`` uint8, ``mask`` ``(S, S)`` uint8 (0, or the colour's class
        index + 1 on the strokes) and a record of the choices made, including the caption.
    """
    names = list(BACKGROUNDS)
    bg_name = names[int(rng.integers(len(names)))]
    image = random_crop(rng, backgrounds[bg_name], size)

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
