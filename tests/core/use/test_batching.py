"""Image files to normalised batches, and back to pixels."""

from __future__ import annotations

import os

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


@pytest.mark.parametrize("workers", [0, 1])
def test_image_batches_equal_the_per_image_transform_bitwise(tmp_path, model, workers):
    # The reader carries uint8 pixels and normalises each batch at once; that must change no bit.
    v = model.cfg.vision
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(40, 90), (64, 64), (120, 50), (7, 9), (64, 64)]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    transform = make_eval_transform(image_size=v.image_size, mean=v.mean, std=v.std)
    batches = list(batching.iter_image_batches(paths, image_size=v.image_size, mean=v.mean, std=v.std,
                                               batch_size=3, workers=workers))
    assert [b.indices for b in batches] == [[0, 1, 2], [3, 4]]
    got = torch.cat([b.images for b in batches])
    assert got.dtype == torch.float32
    assert torch.equal(got, torch.stack([transform(load_image(p)) for p in paths]))


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


@pytest.mark.parametrize("device, cores, expected", [
    (None, 8, 7),    # an accelerator (or no model yet): the workers decode, the main process feeds it
    ("cuda", 8, 7),
    ("cpu", 8, 8),   # on a CPU the workers also encode, one thread each: every core is a worker's
    ("cpu", 2, 2),
    ("cpu", 1, 1),
    ("cuda", 1, 0),
    ("cpu", 64, batching.MAX_DEFAULT_WORKERS),  # capped
    ("cuda", 64, batching.MAX_DEFAULT_WORKERS),
])
def test_default_workers_gives_each_core_a_worker(monkeypatch, device, cores, expected):
    monkeypatch.setattr(batching.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(batching.torch, "get_num_threads", lambda: 3)  # the main process's threads do not count
    assert batching.default_workers(1000, device=device) == expected
    assert batching.default_workers(10, device=device) == 0  # a handful of images: no worker start-up


class _Doubler:
    """An encoder that records the process and thread count it ran with (picklable)."""

    device = torch.device("cpu")

    def __call__(self, images):
        return torch.stack([images.mean(dim=(1, 2, 3)) * 2, torch.full((len(images),), float(os.getpid())),
                            torch.full((len(images),), float(torch.get_num_threads()))], dim=1)  # (b, 3)


@pytest.mark.parametrize("workers", [0, 2])
def test_encode_runs_in_the_workers_on_a_cpu_and_keeps_the_order(tmp_path, model, workers):
    v = model.cfg.vision
    paths = []
    for i in range(7):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((20, 30, 3), 30 * i, dtype=np.uint8)).save(paths[-1])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"no")
    paths.insert(3, bad)
    batches = list(batching.iter_image_batches(paths, image_size=v.image_size, mean=v.mean, std=v.std,
                                               batch_size=3, workers=workers, encode=_Doubler()))
    assert all(b.images is None for b in batches)
    assert [b.indices for b in batches] == [[0, 1, 2], [4, 5], [6, 7]]
    assert [p for b in batches for p, _ in b.errors] == [bad]
    out = torch.cat([b.outputs for b in batches])
    transform = make_eval_transform(image_size=v.image_size, mean=v.mean, std=v.std)
    good = [p for p in paths if p != bad]
    expected = torch.stack([transform(load_image(p)) for p in good]).mean(dim=(1, 2, 3)) * 2
    assert torch.equal(out[:, 0], expected)
    pids = set(out[:, 1].tolist())
    if workers:
        assert os.getpid() not in pids and len(pids) == 2  # two worker processes did the encoding
        assert set(out[:, 2].tolist()) == {1.0}  # on one thread each
    else:
        assert pids == {os.getpid()}


def test_encode_of_a_model_in_workers_equals_the_main_process(tmp_path, model):
    from detailclip_cli.core.use.embed import ImageEncoder, encode_images

    v = model.cfg.vision
    rng = np.random.default_rng(1)
    paths = []
    for i in range(6):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (v.image_size, v.image_size, 3), dtype=np.uint8)).save(paths[-1])
    got = [torch.cat([b.outputs for b in batching.iter_image_batches(
        paths, image_size=v.image_size, mean=v.mean, std=v.std, batch_size=4, workers=w,
        encode=ImageEncoder(model))]) for w in (0, 2)]
    reference = encode_images(model, batching.load_images(paths, model))
    for out in got:
        assert out.shape == (6, model.cfg.embed_dim)
        torch.testing.assert_close(out, reference, atol=1e-6, rtol=0)
