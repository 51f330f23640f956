"""K-fold splits stratified by class presence (normal images a stratum of their own), grouped by study.

:func:`assign_folds` is a group-aware version of the iterative stratification of Sechidis et al.
(2011), the algorithm behind ``iterstrat.MultilabelStratifiedKFold``: groups (studies, or single
images) are taken rarest label first, and each goes to the fold that still lacks most of that label
(ties: the fold that still lacks most images, then the lowest-numbered fold after a seeded shuffle).
All images of a group land in the same fold, so a study is never in both train and val.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from detx.core.errors import InputError


def assign_folds(
    labels: np.ndarray | pd.DataFrame,
    k: int,
    seed: int = 0,
    groups: np.ndarray | pd.Series | list | None = None,
) -> np.ndarray:
    """Assign each row (image) to one of ``k`` folds.

    Args:
        labels: (N, L) 0/1 matrix of class presence per image. An all-zero row is a normal image;
            normal images are stratified as an extra label.
        k: number of folds (>= 2).
        seed: shuffles the order of equally rare groups (the result is deterministic given the seed).
        groups: optional (N,) group key per image (e.g. study_id); images of a group share a fold.
            Empty or missing keys count as a group of one image.

    Returns:
        (N,) int array of fold indices in ``[0, k)``.
    """
    y = np.asarray(labels, dtype=np.int64)
    if y.ndim != 2:
        raise InputError(f"labels must be an (N, L) matrix, got shape {y.shape}")
    n = len(y)
    if k < 2:
        raise InputError(f"need at least 2 folds, got {k}")
    if n < k:
        raise InputError(f"cannot split {n} images into {k} folds")
    y = np.concatenate([y > 0, (y.sum(axis=1) == 0)[:, None]], axis=1).astype(np.int64)
    if groups is None:
        group_index = np.arange(n)
    else:
        keys = [f"\0{i}" if (g is None or g == "" or (isinstance(g, float) and np.isnan(g))) else str(g)
                for i, g in enumerate(groups)]
        _, group_index = np.unique(np.asarray(keys, dtype=object), return_inverse=True)
        group_index = group_index.reshape(-1)
    n_groups = int(group_index.max()) + 1
    g_counts = np.zeros((n_groups, y.shape[1]), dtype=np.int64)
    np.add.at(g_counts, group_index, y)
    g_sizes = np.bincount(group_index, minlength=n_groups)

    rng = np.random.default_rng(seed)
    want_labels = np.tile(g_counts.sum(axis=0) / k, (k, 1)).astype(float)
    want_size = np.full(k, n / k, dtype=float)
    fold_of_group = np.full(n_groups, -1, dtype=np.int64)
    remaining = np.ones(n_groups, dtype=bool)
    label_left = g_counts.sum(axis=0).astype(float)
    while remaining.any():
        # the rarest label still to distribute (Sechidis): its groups are placed first
        candidates = np.flatnonzero(label_left > 0)
        if len(candidates):
            lab = candidates[np.argmin(label_left[candidates])]
            idx = np.flatnonzero(remaining & (g_counts[:, lab] > 0))
        else:  # only groups without labels remain (cannot happen: every image has a label)
            lab, idx = None, np.flatnonzero(remaining)
        idx = idx[rng.permutation(len(idx))]
        idx = idx[np.argsort(-g_sizes[idx], kind="stable")]  # big groups first: easier to balance
        for g in idx:
            if lab is not None:
                score = want_labels[:, lab]
                best = np.flatnonzero(np.isclose(score, score.max()))
            else:
                best = np.arange(k)
            size_score = want_size[best]
            best = best[np.isclose(size_score, size_score.max())]
            f = int(best[0]) if len(best) == 1 else int(rng.choice(best))
            fold_of_group[g] = f
            want_labels[f] -= g_counts[g]
            want_size[f] -= g_sizes[g]
            label_left -= g_counts[g]
            remaining[g] = False
    return fold_of_group[group_index]
