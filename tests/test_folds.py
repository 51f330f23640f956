"""Fold assignment: disjoint and covering, stratified by class presence and normality, grouped by study."""

from __future__ import annotations

import numpy as np
import pytest

from detx.data.folds import assign_folds


def _labels(n=300, n_classes=5, seed=0):
    rng = np.random.default_rng(seed)
    rates = np.array([0.3, 0.15, 0.08, 0.04, 0.02])[:n_classes]
    y = (rng.random((n, n_classes)) < rates).astype(int)
    y[rng.random(n) < 0.5] = 0  # about 60% normal images, like the real datasets
    return y


def _max_deviation(y, folds, k):
    """Largest |fold count - expected count| over folds and labels (normal images a label too)."""
    y = np.concatenate([y, (y.sum(1) == 0)[:, None]], axis=1)
    counts = np.stack([y[folds == f].sum(0) for f in range(k)])
    return np.abs(counts - y.sum(0) / k).max(), counts


def test_folds_cover_every_image_once_and_are_deterministic():
    y = _labels()
    folds = assign_folds(y, 5, seed=0)
    assert folds.shape == (len(y),) and set(folds) == set(range(5))
    val_sets = [set(np.flatnonzero(folds == f)) for f in range(5)]
    assert sum(len(s) for s in val_sets) == len(y) and set().union(*val_sets) == set(range(len(y)))
    np.testing.assert_array_equal(folds, assign_folds(y, 5, seed=0))
    assert not np.array_equal(folds, assign_folds(y, 5, seed=1))
    sizes = np.bincount(folds, minlength=5)
    assert sizes.max() - sizes.min() <= 2


def test_folds_stratified_as_well_as_iterstrat():
    iterstrat = pytest.importorskip("iterstrat.ml_stratifiers")
    y = _labels()
    k = 5
    ours, counts = _max_deviation(y, assign_folds(y, k, seed=0), k)
    ref_folds = np.zeros(len(y), dtype=int)
    y_ref = np.concatenate([y, (y.sum(1) == 0)[:, None]], axis=1)
    for f, (_, val) in enumerate(iterstrat.MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=0)
                                 .split(np.zeros(len(y)), y_ref)):
        ref_folds[val] = f
    ref, _ = _max_deviation(y, ref_folds, k)
    assert ours <= max(ref, 1.0) + 0.5, (ours, ref)
    totals = counts.sum(0)
    assert (counts[:, totals >= k] > 0).all()  # a label with >= k images is in every fold


def test_rare_class_spread_over_folds():
    y = np.zeros((50, 2), dtype=int)
    y[:5, 1] = 1  # 5 images of a rare class, 5 folds: one each
    y[5:25, 0] = 1
    folds = assign_folds(y, 5, seed=3)
    assert sorted(folds[:5]) == [0, 1, 2, 3, 4]
    assert np.bincount(folds[5:25], minlength=5).tolist() == [4] * 5
    assert np.bincount(folds[25:], minlength=5).tolist() == [5] * 5  # normal images a stratum too


def test_studies_never_split():
    rng = np.random.default_rng(0)
    groups = np.repeat([f"s{i}" for i in range(60)], rng.integers(1, 5, size=60))
    y = _labels(len(groups), seed=1)
    folds = assign_folds(y, 4, seed=0, groups=groups)
    for g in set(groups):
        assert len(set(folds[groups == g])) == 1, g
    dev, _ = _max_deviation(y, folds, 4)
    assert dev <= 6  # groups of up to 4 images limit the balance, but it stays close
    ungrouped = np.array([""] * len(y))  # empty keys: images of their own
    assert len(set(assign_folds(y, 4, groups=ungrouped))) == 4


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least 2"):
        assign_folds(np.zeros((4, 1)), 1)
    with pytest.raises(ValueError, match="cannot split"):
        assign_folds(np.zeros((3, 1)), 5)
