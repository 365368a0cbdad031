"""Write a DetailCLIP model in open_clip's or timm's own format, exactly.

- ``open_clip``: ``open_clip_config.json`` + ``open_clip_model.safetensors``, the folder layout
  ``open_clip.create_model('local-dir:DIR')`` reads (image and text towers, logit scale).
- ``timm``: ``config.json`` + ``model.safetensors`` in timm's Hub layout, the image tower as a
  ``timm`` ``VisionTransformer`` (no classifier): ``timm.create_model('local-dir:DIR',
  pretrained=True)``, or ``timm.create_model(cfg["architecture"], **cfg["model_args"])`` and
  ``load_state_dict``.

The renaming is the inverse of :func:`detailclip_cli.core.openclip.convert_state_dict` (one table
serves both directions); timm's names are ours already. Both libraries' patch embeddings may
lack a bias where ours has one (open_clip's never has one, timm's not when ``pre_norm`` is on):
the bias is then added to the patch positions' embedding, ``pos[1:] += bias``, which gives the
same tokens (conv(x) + b + pos = conv(x) + (pos + b)). What a format cannot express (the conv
stem, mixed activations, another LayerNorm eps) is refused in one line, never approximated.

Shape letters: B batch, L patch tokens, D width, E embedding width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from detailclip_cli.core.config import ModelConfig
from detailclip_cli.core.files import write_json
from detailclip_cli.core.store.io import load_model, save_tensors
from detailclip_cli.core.store.lookup import model_folder, resolve_model
from detailclip_cli.core.store.openclip import (
    TEXT_KEYS,
    open_clip_name,
    vision_key_pairs,
)
from detailclip_cli.core.store.run import RunFolder
from detailclip_cli.core.store.shipped import shipped_model_dir
from detailclip_cli.errors import UsageError, WorkFailedError

FORMATS = ("open_clip", "timm")
WEIGHTS = ("student", "teacher")
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
TIMM_CONFIG = "config.json"
TIMM_WEIGHTS = "model.safetensors"
# timm architectures whose defaults give our LayerNorm eps (the rest comes from model_args):
# timm's plain ViT uses 1e-6, its CLIP image towers 1e-5.
TIMM_ARCH_BY_EPS = {1e-6: "vit_base_patch16_224", 1e-5: "vit_base_patch16_clip_224"}
# The round trip is checked after writing; anything past this is a conversion bug.
CHECK_TOLERANCE = 1e-4


class ExportError(UsageError):
    """The model cannot be written in the asked format, or --out / --weights do not fit."""


@dataclass
class Exported:
    """What :func:`export_model` wrote.

    Attributes:
        files: the written files.
        load: one line of Python that loads the export.
        max_abs_diff: the largest difference between our outputs and the loaded export's
            (image and text embeddings for open_clip, final tokens for timm) on random inputs.
    """

    files: list[Path]
    load: str
    max_abs_diff: float


def export_model(spec: str | None, *, to: str, out: Path, weights: str = "student",
                 pretrained: str | None = None, force: bool = False, verify: bool = True) -> Exported:
    """Load a model, write it as ``to`` into ``out``, and check the written copy.

    Args:
        spec: a model spec as :func:`resolve_model` takes it (None: the shipped model).
        to: ``open_clip`` or ``timm``.
        out: the destination folder; it must not hold anything unless ``force``.
        weights: ``student``, or ``teacher`` (the EMA teacher of a run folder).
        pretrained: with ``open_clip:NAME``, a pretrained tag or local weights file.
        force: write into a non-empty folder. Only the export's own files are replaced (each
            atomically); nothing else there is touched.
        verify: check our weights against the SHA-256 their ``config.json`` records.

    Raises:
        ExportError: unknown format, an unusable ``out``, no teacher, or an architecture the
            format cannot express.
        WorkFailedError: the written copy does not reproduce the model.
    """
    if to not in FORMATS:
        raise ExportError(f"--to must be one of {', '.join(FORMATS)}, not {to!r}")
    if weights not in WEIGHTS:
        raise ExportError(f"--weights must be student or teacher, not {weights!r}")
    if weights == "teacher" and pretrained is not None:
        raise ExportError("--pretrained only applies to open_clip:NAME models, which have no teacher")
    out = Path(out)
    check_out_dir(out, force=force)
    model = (load_teacher(spec, verify=verify) if weights == "teacher"
             else resolve_model(spec, pretrained=pretrained, verify=verify))
    model = model.float().eval()
    if to == "open_clip":
        config, state = to_open_clip(model)
        files = [out / OPEN_CLIP_WEIGHTS, out / OPEN_CLIP_CONFIG]
        load = f"open_clip.create_model_and_transforms('local-dir:{out}')"
    else:
        config, state = to_timm(model)
        files = [out / TIMM_WEIGHTS, out / TIMM_CONFIG]
        load = f"timm.create_model('local-dir:{out}', pretrained=True)"
    try:
        out.mkdir(parents=True, exist_ok=True)
        save_tensors(files[0], state, {"format": "pt"})
        write_json(files[1], config)
    except OSError as exc:
        raise WorkFailedError(f"could not write the export into {out} ({exc.strerror or exc})") from None
    diff = check_open_clip(model, out) if to == "open_clip" else check_timm(model, out)
    if not diff <= CHECK_TOLERANCE:
        raise WorkFailedError(f"the {to} copy in {out} differs from the model by {diff:.3g} "
                              f"(more than {CHECK_TOLERANCE:g}): a conversion bug, please report it")
    return Exported(files=files, load=load, max_abs_diff=diff)


def check_out_dir(out: Path, *, force: bool) -> None:
    """Refuse an ``--out`` that is a file, or a folder that already holds something (unless ``force``)."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"--out {out} is not empty; choose a new folder, or give --force to write the "
                          "export's files there (other files are left alone)")


# -- which weights ----------------------------------------------------------------------------------


def load_teacher(spec: str | None, *, verify: bool = True):
    """The model of a run folder with its image tower (and head) replaced by the EMA teacher's.

    The teacher is the ``objective.teacher.*`` part of ``train_state.safetensors``, saved at
    the same step as the student in ``model.safetensors``. The text tower and projections are
    the student's: the teacher mirrors the image tower only.

    Args:
        spec: a run folder (None: the shipped model's folder).
        verify: check the student's weights (``model.safetensors``) and the training state holding
            the teacher against their recorded SHA-256.

    Raises:
        ExportError: the spec is not a run folder with an EMA teacher.
    """
    if spec is not None and open_clip_name(spec) is not None:
        raise ExportError("--weights teacher needs a run folder; an open_clip model has no teacher")
    folder = shipped_model_dir() if spec is None else model_folder(spec)
    run = RunFolder(folder)
    if not run.state_file.is_file():
        raise ExportError(f"{spec or folder} has no teacher: --weights teacher needs a run folder with "
                          f"{RunFolder.STATE_FILE} (a saved model keeps the student only)")
    teacher = {k: v.float() for k, v in run.teacher_weights(verify=verify).items()}
    if not teacher:
        raise ExportError(f"the run in {folder} trained without a teacher (no removal scores, no distillation)")
    if any(k.startswith("image_proj.") for k in teacher):
        raise ExportError(f"the teacher of the run in {folder} is a frozen model of its own (distill --teacher); "
                          "export that model instead")
    if len(set(run.checkpoint_steps().values())) > 1:
        raise ExportError(f"the checkpoint files in {folder} are from different steps (an interrupted save, "
                          "which resuming the run finishes)")
    model = load_model(folder, verify=verify)
    try:
        model.image_tower().load_state_dict(teacher)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ExportError(f"the teacher in {run.state_file} does not fit the model in {folder}: {first}") from None
    return model.eval()


# -- open_clip ----------------------------------------------------------------------------------


def to_open_clip(model) -> tuple[dict, dict[str, torch.Tensor]]:
    """A DetailCLIP as open_clip's ``local-dir`` config and a ``CLIP`` state dict.

    Args:
        model: a :class:`DetailCLIP` (its decoder and head, if any, are not exported).

    Returns:
        (the ``open_clip_config.json`` document, the state dict with open_clip's names).

    Raises:
        ExportError: the model has a layout open_clip cannot express.
    """
    cfg = model.cfg
    config = {"model_cfg": open_clip_model_cfg(cfg), "preprocess_cfg": _preprocess(cfg)}
    src = {k: t.detach().float() for k, t in model.state_dict().items()}
    src = _fold_patch_bias(src, keep_bias=False)
    state = {theirs: src[ours] for theirs, ours in vision_key_pairs(cfg.vision.depth) if ours in src}
    state["visual.class_embedding"] = src["visual.cls_token"].reshape(-1)  # (1, 1, D) -> (D,)
    state["visual.positional_embedding"] = src["visual.pos_embed"][0]  # (1, 1+L, D) -> (1+L, D)
    state["visual.proj"] = src["image_proj.weight"].T.contiguous()  # (E, D) -> (D, E)
    for key, value in src.items():
        if key.startswith("text.") and key[len("text."):].startswith(TEXT_KEYS):
            state[key[len("text."):]] = value  # open_clip's CLIP keeps the text tower at the top
    # open_clip uses exp(logit_scale) unclamped; ours is clamped at max_logit_scale: store the
    # clamped value, so both give the same similarities.
    state["logit_scale"] = src["logit_scale"].clamp(max=math.log(cfg.max_logit_scale))
    return config, state


def open_clip_model_cfg(cfg: ModelConfig) -> dict:
    """The ``model_cfg`` of open_clip's ``CLIP`` with our towers' architecture."""
    v, t = cfg.vision, cfg.text
    _refuse_conv_stem(cfg, "open_clip")
    if v.act != t.act:
        raise ExportError(f"open_clip cannot express this model: its image tower uses {v.act} and its text "
                          f"tower {t.act}, and open_clip has one activation (quick_gelu or not) for both")
    vision = {"image_size": v.image_size, "patch_size": v.patch_size, "width": v.width, "layers": v.depth,
              "head_width": v.width // v.heads, "mlp_ratio": v.mlp_ratio, "no_ln_pre": not v.pre_norm}
    if v.norm_eps != 1e-5:  # open_clip's default
        vision["norm_kwargs"] = {"eps": v.norm_eps}
    text = {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width,
            "heads": t.heads, "layers": t.layers}
    return {"embed_dim": cfg.embed_dim, "quick_gelu": v.act == "quick_gelu", "vision_cfg": vision,
            "text_cfg": text}


@torch.no_grad()
def check_open_clip(model, folder: Path) -> float:
    """Load ``folder`` with open_clip and return the largest embedding difference on random inputs."""
    import open_clip

    theirs = _quietly(lambda: open_clip.create_model(f"local-dir:{folder}"), "open_clip").eval()
    images = _random_images(model.cfg)
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    texts = ["a photo of a cat", "a diagram of a bridge", ""]
    diffs = [
        model.encode_image(images, normalize=False) - theirs.encode_image(images),
        model.encode_text(model.tokenize(texts), normalize=False) - theirs.encode_text(tokenizer(texts)),
        model.scale() - theirs.logit_scale.exp(),
    ]
    return max(d.abs().max().item() for d in diffs)


# -- timm -------------------------------------------------------------------------------------------


def to_timm(model) -> tuple[dict, dict[str, torch.Tensor]]:
    """The image tower as timm's Hub ``config.json`` and a ``VisionTransformer`` state dict.

    timm's ViT has our parameter names; its patch embedding has a bias exactly when
    ``pre_norm`` is off, so ours is folded into the position embedding (pre_norm on) or a zero
    bias is added (pre_norm off, no bias of ours).

    Returns:
        ({"architecture", "num_classes", "num_features", "global_pool", "model_args",
        "pretrained_cfg"}, the state dict).

    Raises:
        ExportError: the model has a layout timm's VisionTransformer cannot express.
    """
    cfg, v = model.cfg, model.cfg.vision
    _refuse_conv_stem(cfg, "timm")
    arch = TIMM_ARCH_BY_EPS.get(v.norm_eps)
    if arch is None:
        raise ExportError(f"timm cannot express this model: its LayerNorm eps is {v.norm_eps:g}, and timm's "
                          "ViT configs (set by name, not by a saved argument) use 1e-6 or 1e-5")
    model_args = {
        "img_size": v.image_size, "patch_size": v.patch_size, "embed_dim": v.width, "depth": v.depth,
        "num_heads": v.heads, "mlp_ratio": v.mlp_ratio, "qkv_bias": True, "class_token": True,
        "no_embed_class": False, "reg_tokens": 0, "pre_norm": v.pre_norm, "final_norm": True,
        "fc_norm": False, "global_pool": "token", "num_classes": 0, "act_layer": v.act,
    }
    # timm's VisionTransformer makes its patch embedding bias-free exactly when pre_norm is on.
    state = _fold_patch_bias({k: t.detach().float() for k, t in model.visual.state_dict().items()},
                             keep_bias=not v.pre_norm, prefix="")
    pre = _preprocess(cfg)
    config = {
        "architecture": arch, "num_classes": 0, "num_features": v.width, "global_pool": "token",
        "model_args": model_args,
        "pretrained_cfg": {"input_size": [3, v.image_size, v.image_size], "fixed_input_size": True,
                           "interpolation": pre["interpolation"], "crop_pct": 1.0, "crop_mode": "center",
                           "mean": pre["mean"], "std": pre["std"], "num_classes": 0},
    }
    return config, state


@torch.no_grad()
def check_timm(model, folder: Path) -> float:
    """Load ``folder`` with timm and return the largest difference of the final tokens on random images."""
    import timm

    theirs = _quietly(lambda: timm.create_model(f"local-dir:{folder}", pretrained=True), "timm").eval()
    images = _random_images(model.cfg)
    return (model.visual(images) - theirs.forward_features(images)).abs().max().item()


# -- helpers ------------------------------------------------------------------------------------


def _fold_patch_bias(state: dict[str, torch.Tensor], *, keep_bias: bool,
                     prefix: str = "visual.") -> dict[str, torch.Tensor]:
    """Give the patch embedding a bias, or none, without changing any token.

    Without: the bias moves into the patch positions' embedding, (1, 1+L, D) ``pos[:, 1:] += b``.
    With one where we have none: a zero bias.
    """
    state = dict(state)
    bias_key, pos_key = f"{prefix}patch_embed.proj.bias", f"{prefix}pos_embed"
    bias = state.pop(bias_key, None)
    if keep_bias:
        width = state[pos_key].shape[-1]
        state[bias_key] = bias if bias is not None else torch.zeros(width)
    elif bias is not None:
        pos = state[pos_key].clone()
        pos[:, 1:] += bias  # (1, L, D) + (D,)
        state[pos_key] = pos
    return state


def _refuse_conv_stem(cfg: ModelConfig, fmt: str) -> None:
    if cfg.vision.stem != "patch":
        raise ExportError(f"{fmt} cannot express this model: its image tower has a {cfg.vision.stem} stem "
                          "(stride-2 convolutions), and a ViT there embeds patches with one linear map")


def _preprocess(cfg: ModelConfig) -> dict:
    """Our evaluation transform in open_clip's words: shorter side resized (bicubic), centre crop."""
    v = cfg.vision
    return {"size": v.image_size, "mean": list(v.mean), "std": list(v.std), "interpolation": "bicubic",
            "resize_mode": "shortest"}


def _random_images(cfg: ModelConfig) -> torch.Tensor:
    """(2, 3, S, S) seeded normal noise: inputs for the round-trip check."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, cfg.vision.image_size, cfg.vision.image_size, generator=generator)


def _quietly(build, library: str):
    """Build with the library's logging silenced; any failure becomes one line."""
    import logging

    logging.disable(logging.WARNING)
    try:
        return build()
    except Exception as exc:  # noqa: BLE001 - a third-party loader; its error is shown in one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WorkFailedError(f"{library} could not load the written export: {first}") from None
    finally:
        logging.disable(logging.NOTSET)
