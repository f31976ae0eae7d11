"""m-coherence of per-example gradients (MC §3), for a matrix and, streamed, for a model.

For per-example gradients g_1..g_m:  alpha = ‖Σ g_i‖² / (m · Σ ‖g_i‖²)  and  m-coherence = m·alpha,
i.e. ‖Σ g_i‖² / Σ ‖g_i‖². Both are functions of two running sums, so `model_m_coherence` never
stores per-example gradients: the summed gradient comes from ordinary backward passes and the
per-example squared norms from closed forms per layer type (cglib.layer_rules: Linear, Conv2d,
BatchNorm with running statistics, GroupNorm, LayerNorm, InstanceNorm), streamed over the sample
in chunks. Anything else (and any module called twice or sharing a parameter) gets exact
per-example grads of that module's parameters only, by torch.func vmap(grad(functional_call)).

`per_example_sq_norms` returns the per-example squared norms themselves (GraNd) from the same pass.

Gradients are taken in eval mode: BatchNorm then uses its running statistics, so each example's
loss depends on that example alone and the per-example decomposition g = Σ g_i is well defined
(MC appendix B). Prime the running statistics first (`cglib.measuring`) when they are stale.
"""
from __future__ import annotations

import math
import weakref
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from .layer_rules import sq_norm_rule as _rule
from .measuring import _chunks, _device, measuring
from .pergrad import _GradTap


# ------------------------------------------------------------------ the metric on statistics

def alpha_from_stats(sq_norm_of_sum: float, sum_of_sq_norms: float, m: int) -> float:
    """alpha = ‖Σ g_i‖² / (m · Σ ‖g_i‖²); NaN when every g_i is zero (MC §4 leaves it undefined)."""
    if m <= 0:
        raise ValueError(f"alpha needs at least one example, got m={m}")
    if sum_of_sq_norms == 0:
        return math.nan
    return float(sq_norm_of_sum) / (m * float(sum_of_sq_norms))


def m_coherence_from_stats(sq_norm_of_sum: float, sum_of_sq_norms: float, m: int) -> float:
    """m-coherence = m · alpha: 1 in the orthogonal limit, m when all g_i are identical."""
    return m * alpha_from_stats(sq_norm_of_sum, sum_of_sq_norms, m)


class CoherenceStats(NamedTuple):
    """The sufficient statistics of one set of per-example gradients."""
    sq_norm_of_sum: float   # ‖Σ g_i‖²
    sum_of_sq_norms: float  # Σ ‖g_i‖²
    m: int

    @property
    def alpha(self) -> float:
        return alpha_from_stats(*self)

    @property
    def m_coherence(self) -> float:
        return m_coherence_from_stats(*self)


def coherence_stats(g: torch.Tensor) -> CoherenceStats:
    """Statistics of an (m, d) matrix of per-example gradients (trailing dims are flattened)."""
    if g.dim() < 2 or g.shape[0] == 0:
        raise ValueError(f"expected an (m, d) tensor with m ≥ 1, got shape {tuple(g.shape)}")
    g = g.detach().flatten(1).double()  # float64: ‖Σg‖² cancels heavily near stationary points
    return CoherenceStats(g.sum(0).square().sum().item(), g.square().sum().item(), g.shape[0])


def alpha(g: torch.Tensor) -> float:
    """alpha (MC eq. 3) of the rows of an (m, d) tensor, in [0, 1]."""
    return coherence_stats(g).alpha


def m_coherence(g: torch.Tensor) -> float:
    """m-coherence (MC §3) of the rows of an (m, d) tensor, in [0, m]."""
    return coherence_stats(g).m_coherence


# ------------------------------------------------------------------ streaming over a model

def _owners(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Qualified module name → its own trainable parameters (recurse=False)."""
    owners = {}
    for name, mod in model.named_modules():
        own = [(pn, p) for pn, p in mod.named_parameters(recurse=False) if p.requires_grad]
        if own:
            owners[name] = own
    return owners


class _Reroute(Exception):
    """Some fast-path modules cannot use their closed form (see `_chunk_stats`)."""

    def __init__(self, modules):
        super().__init__()
        self.modules = modules


LOSSES = ("cross_entropy", "label_part")


def _loss_sum(loss: str, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed per-example loss of a chunk of logits z. "label_part": mean_k z_k − z_y, whose
    gradient is the label-dependent part of the cross-entropy gradient: ∂CE/∂z = p − e_y splits
    into p − u (u uniform; a function of the input alone, the same for any label) and u − e_y."""
    if loss == "cross_entropy":
        return F.cross_entropy(z, y, reduction="sum")
    if loss == "label_part":
        return (z.mean(1) - z.gather(1, y[:, None]).squeeze(1)).sum()
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def _chunk_stats(model, xc, yc, fast, fallback, params, qualified, add, g_sum, loss_kind="cross_entropy"):
    """One chunk: per-example squared norms via hooks (fast modules) and vmap (fallback
    parameters), each handed to add(p, (n,) tensor); the summed gradient via autograd, added
    into g_sum unless it is None. Without g_sum only the layers' output gradients are asked
    for (through taps, pergrad._GradTap): no parameter's summed gradient is computed."""
    n = len(xc)
    calls, bad, handles = {}, set(), []
    anchor = None if g_sum is not None else xc.new_zeros((), dtype=torch.float32).requires_grad_()

    def forward_hook(mod, inputs, out):
        calls[mod] = calls.get(mod, 0) + 1
        a = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
        if a is None or a.dim() < 2 or a.shape[0] != n or not out.requires_grad:
            bad.add(mod)  # batch not in dim 0 (or no grad path): closed form does not apply
            return
        a = a.detach()

        def on_output_grad(d):
            norms = _rule(mod)(mod, a, d.detach())
            for pn, p in fast[mod]:
                add(p, norms[pn])

        if anchor is not None:
            return _GradTap.apply(out, anchor, on_output_grad)
        out.register_hook(on_output_grad)

    for mod in fast:
        handles.append(mod.register_forward_hook(forward_hook))
    try:
        loss = _loss_sum(loss_kind, model(xc), yc)
        # a module called twice sums its contributions inside each example: norms don't add
        reroute = bad | {mod for mod, k in calls.items() if k > 1}
        if reroute:
            raise _Reroute(reroute)
        if anchor is None:
            grads = torch.autograd.grad(loss, params, allow_unused=True)  # also fires the norm hooks
        elif fast:
            torch.autograd.grad(loss, anchor, allow_unused=True)  # fires the taps, no parameter gradient
    finally:
        for h in handles:
            h.remove()
    if g_sum is not None:
        for p, gp in zip(params, grads):
            if gp is not None:
                g_sum[p] += gp.double()

    if fallback:
        names = {qualified[p]: p for p in fallback}

        def example_loss(ps, xi, yi):
            out = functional_call(model, ps, (xi.unsqueeze(0),))
            return _loss_sum(loss_kind, out, yi.unsqueeze(0))

        with torch.no_grad():  # torch.func.grad ignores the outer no_grad; the rest builds no graph
            per_example = vmap(grad(example_loss), in_dims=(None, 0, 0))(
                {k: p.detach() for k, p in names.items()}, xc, yc)
        for k, p in names.items():
            add(p, per_example[k].square().reshape(n, -1).sum(1, dtype=torch.float64))


# A chunk's largest activation stays within ACTIVATION_BYTES: past the allocator's mapping
# threshold (32 MiB in glibc) every big tensor of every call is a fresh mapping, paid in page
# faults, so a CNN's batch of 1000 in one chunk is slower than the same batch in chunks (the
# README's "Beside the field's tools" gives the measurement). The MLPs' activations stay far
# below it, so their chunks stay whole.
ACTIVATION_BYTES = 16 * 2**20


def rows_per_chunk(model: nn.Module, x: torch.Tensor, chunk_size: int) -> int:
    """chunk_size, or fewer rows where one example's share of the largest module output times the
    rows would pass ACTIVATION_BYTES. The size comes from one forward of two examples (one where
    x has one), without gradient, in the model's current mode (call it in eval mode, where it
    changes no statistics), kept per model, input shape and dtypes: a probe of the same model
    (every evaluation step of a run) pays for that forward once."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be ≥ 1, got {chunk_size}")
    device = _device(model)
    first = next(model.parameters(), None)
    key = (tuple(x.shape[1:]), x.dtype, None if first is None else first.dtype, str(device))
    sizes = _LARGEST.setdefault(model, {})
    if key not in sizes:
        sizes[key] = _largest_activation(model, x[:2].to(device))
    return max(1, min(chunk_size, ACTIVATION_BYTES // max(sizes[key], 1)))


_LARGEST: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model → {key: bytes per example}


def _largest_activation(model: nn.Module, probe: torch.Tensor) -> int:
    """Bytes per example of the largest tensor a module of the model outputs on `probe`."""
    largest = [0]

    def record(mod, inputs, out):
        if isinstance(out, torch.Tensor):  # per example, whichever dim holds the batch
            largest[0] = max(largest[0], out.numel() * out.element_size() // len(probe))

    hooks = [mod.register_forward_hook(record) for mod in model.modules()]
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for h in hooks:
            h.remove()
    return largest[0]


def _stream(model, x, y, chunk_size, prime_bn, per_example, loss="cross_entropy"):
    """Stream (x, y) through the model in chunks, in eval mode. Returns (owners, params, sq, g_sum):
    float64 sq[p] = Σ_i ‖∇_p ℓ_i‖² and g_sum[p] = Σ_i ∇_p ℓ_i per trainable parameter p; with
    per_example=True instead the (m,) vector sq = Σ_p ‖∇_p ℓ_i‖² and g_sum = None."""
    m = len(x)
    if m == 0 or len(y) != m:
        raise ValueError(f"need matching non-empty x and y, got {len(x)} and {len(y)}")
    owners = _owners(model)
    for bn in (mod for mod in model.modules() if isinstance(mod, _BatchNorm)):
        if bn.running_mean is None and any(p.requires_grad for p in bn.parameters()):
            raise ValueError("BatchNorm without running statistics normalizes with batch statistics "
                             "even in eval mode, so per-example gradients are not defined")
    modules = dict(model.named_modules())
    qualified = {}
    for name, p in model.named_parameters():
        qualified.setdefault(p, name)
    owner_count = {}
    for own in owners.values():
        for _, p in own:
            owner_count[p] = owner_count.get(p, 0) + 1
    params = [p for p in qualified if p.requires_grad]  # unique trainable parameters, model order
    rerouted = set()
    device = _device(model)

    with measuring(model, x, prime_bn, chunk_size):
        rows = rows_per_chunk(model, x, chunk_size)  # in eval mode: the probe changes no statistics
        while True:
            fast = {modules[name]: own for name, own in owners.items()
                    if _rule(modules[name]) is not None and modules[name] not in rerouted
                    and all(owner_count[p] == 1 for _, p in own)}
            fallback = [p for name, own in owners.items() if modules[name] not in fast for _, p in own]
            fallback = list(dict.fromkeys(fallback))  # a shared parameter once
            if per_example:
                sq, g_sum = torch.zeros(m, dtype=torch.float64, device=device), None
            else:
                sq = {p: torch.zeros((), dtype=torch.float64, device=p.device) for p in params}
                g_sum = {p: torch.zeros_like(p, dtype=torch.float64) for p in params}
            try:
                for s in _chunks(m, rows):
                    def add(p, v, s=s):
                        if per_example:
                            sq[s] += v.to(sq.device, torch.float64)
                        else:
                            sq[p] += v.sum(dtype=torch.float64)

                    xc = x[s].to(device, non_blocking=True)
                    yc = y[s].to(device, non_blocking=True)
                    _chunk_stats(model, xc, yc, fast, fallback, params, qualified, add, g_sum, loss)
                return owners, params, sq, g_sum
            except _Reroute as err:
                rerouted |= err.modules


def per_example_sq_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                         chunk_size: int = 1024, prime_bn: bool = False) -> torch.Tensor:
    """‖∇_θ ℓ(x_i, y_i)‖² over all trainable parameters, for each example: an (m,) float64 CPU
    tensor (e.g. for GraNd). Same conventions and cost as `model_m_coherence`."""
    return _stream(model, x, y, chunk_size, prime_bn, per_example=True)[2].cpu()


def model_coherence_stats(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                          chunk_size: int = 1024, prime_bn: bool = False,
                          loss: str = "cross_entropy") -> dict[str, CoherenceStats]:
    """`CoherenceStats` for "all" trainable parameters and for each parameter-owning module
    (qualified name as in model.named_modules(); the root module, if it owns parameters, is "").
    loss="label_part": of the label-dependent part of the gradients only (`_loss_sum`). See
    `model_m_coherence` for the conventions."""
    if "all" in _owners(model):
        raise ValueError('a module named "all" collides with the whole-model key')
    owners, params, sq_sums, g_sum = _stream(model, x, y, chunk_size, prime_bn, per_example=False, loss=loss)

    def stats(ps) -> CoherenceStats:
        num = sum(g_sum[p].square().sum().item() for p in ps)
        den = sum(sq_sums[p].item() for p in ps)
        return CoherenceStats(num, den, len(x))

    out = {"all": stats(params)}
    for name, own in owners.items():
        out[name] = stats([p for _, p in own])
    return out


def model_m_coherence(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      chunk_size: int = 1024, prime_bn: bool = False) -> dict[str, float]:
    """Exact m-coherence of per-example cross-entropy gradients on the sample (x, y).

    Returns {"all": m-coherence of all trainable parameters, <module name>: m-coherence of that
    module's own trainable parameters} for every module owning parameters (recurse=False), names
    as in model.named_modules(). alpha = value / len(x). NaN where every per-example gradient is 0.

    - Eval mode during the passes; every module's train/eval flag is restored afterwards.
      Nothing is written to p.grad. x, y may live on the CPU: chunks move to the model's device.
    - Cost ≈ one forward+backward over the sample plus the closed-form norms (cglib.layer_rules:
      Linear, Conv2d, BatchNorm, GroupNorm, LayerNorm, InstanceNorm); other parameter-owning
      modules cost a vmap per-example pass of their own.
    - chunk_size bounds memory: at most that many examples per chunk, fewer where one
      activation of the chunk would pass ACTIVATION_BYTES (`rows_per_chunk`). The result does
      not depend on it beyond float rounding.
    - prime_bn=False (default) uses the BatchNorm running statistics as they are. prime_bn=True
      first re-estimates them on x (`cglib.measuring.prime_batchnorm`, batches of chunk_size),
      measures, and then puts the model's statistics back, so a measurement never changes
      training. The caller decides: prime when the statistics are stale (the first steps of
      training), or prime once yourself on training inputs with `prime_batchnorm` and pass
      prime_bn=False.
    """
    return {k: v.m_coherence for k, v in model_coherence_stats(model, x, y, chunk_size, prime_bn).items()}
