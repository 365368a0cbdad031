"""Prompt templates and label lists."""

from __future__ import annotations

import open_clip
import pytest

from detailclip_cli.core.use import templates


def test_templates_by_name_and_file(tmp_path):
    default = templates.resolve_templates(None)
    assert [t("cat") for t in default][0] == "a photo of a cat."
    assert len(templates.resolve_templates("openai_imagenet")) == len(open_clip.OPENAI_IMAGENET_TEMPLATES)
    assert templates.resolve_templates("simple_imagenet")[0]("dog") == open_clip.SIMPLE_IMAGENET_TEMPLATES[0]("dog")
    path = tmp_path / "t.txt"
    path.write_text("# mine\nart of {}\n\n{} {{literal}}\n")
    assert [t("x") for t in templates.resolve_templates(str(path))] == ["art of x", "x {{literal}}"]
    path.write_text("no slot here\n")
    with pytest.raises(templates.TemplateError, match="no {}"):
        templates.resolve_templates(str(path))
    with pytest.raises(templates.TemplateError, match="not a template set"):
        templates.resolve_templates("nope")


def test_strings_and_callables_as_templates():
    upper = str.upper
    made = templates.as_templates(["a {} in {{braces}}", upper])
    assert [t("cat") for t in made] == ["a cat in {{braces}}", "CAT"]
    with pytest.raises(templates.TemplateError, match="no {}"):
        templates.as_templates(["no slot"])
    with pytest.raises(templates.TemplateError, match="no templates"):
        templates.as_templates([])


def test_parse_labels():
    assert templates.parse_labels(" cat, dog ,,bird\n") == ["cat", "dog", "bird"]
    assert templates.parse_labels("a, b\nc\n", one_per_line=True) == ["a, b", "c"]
    with pytest.raises(templates.TemplateError, match="twice"):
        templates.parse_labels("cat,cat")
    with pytest.raises(templates.TemplateError, match="no labels"):
        templates.parse_labels(" , ")
