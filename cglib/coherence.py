"""m-coherence of per-example gradients (MC §3), for a matrix and, streamed, for a model.

For per-example gradients g_1..g_m:  alpha = ‖Σ g_i‖² / (m · Σ ‖g_i‖²)  and  m-coherence = m·alpha,
i.e. ‖Σ g_i‖² / Σ ‖g_i‖². Both are functions of two running sums, so `model_m_coherence` never
stores per-example gradients: the summed gradient comes from ordinary backward passes and the
per-example squared norms from closed forms per layer type, streamed over the sample in chunks:

- Linear      ‖∇W_i‖² = ‖a_i‖²·‖δ_i‖², ‖∇b_i‖² = ‖δ_i‖²  (a = layer input, δ = grad of its output);
              with extra leading dims, ‖Σ_t δ_t a_tᵀ‖² = Σ_{t,s} (a_t·a_s)(δ_t·δ_s) (Gram form)
              or the per-example gradient itself, whichever is smaller.
- Conv2d      ∇W_i = δ_i (C_out × L) @ unfold(a_i)ᵀ (L × C_in·k·k), per group (im2col form).
- BatchNorm   (eval mode) ∇γ_i = Σ_spatial δ_i·x̂_i, ∇β_i = Σ_spatial δ_i with running statistics.
- anything else (and any module called twice or sharing a parameter): exact per-example grads
  of that module's parameters only, by torch.func vmap(grad(functional_call)).

`per_example_sq_norms` returns the per-example squared norms themselves (GraNd) from the same pass.

Gradients are taken in eval mode: BatchNorm then uses its running statistics, so each example's
loss depends on that example alone and the per-example decomposition g = Σ g_i is well defined
(MC appendix B). Prime the running statistics first (`cglib.measuring`) when they are stale.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from .measuring import _chunks, _device, measuring
from .pergrad import _GradTap

# Elements in one block of per-example intermediates (conv patches, Linear Gram / gradients):
# bounds memory whatever the chunk size.
_BLOCK_ELEMENTS = 1 << 24


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


# ------------------------------------------------------------------ per-example squared norms
# Each rule maps (module, layer input a, output grad δ) of one chunk to {param name: (N,) tensor}.

def _linear_sq_norms(mod: nn.Linear, a: torch.Tensor, d: torch.Tensor) -> dict:
    if a.dim() == 2:
        d2 = d.square().sum(1)
        return {"weight": a.square().sum(1) * d2, "bias": d2}
    a, d = a.flatten(1, -2), d.flatten(1, -2)  # (N, T, in), (N, T, out): ∇W_i = Σ_t δ_t a_tᵀ
    t, size = a.shape[1], a.shape[2] * d.shape[2]
    block = max(1, _BLOCK_ELEMENTS // min(t * t, size))
    weight = []
    for s in _chunks(len(a), block):  # whichever of (T × T) Gram or (out × in) gradient is smaller
        if t * t <= size:
            weight.append(((a[s] @ a[s].transpose(1, 2)) * (d[s] @ d[s].transpose(1, 2))).sum((1, 2)))
        else:
            weight.append((d[s].transpose(1, 2) @ a[s]).square().sum((1, 2)))
    return {"weight": torch.cat(weight), "bias": d.sum(1).square().sum(1)}


def _conv2d_padded(mod: nn.Conv2d, a: torch.Tensor) -> torch.Tensor:
    """The input as the convolution itself sees it, padding included."""
    if isinstance(mod.padding, str):  # 'valid' or 'same': torch pads total//2 before, rest after
        pads = []
        for k, dil in zip(reversed(mod.kernel_size), reversed(mod.dilation)):
            total = 0 if mod.padding == "valid" else dil * (k - 1)
            pads += [total // 2, total - total // 2]
    else:
        pads = [p for p in reversed(mod.padding) for _ in range(2)]
    if not any(pads):
        return a.contiguous()
    mode = "constant" if mod.padding_mode == "zeros" else mod.padding_mode
    return F.pad(a, pads, mode=mode).contiguous()


def _conv2d_sq_norms(mod: nn.Conv2d, a: torch.Tensor, d: torch.Tensor) -> dict:
    # Two exact forms, picked by shape (never by timing, so a result's bytes do not depend on the
    # machine's load): the weight gradient of one convolution grouped by example for 8 or more
    # input channels per group, the patches product below that (measured on one core: 16→32
    # channels 14×14, 1.7× faster grouped; 64→64 32×32, 2.6×; 3→64, 1.2× slower).
    if mod.in_channels // mod.groups >= 8:
        return _conv2d_sq_norms_grouped(mod, a, d)
    return _conv2d_sq_norms_patches(mod, a, d)


def _conv2d_sq_norms_grouped(mod: nn.Conv2d, a: torch.Tensor, d: torch.Tensor) -> dict:
    # ∇W_i for every example i at once: the weight gradient of the layer's convolution run on the
    # batch folded into channels, one group per example (and per group of the layer), as torch's
    # own backward computes it, without the sum over examples.
    if isinstance(mod.padding, str) or mod.padding_mode != "zeros":
        a, padding = _conv2d_padded(mod, a), (0, 0)
    else:
        padding = mod.padding
    n, c_out = a.shape[0], mod.out_channels
    per_example = mod.weight.numel() + a[0].numel() + d[0].numel()
    block = max(1, _BLOCK_ELEMENTS // per_example)
    weight = []
    for s in _chunks(n, block):
        k = s.stop - s.start
        w = torch.empty((k * c_out, *mod.weight.shape[1:]), dtype=d.dtype, device=d.device)
        _, gw, _ = torch.ops.aten.convolution_backward(
            d[s].reshape(1, k * c_out, *d.shape[2:]), a[s].reshape(1, -1, *a.shape[2:]), w, None,
            mod.stride, padding, mod.dilation, False, [0, 0], k * mod.groups, [False, True, False])
        weight.append(gw.reshape(k, -1).square().sum(1))
    return {"weight": torch.cat(weight), "bias": d.sum((2, 3)).square().sum(1)}


def _conv2d_sq_norms_patches(mod: nn.Conv2d, a: torch.Tensor, d: torch.Tensor) -> dict:
    # ∇W_i = δ_i (C_out × L) @ patches_i (L × C_in·kh·kw), per group. The patches are a strided
    # view of the padded input copied once by reshape: the same matrix as F.unfold, ~2× faster.
    a = _conv2d_padded(mod, a)
    n, c_in, groups = a.shape[0], a.shape[1], mod.groups
    (kh, kw), (dh, dw), (sh, sw) = mod.kernel_size, mod.dilation, mod.stride
    ho, wo = d.shape[-2], d.shape[-1]
    st = a.stride()
    windows = a.as_strided((n, c_in, kh, kw, ho, wo),
                           (st[0], st[1], st[2] * dh, st[3] * dw, st[2] * sh, st[3] * sw))
    d = d.reshape(n, groups, mod.out_channels // groups, ho * wo)  # (N, G, C_out/G, L)
    cols = c_in // groups * kh * kw
    per_example = d.shape[2] * cols + ho * wo * (cols + d.shape[2])
    block = max(1, _BLOCK_ELEMENTS // max(1, per_example))
    weight = []
    for s in _chunks(n, block):  # bounded memory: (block, C_in·kh·kw, L) patches at a time
        patches = windows[s].reshape(-1, groups, cols, ho * wo)
        weight.append((d[s] @ patches.transpose(-1, -2)).square().sum((1, 2, 3)))
    return {"weight": torch.cat(weight), "bias": d.sum(-1).square().sum((1, 2))}


def _batchnorm_sq_norms(mod: _BatchNorm, a: torch.Tensor, d: torch.Tensor) -> dict:
    shape = (1, -1) + (1,) * (a.dim() - 2)
    x_hat = (a - mod.running_mean.view(shape)) * torch.rsqrt(mod.running_var.view(shape) + mod.eps)
    spatial = tuple(range(2, a.dim()))
    gamma = (d * x_hat).sum(spatial) if spatial else d * x_hat
    beta = d.sum(spatial) if spatial else d
    return {"weight": gamma.square().sum(1), "bias": beta.square().sum(1)}


def _affine_norm_sq_norms(x_hat: torch.Tensor, d: torch.Tensor, over: tuple) -> dict:
    """γ, β of y = γ·x̂ + β (x̂ the normalised input): ∇γ_i = Σ δ_i·x̂_i and ∇β_i = Σ δ_i, each
    summed over the dims `over` (those γ does not cover) of example i."""
    gamma, beta = (d * x_hat).sum(over) if over else d * x_hat, d.sum(over) if over else d
    return {"weight": gamma.square().flatten(1).sum(1), "bias": beta.square().flatten(1).sum(1)}


def _per_channel(a: torch.Tensor) -> tuple:
    return tuple(range(2, a.dim()))  # (N, C, *spatial): γ per channel, summed over space


def _groupnorm_sq_norms(mod: nn.GroupNorm, a: torch.Tensor, d: torch.Tensor) -> dict:
    # Opacus's rule (grad_sample/group_norm.py): normalise the input, multiply by δ, sum over space
    return _affine_norm_sq_norms(F.group_norm(a, mod.num_groups, eps=mod.eps), d, _per_channel(a))


def _layernorm_sq_norms(mod: nn.LayerNorm, a: torch.Tensor, d: torch.Tensor) -> dict:
    shape = tuple(mod.normalized_shape)  # γ covers the trailing dims: sum over the ones between
    return _affine_norm_sq_norms(F.layer_norm(a, shape, eps=mod.eps), d, tuple(range(1, a.dim() - len(shape))))


def _instancenorm_sq_norms(mod: _InstanceNorm, a: torch.Tensor, d: torch.Tensor) -> dict:
    running = mod.track_running_stats and not mod.training  # as forward: running stats in eval only
    x_hat = F.instance_norm(a, mod.running_mean if running else None, mod.running_var if running else None,
                            use_input_stats=not running, eps=mod.eps)
    return _affine_norm_sq_norms(x_hat, d, _per_channel(a))


def _rule(mod: nn.Module):
    if type(mod) is nn.Linear:  # exact types: a subclass may change forward
        return _linear_sq_norms
    if type(mod) is nn.Conv2d:
        return _conv2d_sq_norms
    if isinstance(mod, _BatchNorm) and mod.running_mean is not None:
        return _batchnorm_sq_norms
    if type(mod) is nn.GroupNorm:
        return _groupnorm_sq_norms
    if type(mod) is nn.LayerNorm:
        return _layernorm_sq_norms
    if type(mod) in (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d):
        return _instancenorm_sq_norms
    return None


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
                for s in _chunks(m, chunk_size):
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
    - Cost ≈ one forward+backward over the sample plus the closed-form norms (Linear, Conv2d,
      BatchNorm); other parameter-owning modules cost a vmap per-example pass of their own.
    - chunk_size bounds memory (activations of one chunk); the result does not depend on it.
    - prime_bn=False (default) uses the BatchNorm running statistics as they are. prime_bn=True
      first re-estimates them on x (`cglib.measuring.prime_batchnorm`, batches of chunk_size),
      measures, and then puts the model's statistics back, so a measurement never changes
      training. The caller decides: prime when the statistics are stale (the first steps of
      training), or prime once yourself on training inputs with `prime_batchnorm` and pass
      prime_bn=False.
    """
    return {k: v.m_coherence for k, v in model_coherence_stats(model, x, y, chunk_size, prime_bn).items()}
