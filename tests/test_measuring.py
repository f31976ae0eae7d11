"""cglib.measuring on tiny cases: the device a model lives on, the chunks, how many batches
BatchNorm priming splits a sample into (every boundary of its rule, at the default batch size
too), an empty sample, and which CUDA generator a training-mode pass protects. Each test runs
well under a second."""
from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

import cglib.measuring as measuring
from cglib.measuring import _chunks, _device, prime_batchnorm, prime_batchnorm_mc


def test_device_of_the_parameters_else_the_buffers_else_the_cpu():
    assert _device(nn.Linear(2, 2).to("meta")) == torch.device("meta")
    assert _device(nn.BatchNorm1d(2, affine=False).to("meta")) == torch.device("meta")  # buffers only
    assert _device(nn.ReLU()) == torch.device("cpu")


def test_chunks_cover_the_range_in_order():
    assert list(_chunks(5, 2)) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert list(_chunks(3, 1)) == [slice(0, 1), slice(1, 2), slice(2, 3)]
    assert list(_chunks(3, 7)) == [slice(0, 3)]
    assert list(_chunks(0, 4)) == []
    with pytest.raises(ValueError, match="chunk_size must be ≥ 1"):
        list(_chunks(3, 0))


def _bn():
    return nn.Sequential(nn.BatchNorm1d(2, momentum=0.2))


@pytest.mark.parametrize("n, batch_size, batches", [
    (5, 10, 1),      # one batch smaller than batch_size
    (10, 10, 1),
    (11, 10, 1),     # ceil gives 2, the second of one example: one batch of 11 instead
    (21, 10, 2),     # 10 + 1 would leave one alone: two batches of 11 and 10
    (22, 10, 3),     # ceil(2.2) = 3 (a floor division would give 2)
    (25, 10, 3),
    (40, 10, 4),
    (2048, None, 2),  # the default batch size, 1024
    (1026, None, 2),  # 1026 = 1024 + 2: ceil, no example left alone
    (1025, None, 1),  # 1024 + 1: one batch
])
def test_prime_batchnorm_splits_into_near_equal_batches(n, batch_size, batches):
    model = _bn()
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(n)) * 3 + 1
    kw = {} if batch_size is None else {"batch_size": batch_size}
    prime_batchnorm(model, x, **kw)
    bn = model[0]
    assert int(bn.num_batches_tracked) == batches
    assert bn.momentum == 0.2 and bn.training  # momentum and the train flag put back
    # the cumulative average of near-equal batch means is (close to) the sample mean
    sizes = [len(b) for b in x.tensor_split(batches)]
    assert max(sizes) - min(sizes) <= 1
    want = torch.stack([b.mean(0) for b in x.tensor_split(batches)]).mean(0)
    torch.testing.assert_close(bn.running_mean, want, rtol=1e-5, atol=1e-5)


def test_prime_batchnorm_of_no_examples_or_no_batchnorm_changes_nothing():
    model = _bn()
    with torch.no_grad():
        model[0].running_mean.fill_(0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert prime_batchnorm(model, torch.zeros(0, 2)) is model
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    plain = nn.Linear(2, 2)
    assert prime_batchnorm(plain, torch.randn(4, 2)) is plain


class _Batch:
    """An input batch whose `.to(device)` lands on the CPU whatever the device: lets a pass be
    'on' a CUDA device that this machine does not have."""

    def __init__(self, x):
        self.x = x

    def to(self, device, non_blocking=False):
        return self.x


@pytest.mark.parametrize("device, protected", [("cpu", []), ("cuda", [0]), ("cuda:1", [1])])
def test_training_mode_passes_protect_the_generator_of_the_models_card(device, protected, monkeypatch):
    forked = []

    @contextlib.contextmanager
    def fork_rng(devices):
        forked.append(list(devices))
        yield

    monkeypatch.setattr(measuring, "_device", lambda model: torch.device(device))
    monkeypatch.setattr(torch.random, "fork_rng", fork_rng)
    model = _bn()
    assert prime_batchnorm_mc(model, [_Batch(torch.randn(4, 2)), _Batch(torch.randn(4, 2))]) == 2
    assert forked == [protected]
    assert int(model[0].num_batches_tracked) == 2
