"""The ``inference`` and ``bulk`` sections: zero-shot speed, ours against open_clip.

- ``inference``: image encoding of one batch, our :class:`DetailCLIP` against an open_clip
  ``CLIP`` of the same architecture and weights (:func:`open_clip_twins`).
- ``bulk``: zero-shot over generated demo images (64 px PNG files), ``zero-shot``'s own path
  (``DataLoader`` workers, batches) against open_clip's preprocessing + ``encode_image`` loop on
  the shipped model exported to open_clip (:func:`bulk_zero_shot_runs`); start-up excluded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from detailclip_cli.core.config import ModelConfig, load_preset
from detailclip_cli.core.store.export import export_model
from detailclip_cli.core.store.lookup import resolve_model
from detailclip_cli.core.store.openclip import from_open_clip
from detailclip_cli.core.use.batching import default_workers, iter_image_batches
from detailclip_cli.core.use.embed import ImageEncoder
from detailclip_cli.core.use.zeroshot import build_classifier, class_probabilities
from detailclip_cli.tools.bench.figures import median, per_round
from detailclip_cli.tools.bench.session import Session
from detailclip_cli.tools.costs import round_sig, spread

BULK_BATCH = 64  # zero-shot's --batch-size default
BULK_LABELS = ("striped", "dotted", "checkered", "plain")  # the demo's classes


def open_clip_twins(model_cfg: ModelConfig, *, device: torch.device):
    """An open_clip ``CLIP`` with the preset's dimensions (random weights) and our copy of it.

    Returns:
        (ours, theirs): a :class:`DetailCLIP` converted from the open_clip model (same layout
        and weights, so the two encode identically) and the open_clip model, both in eval mode.
    """
    import open_clip

    v, t = model_cfg.vision, model_cfg.text
    theirs = open_clip.CLIP(
        embed_dim=model_cfg.embed_dim,
        vision_cfg={"image_size": v.image_size, "patch_size": v.patch_size, "width": v.width, "layers": v.depth,
                    "head_width": v.width // v.heads, "mlp_ratio": v.mlp_ratio, "no_ln_pre": not v.pre_norm},
        text_cfg={"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width,
                  "heads": t.heads, "layers": t.layers},
    )
    ours = from_open_clip(theirs, name=f"open_clip twin of the {v.depth}x{v.width} preset")
    return ours.to(device).eval(), theirs.to(device).eval()


def bulk_zero_shot_runs(paths: Sequence[Path], export_dir: Path, *, device: torch.device, batch_size: int,
                        labels: Sequence[str]) -> tuple[Callable[[], list[int]], Callable[[], list[int]]]:
    """Two ways to classify ``paths`` zero-shot with the shipped model, each returning top-1 indices.

    - ours: what ``detailclip zero-shot FILES`` does after start-up: the images decoded and
      encoded by ``DataLoader`` workers on a CPU (the command's default count; on an accelerator
      they only decode), :func:`class_probabilities` per batch;
    - theirs: the shipped model exported to open_clip (``export --to open_clip``), loaded with
      ``open_clip.create_model_and_transforms``, and the loop open_clip's README shows: PIL
      open, its eval transform, ``encode_image``, normalise, scaled cosine to the class
      embeddings, softmax, in the main process.

    Both build their classifier from ``a photo of a {label}.`` before the timed runs.
    """
    import open_clip
    from PIL import Image

    prompts = [f"a photo of a {label}." for label in labels]
    net = resolve_model(None, device=device).eval()
    classifier = build_classifier(net, labels, [lambda label: f"a photo of a {label}."])
    v = net.cfg.vision
    workers = default_workers(len(paths), device=device)

    def ours() -> list[int]:
        top = []
        for batch in iter_image_batches(list(paths), image_size=v.image_size, mean=v.mean, std=v.std,
                                        batch_size=batch_size, workers=workers, encode=ImageEncoder(net)):
            top += class_probabilities(net, batch.outputs, classifier).argmax(dim=1).tolist()
        return top

    export_model(None, to="open_clip", out=export_dir)
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{export_dir}", device=device)
    model.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{export_dir}")
    with torch.no_grad():
        text = model.encode_text(tokenizer(prompts).to(device))
        text = text / text.norm(dim=-1, keepdim=True)  # (C, E)

    @torch.no_grad()
    def theirs() -> list[int]:
        top = []
        for start in range(0, len(paths), batch_size):
            images = torch.stack([preprocess(Image.open(p)) for p in paths[start:start + batch_size]]).to(device)
            emb = model.encode_image(images)
            emb = emb / emb.norm(dim=-1, keepdim=True)
            probs = (model.logit_scale.exp() * emb @ text.T).softmax(dim=-1)  # (B, C)
            top += probs.argmax(dim=1).tolist()
        return top

    return ours, theirs


def inference(session: Session) -> dict:
    """``encode_image`` images/s of the open_clip twins, in rounds, and how far their outputs differ."""
    session.on_stage("zero-shot image encoding, ours vs open_clip")
    model_cfg, _ = load_preset(session.cfg.preset)
    ours, theirs = open_clip_twins(model_cfg, device=session.device)
    g = torch.Generator().manual_seed(session.cfg.seed)
    v = model_cfg.vision
    images = torch.randn(session.batch_size, 3, v.image_size, v.image_size, generator=g).to(session.device)
    with torch.no_grad():
        diff = (ours.encode_image(images) - theirs.encode_image(images, normalize=True)).abs().max().item()
        r = session.rounds({"ours": lambda: ours.encode_image(images),
                            "theirs": lambda: theirs.encode_image(images, normalize=True)})
    ratio = per_round(lambda o, t: t / o, r["ours"], r["theirs"])
    return {"ours_images_per_s": round_sig(session.batch_size / median(r["ours"])),
            "open_clip_images_per_s": round_sig(session.batch_size / median(r["theirs"])),
            "ours_vs_open_clip": round_sig(median(ratio)), "max_abs_diff": round_sig(diff, 2),
            "spread": {"ours_s": spread(r["ours"]), "open_clip_s": spread(r["theirs"]),
                       "ours_vs_open_clip": spread(ratio)}}


def bulk(session: Session) -> dict:
    """Zero-shot images/s over ``bulk_images`` files, both ways in rounds, and their top-1 agreement."""
    n = session.cfg.bulk_images
    paths = session.images(n)
    session.on_stage(f"bulk zero-shot over {n} images, ours vs open_clip")
    ours, theirs = bulk_zero_shot_runs(paths, session.scratch / "open_clip", device=session.device,
                                       batch_size=BULK_BATCH, labels=BULK_LABELS)
    predictions = {}

    def keep(name: str, fn: Callable[[], list[int]]) -> Callable[[], None]:
        return lambda: predictions.__setitem__(name, fn())

    r = session.rounds({"ours": keep("ours", ours), "theirs": keep("theirs", theirs)})
    ratio = per_round(lambda o, t: t / o, r["ours"], r["theirs"])
    agree = sum(a == b for a, b in zip(predictions["ours"], predictions["theirs"])) / n
    return {"images": n, "batch_size": BULK_BATCH, "workers": default_workers(n, device=session.device),
            "ours_images_per_s": round_sig(n / median(r["ours"])),
            "open_clip_images_per_s": round_sig(n / median(r["theirs"])),
            "ours_vs_open_clip": round_sig(median(ratio)), "top1_agreement": round_sig(agree),
            "spread": {"ours_s": spread(r["ours"]), "open_clip_s": spread(r["theirs"]),
                       "ours_vs_open_clip": spread(ratio)}}
