"""Probes on frozen [CLS] embeddings: weighted k-NN (DINO's protocol) and a logistic-regression
linear probe whose regularisation is chosen on a held-out part of the training split (CLIP's).

Shape letters: N training images, M evaluated images, E embedding width, C classes."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from detailclip_cli.core.use.metrics import top_k_accuracy

KNN_K = 20
KNN_TEMPERATURE = 0.07
# Inverse regularisation strengths tried (sklearn's C = 1 / lambda), CLIP's sweep coarsened.
LOGREG_C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4)
HELD_OUT_FRACTION = 0.2


def knn_scores(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
               num_classes: int, k: int = KNN_K, temperature: float = KNN_TEMPERATURE) -> torch.Tensor:
    """Weighted k-NN votes on cosine similarity (DINO's ``knn_classifier``): each of the ``k``
    nearest training images votes for its class with weight exp(sim / T).

    Args:
        train_feats: (N, E) normalised features; train_labels: (N,) class ids.
        test_feats: (M, E) normalised features.

    Returns:
        (M, C) summed votes (argmax = the prediction; top-5 from the same scores).
    """
    sims = test_feats.float() @ train_feats.float().T  # (M, N)
    k = min(k, train_feats.shape[0])
    top_sims, top_idx = sims.topk(k, dim=1)  # (M, k)
    weights = (top_sims / temperature).exp()
    votes = torch.zeros(test_feats.shape[0], num_classes, dtype=weights.dtype)
    votes.scatter_add_(1, train_labels[top_idx], weights)
    return votes


def knn_classify(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 num_classes: int, k: int = KNN_K, temperature: float = KNN_TEMPERATURE) -> torch.Tensor:
    """(M,) predicted class ids of :func:`knn_scores`."""
    return knn_scores(train_feats, train_labels, test_feats, num_classes, k, temperature).argmax(dim=1)


def knn_probe(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
              test_labels: torch.Tensor, num_classes: int) -> dict:
    """k-NN top-1 / top-5 with the protocol's settings."""
    votes = knn_scores(train_feats, train_labels, test_feats, num_classes)
    return {"top1": top_k_accuracy(votes, test_labels, 1), "top5": top_k_accuracy(votes, test_labels, 5),
            "protocol": {"k": min(KNN_K, len(train_labels)), "temperature": KNN_TEMPERATURE,
                         "vote": "weighted exp(cos / T)", "features": "normalised image embedding ([CLS])"}}


def logistic_probe(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                   test_labels: torch.Tensor, *, c_grid: Sequence[float] = LOGREG_C_GRID,
                   held_out: float = HELD_OUT_FRACTION, seed: int = 0, max_iter: int = 1000) -> dict:
    """Multinomial logistic regression (L-BFGS, L2) on frozen features.

    Each C of ``c_grid`` is fitted on the training split less a seeded ``held_out`` fraction and
    scored on that fraction; the best C (the smallest of equals: the strongest regularisation)
    is refitted on the whole training split and scored on the test features.

    Returns:
        ``top1``, ``top5`` and ``protocol`` (the grid, the held-out fraction and accuracy, the C chosen).
    """
    import warnings

    # heavy imports, only when the probe runs
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    def fit(c: float, rows):
        # The budget is fixed (max_iter, as in CLIP's sweep); an unconverged fit at a weak
        # regularisation is one candidate of the sweep, not a problem worth a warning on stderr.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return LogisticRegression(C=c, max_iter=max_iter).fit(x[rows], y[rows])

    x, y = train_feats.double().numpy(), train_labels.numpy()
    n = len(y)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    n_held = round(held_out * n)
    chosen, held_acc = c_grid[len(c_grid) // 2], None
    if 2 <= n_held < n and len(set(y[order[n_held:]])) > 1:
        train_rows, held = order[n_held:], order[:n_held]
        scores = []
        for c in c_grid:
            clf = fit(c, train_rows)
            scores.append(float((clf.predict(x[held]) == y[held]).mean()))
        best = max(range(len(c_grid)), key=lambda i: (scores[i], -i))
        chosen, held_acc = c_grid[best], scores[best]
    probs = torch.zeros(len(test_labels), int(max(y.max(), test_labels.max())) + 1, dtype=torch.float64)
    if len(set(y.tolist())) > 1:
        clf = fit(chosen, slice(None))
        probs[:, torch.as_tensor(clf.classes_)] = torch.from_numpy(clf.predict_proba(test_feats.double().numpy()))
    else:  # one class to learn from: every image gets it
        probs[:, int(y[0])] = 1.0
    return {"top1": top_k_accuracy(probs, test_labels, 1), "top5": top_k_accuracy(probs, test_labels, 5),
            "protocol": {"model": "multinomial logistic regression, L-BFGS, L2", "C_grid": list(c_grid),
                         "held_out_fraction": held_out, "held_out_accuracy": held_acc, "C": chosen,
                         "seed": seed, "features": "normalised image embedding ([CLS])"}}
