"""How a model is put in measuring mode: eval mode (every module's own flag restored afterwards)
and BatchNorm running statistics, primed once at the start of training as MC appendix B does
(`prime_batchnorm_mc`) or re-estimated on the measured sample (`prime_batchnorm`, inside
`measuring`). Used by cglib.coherence (E7), cglib.shares (E2) and cglib.train."""
from __future__ import annotations

import contextlib
import math

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def _device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _chunks(n: int, chunk_size: int):
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be ≥ 1, got {chunk_size}")
    for start in range(0, n, chunk_size):
        yield slice(start, min(start + chunk_size, n))


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Put every submodule in eval mode and restore each one's own flag afterwards
    (model.train() would not: a model may deliberately keep some modules in eval mode)."""
    flags = [(mod, mod.training) for mod in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for mod, flag in flags:
            mod.training = flag


def _batchnorms(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.running_mean is not None]


@contextlib.contextmanager
def _batchnorm_buffers_restored(model: nn.Module):
    saved = [(bn, {k: v.clone() for k, v in bn.named_buffers(recurse=False)}) for bn in _batchnorms(model)]
    try:
        yield
    finally:
        with torch.no_grad():
            for bn, buffers in saved:
                for k, v in buffers.items():
                    getattr(bn, k).copy_(v)


def prime_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> nn.Module:
    """Recompute BatchNorm running statistics on the sample x (MC appendix B): reset them, run
    forward passes in train mode under no_grad with momentum=None (a cumulative average, so every
    batch counts equally and nothing of the stale statistics survives), then restore momentum and
    every module's train/eval flag. No parameter changes, no random numbers consumed (dropout in
    train mode draws from a forked generator). Modifies the running statistics in place
    — that is the point; `model_m_coherence(prime_bn=True)` undoes it after measuring."""
    bns = _batchnorms(model)
    if not bns or len(x) == 0:
        return model
    momenta = [bn.momentum for bn in bns]
    # near-equal batches: no batch of one example (BatchNorm1d rejects it in train mode), and
    # the cumulative average then weights examples almost equally
    n_batches = max(1, math.ceil(len(x) / batch_size))
    if n_batches > 1 and len(x) % batch_size == 1:
        n_batches = max(1, len(x) // batch_size)
    try:
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        _train_mode_passes(model, x.tensor_split(n_batches))
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
    return model


def prime_batchnorm_mc(model: nn.Module, batches) -> int:
    """MC appendix B: "priming the moving averages in the BN layers by running 40 steps without
    updating any trainable parameters (or momentum values) with a no-op optimizer". Each input
    batch of `batches` is one forward pass in training mode under no_grad, so BatchNorm updates
    its running averages with its own momentum, exactly as a training step would, and nothing
    else changes (train/eval flags restored; dropout draws from a forked generator). Unlike
    `prime_batchnorm` the statistics are kept: later eval-mode measurements use them, and
    training goes on updating them. Returns the number of passes (0 without BatchNorm)."""
    if not _batchnorms(model):
        return 0
    return _train_mode_passes(model, batches)


def _train_mode_passes(model: nn.Module, batches) -> int:
    """One forward pass per input batch in training mode under no_grad (BatchNorm updates its
    running statistics, nothing else changes); every module's train/eval flag is restored and
    dropout draws from a forked generator, so training's random stream is not shifted."""
    flags = [(mod, mod.training) for mod in model.modules()]
    device = _device(model)
    cuda = [device.index or 0] if device.type == "cuda" else []
    passes = 0
    try:
        model.train()
        with torch.no_grad(), torch.random.fork_rng(devices=cuda):
            for xb in batches:
                model(xb.to(device, non_blocking=True))
                passes += 1
    finally:
        for mod, flag in flags:
            mod.training = flag
    return passes


@contextlib.contextmanager
def measuring(model: nn.Module, x: torch.Tensor, prime_bn: bool, batch_size: int):
    """Eval mode for per-example measurements on x; with prime_bn, on BatchNorm statistics
    re-estimated on x (`prime_batchnorm`), training's own statistics put back afterwards."""
    with contextlib.ExitStack() as stack:
        if prime_bn:
            stack.enter_context(_batchnorm_buffers_restored(model))
            prime_batchnorm(model, x, batch_size=batch_size)
        stack.enter_context(eval_mode(model))
        yield model
