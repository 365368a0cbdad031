"""``embed`` and ``search`` end to end with the shipped model, and what a one-image ``zero-shot``
imports (start-up time: neither open_clip nor torchvision's model zoo)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detailclip_cli.core.use import embfile


def cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """The console entry point in-process: (exit code, stdout, stderr)."""
    from detailclip_cli.cli import main

    monkeypatch.setattr(sys, "argv", ["detailclip", *map(str, args)])
    with pytest.raises(SystemExit) as info:
        main()
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def val_index(demo_cache, tmp_path_factory):
    """The demo validation split embedded by ``detailclip embed`` into a .safetensors index."""
    from detailclip_cli.core.data import demo_root

    root = Path(demo_root())
    out = tmp_path_factory.mktemp("index") / "val.safetensors"
    run = subprocess.run([sys.executable, "-m", "detailclip_cli", "embed", str(root / "val"), "--output", str(out),
                          "--workers", "0", "--chunk-size", "128"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return root, out


@pytest.mark.slow
def test_embed_writes_the_image_towers_embeddings(val_index):
    from detailclip_cli.core.store.lookup import resolve_model
    from detailclip_cli.core.use.batching import load_images

    root, out = val_index
    rows = embfile.read_embeddings(out)
    images = sorted((root / "val").rglob("*.png"))
    assert len(rows.ids) == len([p for p in images if not p.name.endswith(".mask.png")])
    model = resolve_model(None, device="cpu")
    some = [Path(i) for i in rows.ids[:5]]
    with torch.no_grad():
        want = model.encode_image(load_images(some, model))
    assert torch.allclose(rows.embeddings[:5], want, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_search_finds_the_class(val_index, monkeypatch, capsys):
    root, out = val_index
    from detailclip_cli.core.data.demo import demo_templates

    classes = json.loads((root / "classes.json").read_text())
    template = demo_templates()[0]  # the demo's captions' wording: "{} objects."
    for name in classes:  # a class name as the query: an image of that class comes first
        query = template.replace("{}", name)
        code, stdout, err = cli(monkeypatch, capsys, "search", "--index", out, "--query", query, "--format", "jsonl",
                                "--top-k", "1")
        assert code == 0, err
        top = json.loads(stdout.splitlines()[0])
        assert Path(top["id"]).parent.name == name, (name, top)


@pytest.mark.slow
def test_search_finds_an_image_itself(val_index, monkeypatch, capsys):
    _, out = val_index
    image = embfile.read_embeddings(out).ids[7]
    code, stdout, _ = cli(monkeypatch, capsys, "search", "--index", out, "--query", image, "--format", "jsonl",
                          "--top-k", "3")
    hits = [json.loads(line) for line in stdout.splitlines()]
    assert code == 0 and hits[0]["id"] == image and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_embed_texts_to_stdout_and_bad_images_exit_1(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really")
    texts = tmp_path / "t.txt"
    texts.write_text("a striped square\n\nplain\n", encoding="utf-8")
    code, out, err = cli(monkeypatch, capsys, "embed", bad, "--texts", texts, "--text", "dots")
    assert code == 1 and "broken.jpg" in err and "Traceback" not in err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["id"] for r in rows] == ["a striped square", "plain", "dots"]
    assert all(r["kind"] == "text" for r in rows)
    assert abs(sum(x * x for x in rows[0]["embedding"]) - 1) < 1e-5


@pytest.mark.parametrize("args, message", [
    (["--which", "text", "x.png"], "--which text"),
    (["--text", "a", "--which", "patch"], "needs images"),
    (["--text", "a", "--output", "e.csv"], ".safetensors"),
])
def test_embed_usage_errors(args, message, monkeypatch, capsys, tmp_path):
    (tmp_path / "x.png").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(monkeypatch, capsys, "embed", *args)
    assert code == 2 and message in err and err.startswith("error:")


def test_search_refuses_a_missing_index(monkeypatch, capsys, tmp_path):
    code, _, err = cli(monkeypatch, capsys, "search", "--index", tmp_path / "none.safetensors", "--query", "x")
    assert code == 2 and "no such file" in err


STARTUP_PROBE = """
import sys
from detailclip_cli.cli import main
sys.argv = ["detailclip", "zero-shot", sys.argv[1], "--labels", "dog,cat", "--format", "json"]
try:
    main()
except SystemExit as exc:
    assert not exc.code, exc.code
print(sorted(m for m in ("open_clip", "torchvision", "torchvision.models", "timm", "ftfy") if m in sys.modules))
"""


@pytest.fixture(scope="module")
def startup_modules(tmp_path_factory) -> list[str]:
    """The heavy modules a one-image ``zero-shot`` (ASCII labels) imported, from a fresh process."""
    from PIL import Image

    image = tmp_path_factory.mktemp("one") / "one.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(image)
    run = subprocess.run([sys.executable, "-c", STARTUP_PROBE, str(image)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return eval(run.stdout.strip().splitlines()[-1])  # a printed list of names


@pytest.mark.slow
@pytest.mark.parametrize("module", [
    "open_clip",           # the text tower and tokenizer are ours
    "torchvision.models",  # the eval transform is ours
    "ftfy",                # plain ASCII labels need no text fixing (0.14 s)
])
def test_one_image_zero_shot_does_not_import(startup_modules, module):
    assert module not in startup_modules
