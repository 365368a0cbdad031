"""Embedding files: written rows equal the towers' embeddings, every format reads back, a run
killed halfway resumes into the same bytes, unreadable images are named and left out."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detailclip_cli.core.use import embfile
from detailclip_cli.core.use.batching import TarMember, image_sources, load_images
from detailclip_cli.errors import UsageError


def _write_images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (40 + i, 48, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory):
    return _write_images(tmp_path_factory.mktemp("imgs"), 7)


def _reference(model, paths) -> torch.Tensor:
    with torch.no_grad():
        return model.encode_image(load_images(paths, model))  # (N, E), unit norm


@pytest.mark.parametrize("suffix", [".safetensors", ".npy", ".jsonl"])
def test_round_trip_equals_encode_image_and_text(model, image_paths, tmp_path, suffix):
    texts = ["a red circle", "", "ünïcode ✓"]
    out = tmp_path / f"emb{suffix}"
    report = embfile.embed_to_file(model, images=image_paths, texts=texts, output=out, batch_size=2,
                                   chunk_size=4, model_spec="some/model")
    assert report.rows == 10 and not report.failed and report.computed_chunks == 3
    rows = embfile.read_embeddings(out)
    assert rows.ids == [str(p) for p in image_paths] + texts
    assert rows.kinds == ["image"] * 7 + ["text"] * 3
    with torch.no_grad():
        want_text = model.encode_text(model.tokenize(texts))
    assert torch.allclose(rows.embeddings[:7], _reference(model, image_paths), atol=1e-6, rtol=0)
    assert torch.allclose(rows.embeddings[7:], want_text, atol=1e-6, rtol=0)
    assert not out.with_name(out.name + ".parts").exists()  # the chunks are gone once assembled
    if suffix == ".safetensors":
        assert rows.meta["model_spec"] == "some/model" and rows.meta["which"] == "image"


def test_killed_run_resumes_into_the_same_file(model, image_paths, tmp_path):
    whole = tmp_path / "whole.safetensors"
    embfile.embed_to_file(model, images=image_paths, output=whole, batch_size=2, chunk_size=2)

    class Killed(Exception):
        pass

    def kill_after_second(chunk: int) -> None:
        if chunk == 1:
            raise Killed

    resumed = tmp_path / "resumed.safetensors"
    with pytest.raises(Killed):
        embfile.embed_to_file(model, images=image_paths, output=resumed, batch_size=2, chunk_size=2,
                              on_chunk=kill_after_second)
    assert not resumed.exists() and len(list((tmp_path / "resumed.safetensors.parts").iterdir())) == 2
    report = embfile.embed_to_file(model, images=image_paths, output=resumed, batch_size=2, chunk_size=2)
    assert (report.skipped_chunks, report.computed_chunks) == (2, 2)
    assert resumed.read_bytes() == whole.read_bytes()


def test_chunks_of_another_model_or_input_list_are_recomputed(model, image_paths, tmp_path):
    out = tmp_path / "e.safetensors"
    parts = tmp_path / "e.safetensors.parts"
    def stop(chunk: int) -> None:
        if chunk == 1:
            raise InterruptedError

    with pytest.raises(InterruptedError):
        embfile.embed_to_file(model, images=image_paths[:6], output=out, batch_size=2, chunk_size=2, on_chunk=stop)
    assert len(list(parts.iterdir())) == 2
    # other inputs in the same places: nothing is reused
    report = embfile.embed_to_file(model, images=image_paths[3:], output=out, batch_size=2, chunk_size=2)
    assert report.skipped_chunks == 0 and report.computed_chunks == 2


def test_unreadable_images_are_named_and_left_out(model, image_paths, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    named = []
    out = tmp_path / "e.npy"
    report = embfile.embed_to_file(model, images=[image_paths[0], bad, image_paths[1]], output=out, batch_size=2,
                                   on_error=lambda name, message: named.append(name))
    assert named == [str(bad)] and [f for f, _ in report.failed] == [str(bad)]
    rows = embfile.read_embeddings(out)
    assert rows.ids == [str(image_paths[0]), str(image_paths[1])]
    assert torch.allclose(rows.embeddings, _reference(model, image_paths[:2]), atol=1e-6, rtol=0)


def test_tar_members_embed_like_the_files(model, image_paths, tmp_path):
    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w") as tar:
        for path in image_paths[:3]:
            tar.add(path, arcname=f"k/{path.name}")
        info = tarfile.TarInfo("k/000.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"cap"))
    sources = image_sources([shard, image_paths[3]])
    assert [str(s) for s in sources] == [f"{shard}/k/{p.name}" for p in image_paths[:3]] + [str(image_paths[3])]
    assert isinstance(sources[0], TarMember)
    out = tmp_path / "t.safetensors"
    embfile.embed_to_file(model, images=sources, output=out, batch_size=4)
    assert torch.allclose(embfile.read_embeddings(out).embeddings, _reference(model, image_paths[:4]), atol=1e-6,
                          rtol=0)


def test_patch_tokens_and_jsonl_on_stdout(model, image_paths, capsys):
    embfile.embed_to_file(model, images=image_paths[:2], which="patch", output=None, batch_size=2)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    v = model.cfg.vision
    assert [r["kind"] for r in lines] == ["patch", "patch"]
    assert np.array(lines[0]["embedding"]).shape == (v.grid_size[0] * v.grid_size[1], v.width)
    with torch.no_grad():
        want = model.visual(load_images(image_paths[:1], model))[0, 1:]  # (L, D)
    assert torch.allclose(torch.tensor(lines[0]["embedding"]), want, atol=1e-5)


def test_search_ranks_by_cosine(model):
    emb = torch.nn.functional.normalize(torch.randn(5, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    rows = embfile.EmbeddingSet([f"r{i}" for i in range(5)], ["image"] * 5, emb)
    hits = embfile.search(rows, emb[3], top_k=2)
    assert hits[0][0] == "r3" and hits[0][1] == pytest.approx(1.0, abs=1e-6)
    assert hits[1][1] == pytest.approx(float((emb @ emb[3]).sort(descending=True).values[1]), abs=1e-6)
    with pytest.raises(UsageError, match="16-d"):
        embfile.search(rows, torch.zeros(16))


def test_output_suffix_and_parquet_are_checked(tmp_path):
    with pytest.raises(UsageError, match="safetensors"):
        embfile.check_output(tmp_path / "e.csv")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(UsageError, match="pyarrow"):
            embfile.check_output(tmp_path / "e.parquet")
