"""Shards read as streams: ``pipe:COMMAND``, ``http(s)://`` URLs (a loopback server started
here), ``.tar.gz`` files. They give the batches the same shards give read in place, and a
stream that fails part-way (a command exiting non-zero, a dropped connection, cut gzip data)
becomes counted bad samples, never a fatal error."""

from __future__ import annotations

import functools
import gzip
import http.server
import itertools
import json
import shlex
import sys
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image

from detailclip_cli.cli import main
from detailclip_cli.core.config import TrainConfig
from detailclip_cli.core.data import AugmentConfig, DataError, Sample, TwoViewDataset
from detailclip_cli.core.data.shards import (
    INDEX_FILE,
    ShardDataset,
    ShardSource,
    is_shard_spec,
    shard_paths,
    write_shards,
)
from detailclip_cli.core.data.shards.location import StreamedShard

SIZE = 16


def fake_tokenize(captions: list[str]) -> torch.Tensor:
    return torch.tensor([[len(c), 1, 0, 0] for c in captions])


def views(*, captions: bool = True) -> TwoViewDataset:
    return TwoViewDataset(None, image_size=SIZE, mean=(0.5,) * 3, std=(0.25,) * 3,
                          aug=AugmentConfig.for_image_size(SIZE), tokenize=fake_tokenize if captions else None, seed=0)


def cfg(**kw) -> TrainConfig:
    return TrainConfig.from_dict({**TrainConfig().to_dict(), "batch_size": 4, "workers": 0, **kw})


def take(dataset: ShardDataset, n: int, start: int = 0, **kw) -> list[dict]:
    return list(itertools.islice(dataset.batches(cfg(**kw), start), n))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """3 shards of 8 captioned PNGs, their .tar.gz copies, and half of shard 1 (gzip) in cut.tar.gz."""
    root = tmp_path_factory.mktemp("stream")
    samples = []
    for i in range(24):
        path = root / "images" / f"{i:02d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (12 + i % 5, 10), (10 * i, 200 - 5 * i, 90)).save(path)
        samples.append(Sample(image=path, caption=f"picture {i}"))
    out = root / "shards"
    write_shards(samples, out, samples_per_shard=8)
    for k in range(3):
        data = gzip.compress((out / f"{k:06d}.tar").read_bytes(), mtime=0)
        (root / f"{k:06d}.tar.gz").write_bytes(data)
    data = (root / "000001.tar.gz").read_bytes()
    (root / "cut.tar.gz").write_bytes(data[:len(data) // 2])
    return out


def same_batches(a: list[dict], b: list[dict]) -> bool:
    return all(torch.equal(x["index"], y["index"]) and torch.equal(x["view1"], y["view1"])
               and torch.equal(x["text"], y["text"]) and x["bad"] == y["bad"] for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------- a loopback HTTP server


class Handler(http.server.SimpleHTTPRequestHandler):
    """Files of the served folder; ``/drop/NAME`` sends NAME's headers and half its bytes, then hangs up."""

    def do_GET(self):
        file = Path(self.directory) / self.path[len("/drop/"):]
        if self.path.startswith("/drop/") and not file.is_file():
            self.send_error(404)
        elif self.path.startswith("/drop/"):
            data = file.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
        else:
            super().do_GET()

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture(scope="module")
def server(shards):
    """``http://127.0.0.1:PORT`` serving the parent of the shard folder."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(shards.parent)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


# ---------------------------------------------------------------- specs


def test_streamed_specs(shards):
    spec = f"pipe:cat {shards}/{{000000..000002}}.tar"
    assert is_shard_spec(spec) and is_shard_spec("https://host/s/{0..9}.tar") and is_shard_spec("a/b.tgz")
    assert shard_paths(spec) == [StreamedShard("pipe", f"cat {shards}/{k:06d}.tar") for k in range(3)]
    assert shard_paths("http://h/s/{00..01}.tar.gz") == [StreamedShard("url", f"http://h/s/{k:02d}.tar.gz") for k in range(2)]
    gz = shard_paths(f"{shards.parent}/{{000000..000001}}.tar.gz")
    assert [(s.kind, Path(s.target).name) for s in gz] == [("gzip", "000000.tar.gz"), ("gzip", "000001.tar.gz")]
    with pytest.raises(DataError, match="shard not found"):
        shard_paths(f"{shards.parent}/nothing.tar.gz")
    with pytest.raises(DataError, match="names no command"):
        shard_paths("pipe: ")


# ---------------------------------------------------------------- the same batches as the files


def test_a_pipe_gives_the_batches_of_the_file(shards):
    expected = take(ShardDataset(shards / "000001.tar", views=views(), seed=2), 2)
    assert same_batches(take(ShardDataset(f"pipe:cat {shards}/000001.tar", views=views(), seed=2), 2), expected)


@pytest.mark.slow
def test_pipe_gzip_and_http_give_the_batches_of_the_files(shards, server):
    in_place = ShardDataset(f"{shards}/{{000000..000002}}.tar", views=views(), seed=5)
    expected = take(in_place, 12, workers=2)
    root = shards.parent
    for spec in (f"pipe:cat {shlex.quote(str(shards))}/{{000000..000002}}.tar",
                 f"pipe:gzip -dc {root}/{{000000..000002}}.tar.gz",  # a command may give gzip data too
                 f"{root}/{{000000..000002}}.tar.gz",
                 f"{server}/shards/{{000000..000002}}.tar",
                 f"{server}/{{000000..000002}}.tar.gz"):
        streamed = ShardDataset(spec, views=views(), seed=5)
        assert streamed.counts == [8, 8, 8] and streamed.data_report().samples == 24, spec
        assert same_batches(take(streamed, 12, workers=2), expected), spec
        # resuming mid-epoch streams past the samples already seen
        assert same_batches(take(streamed, 4, start=7, workers=2), expected[7:11]), spec


def test_urls_are_counted_from_the_shards_json_beside_them(shards, server, monkeypatch):
    from detailclip_cli.core.data.shards import index

    monkeypatch.setattr(index, "scan_stream", lambda shard: pytest.fail(f"{shard} was streamed to be counted"))
    assert ShardSource(f"{server}/shards/{{000000..000002}}.tar").total == 24  # written by write_shards
    assert json.loads((shards / INDEX_FILE).read_text())["samples"] == 24


# ---------------------------------------------------------------- failures are bad samples


def test_shards_failing_while_counted_are_counted_and_skipped(shards, server):
    root = shards.parent
    good, bad_exit = f"cat {shards}/000000.tar", f"cat {shards}/000002.tar; exit 3"
    cases = {
        # a command that gives a whole shard, then exits non-zero: its last sample is not trusted
        # (the failure may have cut it), so 7 samples and the failure's slot
        "pipe": (f"pipe:{{{good},{bad_exit}}}", [8, 8], "exit status 3"),
        # a connection dropped half-way through the second shard
        "url": (f"{server}/{{000000.tar.gz,drop/000001.tar.gz}}", [8, None], "failed while streaming"),
        # gzip data cut short
        "gzip": (f"{root}/{{000000.tar.gz,cut.tar.gz}}", [8, None], "failed while streaming"),
    }
    for kind, (spec, counts, message) in cases.items():
        dataset = ShardDataset(spec, views=views(), seed=0)
        lost = dataset.counts[1]
        assert dataset.counts[0] == 8 and (counts[1] is None or lost == counts[1]) and 1 <= lost <= 8, kind
        report = dataset.data_report()
        assert report.failed_shards == 1 and message in report.examples["failed_shards"], kind
        assert report.samples == 8 + lost - 1, kind
        (batch,) = take(dataset, 1, batch_size=8 + lost, workers=1)  # the whole epoch
        assert len(batch["bad"]) == 1 and message in batch["bad"][0], (kind, batch["bad"])  # the failure, once a pass
        assert len(batch["index"]) == 8 + lost - 1, kind


def test_a_stream_that_fails_during_training_loses_its_rest(shards, server, tmp_path):
    """Counted whole from shards.json, then the connection drops: the rest of that shard is bad."""
    folder = tmp_path / "served"
    folder.mkdir()
    (folder / INDEX_FILE).write_text((shards / INDEX_FILE).read_text())
    dataset = ShardDataset(f"{server}/shards/000000.tar", views=views(), seed=0, shuffle_buffer=1)
    assert dataset.counts == [8]
    dataset.paths = [StreamedShard("url", f"{server}/drop/shards/000000.tar")]  # the same shard, now cut
    bad = [m for b in take(dataset, 2, workers=1) for m in b["bad"]]
    assert 1 <= len(bad) < 8 and all("failed while streaming" in m and "are lost" in m for m in bad)


def test_only_failing_shards_are_one_line_errors(shards, server):
    for spec, message in ((f"pipe:cat {shards}/nothing.tar", "No such file"),
                          (f"{server}/shards/nothing.tar", "HTTP 404"),
                          ("pipe:true", "failed while streaming")):
        with pytest.raises(DataError, match=message) as info:
            ShardSource(spec)
        assert "\n" not in str(info.value)


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_pretrain_on_pipe_shards_counts_the_failed_one(shards, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    spec = f"pipe:{{cat {shards}/000000.tar,cat {shards}/000001.tar; exit 1}}"
    monkeypatch.setattr(sys, "argv", ["detailclip", "pretrain", "--data", spec, "--preset", "tiny", "--steps", "2",
                                      "--batch-size", "8", "--out", str(out), "--device", "cpu", "--log-every", "1",
                                      "--max-bad-fraction", "0.5"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 0, capsys.readouterr().err
    run = json.loads((out / "run.json").read_text())
    assert run["data"] == spec
    # 8 + 7 samples (the last one before a failure is not trusted) and the failure's slot
    assert run["data_report"]["failed_shards"] == 1 and run["data_report"]["samples"] == 15
    assert "exit status 1" in run["data_report"]["examples"]["failed_shards"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["bad_samples"] == 1  # the failure's slot, met once in the 16 slots of the epoch (2 steps)
