"""Label corruption exactly as CG §2.1 and DESIGN.md §4.

Choose exactly round(ε·n) training examples uniformly at random and permute their labels among
themselves. Permuting (rather than drawing fresh labels) keeps every class count unchanged, so
only the pairing of images and labels is destroyed. An example whose label happens to survive
the permutation is *pristine*; the pristine fraction is the proper accuracy ≈ 1 − ε + ε/K.
"""
from __future__ import annotations

import numpy as np


def corrupt_labels(labels, noise: float, seed: int, num_classes: int):
    """→ (noisy_labels, corrupt) numpy arrays: int64 labels and a bool mask of changed labels."""
    labels = np.asarray(labels, dtype=np.int64)
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be in [0, 1], got {noise}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    rng = np.random.default_rng(seed)
    n_chosen = round(noise * len(labels))
    chosen = rng.choice(len(labels), size=n_chosen, replace=False)
    noisy = labels.copy()
    noisy[chosen] = labels[chosen][rng.permutation(n_chosen)]
    return noisy, noisy != labels


def proper_accuracy(noise: float, num_classes: int) -> float:
    """Expected pristine fraction 1 − ε + ε/K (CG §2.1)."""
    return 1.0 - noise + noise / num_classes
