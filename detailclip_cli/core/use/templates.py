"""Prompt templates and label lists for zero-shot classification."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from detailclip_cli.core.data.demo import demo_templates, demo_version
from detailclip_cli.errors import UsageError

DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a close-up photo of a {}.",
    "a photo of the {}.",
    "a drawing of a {}.",
)


class TemplateError(UsageError, ValueError):
    """Templates or labels that cannot be used; one line for people."""


OPEN_CLIP_SETS = ("openai_imagenet", "simple_imagenet")  # read from open_clip, only when named


def template_sets(*, with_open_clip: bool = True) -> dict[str, Sequence[Callable[[str], str]]]:
    """The named template sets: ``default`` (ours), ``demo`` (the demo set's), and (``with_open_clip``)
    open_clip's ImageNet sets, whose import costs seconds, so a command that names none skips it."""
    sets = {
        "default": [_fill(t) for t in DEFAULT_TEMPLATES],
        "demo": [_fill(t) for t in demo_templates()],
    }
    if with_open_clip:
        import open_clip  # heavy import, only when its template sets are asked for

        sets["openai_imagenet"] = list(open_clip.OPENAI_IMAGENET_TEMPLATES)
        sets["simple_imagenet"] = list(open_clip.SIMPLE_IMAGENET_TEMPLATES)
    return sets


def _fill(template: str) -> Callable[[str], str]:
    # replace, not str.format: a template may contain other braces.
    return lambda name: template.replace("{}", name)


def as_templates(templates: Sequence[str | Callable[[str], str]]) -> list[Callable[[str], str]]:
    """Templates as callables: a string has ``{}`` where the label goes; a callable is kept.

    Raises:
        TemplateError: no templates, or a string without ``{}``.
    """
    if not templates:
        raise TemplateError("no templates given")
    bad = [t for t in templates if isinstance(t, str) and "{}" not in t]
    if bad:
        raise TemplateError(f"template {bad[0]!r} has no {{}} where the label goes")
    return [_fill(t) if isinstance(t, str) else t for t in templates]


def resolve_templates(spec: str | None, *, data: str | None = None) -> list[Callable[[str], str]]:
    """Templates by name (``default``, ``demo``, ``openai_imagenet``, ``simple_imagenet``) or from a file.

    With no ``spec``, the demo data (``data`` ``"demo"`` or ``"demo:v5"``) gets its version's
    set and anything else the default set.

    A template file has one template per line, each containing ``{}`` where the label goes;
    blank lines and lines starting with ``#`` are skipped.

    Returns:
        Callables mapping a label to a prompt.
    """
    sets = template_sets(with_open_clip=spec in OPEN_CLIP_SETS)
    if spec is None:
        version = demo_version(data) if data is not None else None
        return [_fill(t) for t in demo_templates(version)] if version else list(sets["default"])
    if spec in sets:
        return list(sets[spec])
    path = Path(spec).expanduser()
    if not path.is_file():
        raise TemplateError(f"--templates {spec}: not a template set ({', '.join([*sets, *OPEN_CLIP_SETS])}) nor a file")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise TemplateError(f"template file {path} has no templates")
    bad = [line for line in lines if "{}" not in line]
    if bad:
        raise TemplateError(f"template {bad[0]!r} in {path} has no {{}} where the label goes")
    return [_fill(line) for line in lines]


def templates_for(spec: str | None, eval_set) -> tuple[list[Callable[[str], str]], str]:
    """The templates an evaluation set is scored with, and where they came from.

    ``spec`` (``--templates``) when given; else the data's own (clip_benchmark's
    ``zeroshot_classification_templates.txt``, the demo's); else the set the layout is published
    with (``openai_imagenet`` for ImageNet); else ``default``.

    Returns:
        (callables label -> prompt, a name for the result: ``--templates``' value, a set's name,
        or ``"the data's own"``).
    """
    if spec is not None:
        return resolve_templates(spec), spec
    if eval_set.templates:
        return as_templates(eval_set.templates), "the data's own"
    name = eval_set.template_set or "default"
    return resolve_templates(name), name


def parse_labels(text: str, *, source: str = "--labels", one_per_line: bool = False) -> list[str]:
    """Split labels on commas (or only on line breaks, for label files), dropping blanks.

    Raises:
        TemplateError: no labels, or a label given twice.
    """
    lines = text.splitlines()
    labels = [p.strip() for line in lines for p in ([line] if one_per_line else line.split(","))]
    labels = [label for label in labels if label]
    if not labels:
        raise TemplateError(f"{source} gave no labels")
    seen = set()
    for label in labels:
        if label in seen:
            raise TemplateError(f"{source} names the label {label!r} twice")
        seen.add(label)
    return labels
