"""zero-shot, attn-map and reconstruct end to end on a freshly trained tiny run."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from detailclip_cli.cli import app
from detailclip_cli.cli.inputs import expand_inputs

runner = CliRunner()


@pytest.fixture(scope="module")
def demo_images(demo_cache):
    """Three validation images of different classes."""
    from detailclip_cli.core.data import demo_root

    val = demo_root() / "val"
    return [sorted((val / c).glob("*[0-9].png"))[0] for c in ("striped", "dotted", "checkered")]


def invoke(*args, input=None):
    result = runner.invoke(app, [str(a) for a in args], input=input)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def run_cli(*args, env=None):
    """The real console entry point in a subprocess (exit codes and stderr as users see them)."""
    return subprocess.run([sys.executable, "-m", "detailclip_cli", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, **(env or {})})


# -- inputs -------------------------------------------------------------------------------------------


def test_expand_inputs(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for name in ("a/x.png", "a/x.mask.png", "a/deep/y.JPG", "a/notes.txt", "a/.hidden.png", "z.png"):
        (tmp_path / name).write_bytes(b"")
    a, y, z = tmp_path / "a" / "x.png", tmp_path / "a" / "deep" / "y.JPG", tmp_path / "z.png"
    got = expand_inputs([str(z), str(tmp_path / "a"), str(tmp_path / "*.png"), "-", str(tmp_path / "nope.png"),
                         str(tmp_path / "*.gif")], stdin=io.StringIO(f"{a}\n\n{tmp_path / 'a' / 'notes.txt'}\n"))
    assert got.paths == [z, y, a, tmp_path / "a" / "notes.txt"]  # folder sorted, repeats dropped, order kept
    assert got.missing == [str(tmp_path / "nope.png"), str(tmp_path / "*.gif")]


# -- zero-shot -----------------------------------------------------------------------------------------


def test_zero_shot_formats(run_dir, demo_images, tmp_path):
    labels = "zero,one,two,three"
    result = invoke("zero-shot", *demo_images, "--labels", labels, "--model", run_dir, "--format", "json")
    assert result.exit_code == 0
    records = json.loads(result.stdout)
    assert [r["path"] for r in records] == [str(p) for p in demo_images]
    for r in records:
        ranked = r["ranked"]
        assert sorted(e["label"] for e in ranked) == sorted(labels.split(","))  # every label, ranked
        assert [e["prob"] for e in ranked] == sorted((e["prob"] for e in ranked), reverse=True)
        assert sum(e["prob"] for e in ranked) == pytest.approx(1.0, abs=1e-4)
        assert (r["label"], r["prob"]) == (ranked[0]["label"], ranked[0]["prob"])

    result = invoke("zero-shot", demo_images[0], "--labels", labels, "--model", run_dir, "--format", "jsonl",
                    "--top-k", "2")
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and len(json.loads(lines[0])["ranked"]) == 2

    out = tmp_path / "res.csv"
    invoke("zero-shot", *demo_images[:2], "--labels", labels, "--model", run_dir, "--format", "csv", "--output", out)
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["path", "rank", "label", "prob"] and len(rows) == 2 * 4

    result = invoke("zero-shot", demo_images[0], "--labels", labels, "--model", run_dir)
    assert result.exit_code == 0 and records[0]["label"] in result.stdout and "prob" in result.stdout


def test_zero_shot_paths_from_stdin_and_templates_file(run_dir, demo_images, tmp_path):
    templates = tmp_path / "t.txt"
    templates.write_text("a handwritten {}\nthe digit {}\n")
    labels = tmp_path / "labels.txt"
    labels.write_text("zero\none\n")
    result = invoke("zero-shot", "-", "--labels-file", labels, "--templates", templates, "--model", run_dir,
                    "--format", "jsonl", input="\n".join(map(str, demo_images[:2])) + "\n")
    assert result.exit_code == 0
    assert [json.loads(line)["path"] for line in result.stdout.splitlines()] == [str(p) for p in demo_images[:2]]


@pytest.mark.slow
def test_zero_shot_eval_on_demo(run_dir, tmp_path):
    out = tmp_path / "report"
    result = invoke("zero-shot", "--eval", "demo", "--model", run_dir, "--format", "json", "--out", out,
                    "--batch-size", "100")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["num_images"] == 500 and report["classes"][0] == "striped"
    per_class, confusion = report["per_class"], report["confusion_matrix"]
    assert len(per_class) == 4 and sum(r["support"] for r in per_class) == 500
    assert sum(map(sum, confusion)) == 500
    # The summary figures agree with the per-class counts and the confusion matrix they come from.
    correct = sum(r["correct"] for r in per_class)
    assert correct == sum(confusion[i][i] for i in range(4))
    assert report["top1"] == pytest.approx(correct / 500)
    assert report["mean_per_class_recall"] == pytest.approx(sum(r["correct"] / r["support"] for r in per_class) / 4)
    assert [r["support"] for r in per_class] == [sum(row) for row in confusion]
    assert report["top1"] <= report["top5"] <= 1.0
    assert (out / "confusion.png").stat().st_size > 0 and report["confusion_png"] == str(out / "confusion.png")


def test_zero_shot_with_a_converted_open_clip_model(demo_images, tmp_path):
    import open_clip
    import torch

    config = {"embed_dim": 32, "quick_gelu": True,
              "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
    (tmp_path / "detailclip-test-cli.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "detailclip-test-cli.json")
    torch.save(open_clip.create_model("detailclip-test-cli").state_dict(), tmp_path / "w.pt")
    result = invoke("zero-shot", demo_images[0], "--labels", "cat,dog", "--model", "open_clip:detailclip-test-cli",
                    "--pretrained", tmp_path / "w.pt", "--format", "json")
    assert result.exit_code == 0
    assert sum(e["prob"] for e in json.loads(result.stdout)[0]["ranked"]) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.slow
def test_bad_input_fails_only_that_input(run_dir, demo_images, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    result = run_cli("zero-shot", demo_images[0], bad, tmp_path / "missing.png", demo_images[1],
                     "--labels", "zero,one", "--model", run_dir, "--format", "jsonl")
    assert result.returncode == 1
    assert [json.loads(line)["path"] for line in result.stdout.splitlines()] == [str(demo_images[0]),
                                                                                  str(demo_images[1])]
    assert "notes.txt" in result.stderr and "missing.png" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_missing_labels_is_a_usage_error(run_dir, demo_images):
    result = run_cli("zero-shot", demo_images[0], "--model", run_dir)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ['error: give --labels "a,b,c" or --labels-file FILE (or --eval DATA)']


# -- attn-map -------------------------------------------------------------------------------------------


def test_attn_map_pictures_and_json(run_dir, demo_images, tmp_path):
    from detailclip_cli.core.model.removal import num_kept

    out = tmp_path / "maps"
    result = invoke("attn-map", *demo_images[:2], "--model", run_dir, "--out", out, "--heads", "each")
    assert result.exit_code == 0
    written = result.stdout.split()
    assert written == [str(out / f"{p.stem}.attn.png") for p in demo_images[:2]]
    assert all(Path(name).stat().st_size > 0 for name in written)

    result = invoke("attn-map", demo_images[0], "--model", run_dir, "--format", "json", "--keep-ratio", "0.25",
                    "--block-size", "2", "--layer", "last", "--heads", "each")
    doc = json.loads(result.stdout)
    gh, gw = doc["grid"]
    assert (doc["layer"], doc["keep_ratio"], doc["block_size"]) == ("last", 0.25, 2)
    image = doc["images"][0]
    assert image["path"] == str(demo_images[0])
    assert len(image["scores"]) == gh and len(image["scores"][0]) == gw
    assert sum(map(sum, image["kept"])) == num_kept(gh * gw, 0.25, 2)
    assert len(image["heads"]) == 3 and len(image["heads"][0]) == gh


def test_attn_map_rejects_a_block_size_that_does_not_fit(run_dir, demo_images):
    from detailclip_cli.errors import UsageError

    result = runner.invoke(app, ["attn-map", str(demo_images[0]), "--model", str(run_dir), "--block-size", "3"])
    assert isinstance(result.exception, UsageError) and "does not divide" in str(result.exception)


# -- reconstruct ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_reconstruct_pictures_and_json(run_dir, demo_images, tmp_path):
    out = tmp_path / "recon"
    result = invoke("reconstruct", *demo_images[:2], "--model", run_dir, "--out", out, "--format", "json",
                    "--strategy", "random", "--seed", "3")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert (doc["strategy"], doc["seed"], doc["norm_pix"]) == ("random", 3, True)
    assert len(doc["images"]) == 2
    for image in doc["images"]:
        # 8 x 8 patches in 16 cells of 2 x 2: floor(16 * 0.5) + 1 = 9 cells kept
        assert (image["kept"], image["removed"]) == (36, 28)
        assert image["mse"] > 0 and image["psnr"] > 0
        assert os.path.getsize(image["png"]) > 0
    again = json.loads(invoke("reconstruct", *demo_images[:2], "--model", run_dir, "--out", out, "--format",
                              "json", "--strategy", "random", "--seed", "3").stdout)
    assert [i["mse"] for i in again["images"]] == [i["mse"] for i in doc["images"]]

    # --removal is the name pretrain uses; --strategy, its old name here, still works the same.
    renamed = json.loads(invoke("reconstruct", *demo_images[:2], "--model", run_dir, "--out", out, "--format",
                                "json", "--removal", "random", "--seed", "3").stdout)
    assert renamed == doc

    result = invoke("reconstruct", demo_images[0], "--model", run_dir, "--out", out)
    assert result.exit_code == 0 and "PSNR" in result.stdout


@pytest.mark.slow
def test_reconstruct_removal_and_its_old_name_must_agree(run_dir, demo_images, tmp_path):
    result = run_cli("reconstruct", demo_images[0], "--model", run_dir, "--out", tmp_path,
                     "--removal", "random", "--strategy", "attention")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == ["error: give --removal or its old name --strategy, not both"]
    result = run_cli("reconstruct", demo_images[0], "--removal", "none")
    assert result.returncode == 2
    assert "Invalid value for '--removal'" in result.stderr and "'attention', 'random'" in result.stderr


@pytest.mark.slow
def test_reconstruct_without_decoder_is_a_one_line_usage_error(demo_images, tmp_path):
    from detailclip_cli.core.config import load_preset
    from detailclip_cli.core.model.detailclip import DetailCLIP
    from detailclip_cli.core.store.io import save_model

    cfg, _ = load_preset("tiny")
    cfg.vision.depth, cfg.decoder, cfg.head = 1, None, None
    folder = save_model(DetailCLIP(cfg), tmp_path / "no-decoder")
    result = run_cli("reconstruct", demo_images[0], "--model", folder, "--out", tmp_path / "r")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "no pixel decoder" in errors[0]
    assert "Traceback" not in result.stderr


def test_help_has_examples_and_does_not_import_torch():
    for command in ("zero-shot", "attn-map", "reconstruct"):
        result = invoke(command, "--help")
        assert result.exit_code == 0 and f"detailclip {command}" in result.stdout
    code = ("import sys; from typer.testing import CliRunner; from detailclip_cli.cli import app; "
            "CliRunner().invoke(app, ['zero-shot', '--help']); sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# One-image pictures are drawn with Pillow: matplotlib (about 0.3 s of start-up) stays out.
PICTURE_PROBE = """
import sys
from detailclip_cli.cli import main
sys.argv = ["detailclip", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    assert not exc.code, exc.code
print(sorted(m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")))
"""


@pytest.mark.slow
@pytest.mark.parametrize("command, picture", [("attn-map", "attn"), ("reconstruct", "recon")])
def test_one_image_pictures_do_not_import_matplotlib(command, picture, tmp_path):
    from PIL import Image

    image = tmp_path / "one.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(image)
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-c", PICTURE_PROBE, command, str(image), "--out", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "[]"
    drawn = Image.open(out / f"one.{picture}.png")  # the same file name as before, a real PNG
    assert drawn.format == "PNG" and drawn.width > 4 * 64
