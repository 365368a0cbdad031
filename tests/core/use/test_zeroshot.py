"""Zero-shot classification: the classifier, the probabilities, the report."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from detailclip_cli.core.use import embed, metrics, templates, zeroshot


def _classifier_by_hand(model, labels, fill):
    """The formula our own loop used before open_clip's builder: per label, the normalised mean
    of its normalised prompt embeddings, one label at a time."""
    rows = []
    with torch.no_grad():
        for label in labels:
            prompts = [t(label.replace("_", " ")) for t in fill]
            emb = model.encode_text(model.tokenize(prompts))  # (T, E), unit norm
            rows.append(F.normalize(emb.mean(dim=0), dim=-1))
    return torch.stack(rows)  # (C, E)


def test_classifier_is_the_mean_of_normalised_prompt_embeddings(model):
    fill = templates.resolve_templates(None)
    labels = ["red car", "blue_bird", "green"]
    weights = zeroshot.build_classifier(model, labels, fill)
    assert weights.shape == (3, model.cfg.embed_dim) and weights.is_contiguous()
    torch.testing.assert_close(weights.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(weights, _classifier_by_hand(model, labels, fill), atol=1e-6, rtol=0)
    # Batching (here one label per call, and a partial last batch) does not change the result.
    for batch_size in (1, 2 * len(fill)):
        torch.testing.assert_close(zeroshot.build_classifier(model, labels, fill, batch_size=batch_size),
                                   weights, atol=1e-6, rtol=0)


def test_classify_is_softmax_of_scaled_cosine(model, images):
    weights = zeroshot.build_classifier(model, ["a", "b", "c"], templates.resolve_templates(None))
    probs = zeroshot.classify(model, images, weights)
    assert probs.shape == (3, 3)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(3))
    with torch.no_grad():
        logits = model.scale() * model.encode_image(images) @ weights.T
    torch.testing.assert_close(probs, logits.softmax(dim=-1))


def test_zero_shot_on_free_labels(model, images):
    labels = ["a red car", "a blue bird"]
    probs = zeroshot.zero_shot(model, images, labels)
    weights = zeroshot.build_classifier(model, labels, templates.resolve_templates(None))
    torch.testing.assert_close(probs, zeroshot.classify(model, images, weights))
    # One bare template: the softmax of scaled cosines between the two towers' embeddings.
    with torch.no_grad():
        cosines = embed.encode_images(model, images) @ embed.encode_texts(model, labels).T  # (B, C)
    torch.testing.assert_close(zeroshot.zero_shot(model, images, labels, templates=["{}"]),
                               (model.scale() * cosines).softmax(dim=-1), atol=1e-6, rtol=0)
    with pytest.raises(templates.TemplateError, match="no labels"):
        zeroshot.zero_shot(model, images, [])


def test_report_per_class():
    # Unbalanced: 3/3 right on class 0, 0/1 on class 1 -> accuracy 0.75 but balanced 0.5.
    conf = metrics.confusion_matrix(torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 0, 1]), 2)
    report = zeroshot.ZeroShotReport(classes=["a", "b"], top1=0.75, top5=1.0, mean_per_class_recall=0.5,
                                     confusion=conf, num_images=4)
    rows = report.per_class()
    assert rows[0] == {"class": "a", "support": 3, "correct": 3, "recall": 1.0, "precision": 0.75}
    assert rows[1] == {"class": "b", "support": 1, "correct": 0, "recall": 0.0, "precision": None}
    assert report.to_dict()["confusion_matrix"] == [[3, 0], [1, 0]]
