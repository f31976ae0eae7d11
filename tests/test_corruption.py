import numpy as np
import pytest

from cglib.corruption import corrupt_labels, proper_accuracy


def labels(n=10_000, k=10, seed=1):
    return np.random.default_rng(seed).integers(0, k, size=n)


@pytest.mark.parametrize("noise", [0.0, 0.1, 0.25, 0.5, 0.75, 1.0])
def test_exact_count_only_chosen_change_class_counts(noise):
    y = labels()
    noisy, corrupt = corrupt_labels(y, noise, seed=3, num_classes=10)
    assert noisy.dtype == np.int64 and corrupt.dtype == bool
    assert np.array_equal(corrupt, noisy != y)
    # class counts preserved: labels are permuted, not redrawn
    assert np.array_equal(np.bincount(noisy, minlength=10), np.bincount(y, minlength=10))
    # only the round(ε n) chosen examples can change: re-derive the choice from the same RNG
    rng = np.random.default_rng(3)
    chosen = rng.choice(len(y), size=round(noise * len(y)), replace=False)
    untouched = np.ones(len(y), bool)
    untouched[chosen] = False
    assert np.array_equal(noisy[untouched], y[untouched])
    assert corrupt.sum() <= len(chosen)
    # pristine fraction ≈ 1 − ε + ε/K
    assert abs((1 - corrupt.mean()) - proper_accuracy(noise, 10)) < 0.015


def test_noise_zero_is_identity_and_one_permutes_all():
    y = labels(1000)
    noisy, corrupt = corrupt_labels(y, 0.0, seed=0, num_classes=10)
    assert np.array_equal(noisy, y) and not corrupt.any()
    noisy, corrupt = corrupt_labels(y, 1.0, seed=0, num_classes=10)
    assert sorted(noisy) == sorted(y) and 0.85 < corrupt.mean() < 0.95


def test_seed_determinism():
    y = labels(2000)
    a = corrupt_labels(y, 0.5, seed=7, num_classes=10)
    b = corrupt_labels(y, 0.5, seed=7, num_classes=10)
    c = corrupt_labels(y, 0.5, seed=8, num_classes=10)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_bad_inputs():
    with pytest.raises(ValueError):
        corrupt_labels(labels(10), 1.5, 0, 10)
    with pytest.raises(ValueError):
        corrupt_labels(np.array([0, 11]), 0.5, 0, 10)


def test_noise_and_labels_are_checked_on_both_sides_of_their_bounds():
    y = np.array([0, 9, 3])
    for noise in (0.0, 1.0):  # the bounds themselves are valid
        corrupt_labels(y, noise, seed=0, num_classes=10)
    for noise in (-0.01, -0.5, 1.01, 1.5):
        with pytest.raises(ValueError, match="noise must be in"):
            corrupt_labels(y, noise, seed=0, num_classes=10)
    for bad in ([-1, 3], [10, 3]):  # below 0, at K
        with pytest.raises(ValueError, match="labels must lie"):
            corrupt_labels(np.array(bad), 0.5, seed=0, num_classes=10)
    assert corrupt_labels(np.array([], dtype=np.int64), 0.5, seed=0, num_classes=10)[0].size == 0


def test_the_count_is_rounded_to_nearest_not_truncated():
    # ε·n = 2.6 → 3 chosen (truncation would choose 2); with all labels distinct, every changed
    # label is a chosen one, and some seed's permutation moves all three
    labels = np.arange(10)
    changed = [corrupt_labels(labels, 0.26, seed, 10)[1].sum() for seed in range(30)]
    assert max(changed) == 3
