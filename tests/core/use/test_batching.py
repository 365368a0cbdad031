"""Image files to normalised batches, and back to pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from detailclip_cli.core.data import DataError, load_image, make_eval_transform
from detailclip_cli.core.use import batching


def test_image_batches_report_bad_files_and_fit_any_size(tmp_path, model):
    v = model.cfg.vision
    good = tmp_path / "wide.png"
    Image.fromarray(np.zeros((30, 90, 3), dtype=np.uint8)).save(good)
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    batches = list(batching.iter_image_batches([good, bad, good], image_size=v.image_size, mean=v.mean, std=v.std,
                                          batch_size=2))
    assert [b.paths for b in batches] == [[good], [good]]
    assert batches[0].images.shape == (1, 3, v.image_size, v.image_size)
    assert [p for p, _ in batches[0].errors] == [bad] and "notes.txt" in batches[0].errors[0][1]


def test_load_images_is_one_batch_for_the_model(tmp_path, model):
    v = model.cfg.vision
    wide, tall = tmp_path / "wide.png", tmp_path / "tall.jpg"
    Image.fromarray(np.full((30, 90, 3), 200, dtype=np.uint8)).save(wide)
    Image.effect_noise((40, 120), 50).convert("RGB").save(tall)
    images = batching.load_images([wide, str(tall)], model)
    assert images.shape == (2, 3, v.image_size, v.image_size) and images.device == model.logit_scale.device
    transform = make_eval_transform(image_size=v.image_size, mean=v.mean, std=v.std)
    assert torch.equal(images[1], transform(load_image(tall)))
    # Normalised with the model's statistics: back to pixels, the flat grey image is 200 / 255.
    torch.testing.assert_close(batching.to_pixels(images[:1], v.mean, v.std), torch.full_like(images[:1], 200 / 255),
                               atol=1e-6, rtol=0)
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    with pytest.raises(DataError, match="notes.txt"):
        batching.load_images([wide, bad], model)
    with pytest.raises(DataError, match="no images"):
        batching.load_images([], model)


@pytest.mark.parametrize("device, threads, expected", [
    (None, 1, 7),          # an accelerator (or no model yet): every core but the main process's
    ("cuda", 8, 7),
    ("cpu", 8, 0),         # torch's threads already run on all 8 cores: nothing left for workers
    ("cpu", 1, 7),         # OMP_NUM_THREADS=1: the other 7 cores decode
    ("cpu", 3, 5),
])
def test_default_workers_counts_the_cores_the_model_leaves_free(monkeypatch, device, threads, expected):
    monkeypatch.setattr(batching.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(batching.torch, "get_num_threads", lambda: threads)
    assert batching.default_workers(1000, device=device) == expected
    assert batching.default_workers(10, device=device) == 0  # a handful of images: no worker start-up
    monkeypatch.setattr(batching.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    busy = threads if device == "cpu" else 1
    assert batching.default_workers(device=device) == min(batching.MAX_DEFAULT_WORKERS, 64 - busy)  # capped
