"""What every demo version paints on: scikit-image's bundled photos and a palette of named colours."""

from __future__ import annotations

import numpy as np
from PIL import Image

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

BACKGROUND_SHORT_SIDE = 256


def load_backgrounds() -> dict[str, Image.Image]:
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


def random_crop(rng: np.random.Generator, photo: Image.Image, size: int) -> np.ndarray:
    """A random square crop of ``photo`` (35-100 % of its shorter side) resized to ``size``
    pixels, as float32 RGB ``(size, size, 3)``; three draws from ``rng``: side, left, top."""
    short = min(photo.size)
    side = int(rng.integers(int(0.35 * short), short + 1))
    left = int(rng.integers(photo.width - side + 1))
    top = int(rng.integers(photo.height - side + 1))
    crop = photo.resize((size, size), Image.BILINEAR, box=(left, top, left + side, top + side))
    return np.asarray(crop, dtype=np.float32).copy()
