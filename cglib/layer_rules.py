"""Per-layer closed forms for per-example gradients, one small function per layer kind.

A rule takes (module, a, δ) for one call of the module on a batch of N examples: a is the
module's input and δ the gradient of the summed loss with respect to its output. Because example
i's loss depends on example i alone, δ_i = ∂ℓ_i/∂out_i, and each parameter's per-example
gradient is a closed form in a_i and δ_i (as Opacus's grad_sample/ and BackPACK compute them):

- Linear      ∇W_i = δ_iᵀ a_i (summed over any extra leading dims), ∇b_i = Σ δ_i
- Conv2d      ∇W_i = δ_i (C_out × L) @ patches(a_i)ᵀ (L × C_in·kh·kw) per group, ∇b_i = Σ_L δ_i
- BatchNorm (running statistics), GroupNorm, LayerNorm, InstanceNorm:
              y = γ·x̂ + β, so ∇γ_i = Σ δ_i·x̂_i and ∇β_i = Σ δ_i over the dims γ does not cover

Two families: ``grad_rule(mod)`` gives {"weight": (N, *W.shape), "bias": (N, *b.shape)}, the
gradients themselves (cglib.pergrad); ``sq_norm_rule(mod)`` gives {"weight": (N,), "bias": (N,)},
their squared norms, without forming the gradient where a cheaper form exists (Linear:
‖a_i‖²·‖δ_i‖²; cglib.coherence). Both return None for a module kind without a rule; exact types
only, since a subclass may change forward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from .measuring import _chunks

# Elements in one block of per-example intermediates (conv patches, Linear Gram / gradients):
# bounds memory whatever the chunk size.
_BLOCK_ELEMENTS = 1 << 24

INSTANCE_NORMS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


# ------------------------------------------------------------------ Linear
def _linear_grads(mod: nn.Linear, a: torch.Tensor, d: torch.Tensor) -> dict:
    if a.dim() == 2:
        return {"weight": d.unsqueeze(2) * a.unsqueeze(1), "bias": d}
    a, d = a.flatten(1, -2), d.flatten(1, -2)  # (N, T, in), (N, T, out)
    return {"weight": d.transpose(1, 2) @ a, "bias": d.sum(1)}


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


# ------------------------------------------------------------------ Conv2d
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


def _conv2d_weight_blocks(mod: nn.Conv2d, a: torch.Tensor, d: torch.Tensor):
    """The per-example weight gradients (k, *W.shape), a block of k examples at a time.

    Two exact forms, picked by shape (never by timing, so a result's bytes do not depend on the
    machine's load): from 8 input channels per group, the weight gradient of one convolution
    run on the block folded into channels, one group per example (and per group of the layer),
    as torch's own backward computes it without the sum over examples; below that, the patches
    product δ_i @ patches_i ᵀ (the README's bench section has the measured crossover)."""
    if mod.in_channels // mod.groups >= 8:
        yield from _conv2d_weight_blocks_grouped(mod, a, d)
    else:
        yield from _conv2d_weight_blocks_patches(mod, a, d)


def _conv2d_weight_blocks_grouped(mod: nn.Conv2d, a: torch.Tensor, d: torch.Tensor):
    if isinstance(mod.padding, str) or mod.padding_mode != "zeros":
        a, padding = _conv2d_padded(mod, a), (0, 0)
    else:
        padding = mod.padding
    n, c_out = a.shape[0], mod.out_channels
    per_example = mod.weight.numel() + a[0].numel() + d[0].numel()
    block = max(1, _BLOCK_ELEMENTS // per_example)
    for s in _chunks(n, block):
        k = s.stop - s.start
        w = torch.empty((k * c_out, *mod.weight.shape[1:]), dtype=d.dtype, device=d.device)
        _, gw, _ = torch.ops.aten.convolution_backward(
            d[s].reshape(1, k * c_out, *d.shape[2:]), a[s].reshape(1, -1, *a.shape[2:]), w, None,
            mod.stride, padding, mod.dilation, False, [0, 0], k * mod.groups, [False, True, False])
        yield gw.reshape(k, *mod.weight.shape)


def _conv2d_weight_blocks_patches(mod: nn.Conv2d, a: torch.Tensor, d: torch.Tensor):
    # The patches are a strided view of the padded input copied once by reshape: the same
    # matrix as F.unfold, about twice as fast.
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
    for s in _chunks(n, block):  # bounded memory: (block, C_in·kh·kw, L) patches at a time
        patches = windows[s].reshape(-1, groups, cols, ho * wo)
        yield (d[s] @ patches.transpose(-1, -2)).reshape(-1, *mod.weight.shape)


def _conv2d_grads(mod: nn.Conv2d, a: torch.Tensor, d: torch.Tensor) -> dict:
    return {"weight": torch.cat(list(_conv2d_weight_blocks(mod, a, d))), "bias": d.sum((2, 3))}


def _conv2d_sq_norms(mod: nn.Conv2d, a: torch.Tensor, d: torch.Tensor) -> dict:
    weight = [g.square().flatten(1).sum(1) for g in _conv2d_weight_blocks(mod, a, d)]
    return {"weight": torch.cat(weight), "bias": d.sum((2, 3)).square().sum(1)}


# ------------------------------------------------------------------ affine normalisations
def _affine_norm_grads(x_hat: torch.Tensor, d: torch.Tensor, over: tuple) -> dict:
    """γ, β of y = γ·x̂ + β (x̂ the normalised input): ∇γ_i = Σ δ_i·x̂_i and ∇β_i = Σ δ_i, each
    summed over the dims `over` (those γ does not cover) of example i."""
    return {"weight": (d * x_hat).sum(over) if over else d * x_hat,
            "bias": d.sum(over) if over else d}


def _per_channel(a: torch.Tensor) -> tuple:
    return tuple(range(2, a.dim()))  # (N, C, *spatial): γ per channel, summed over space


def _batchnorm_grads(mod: _BatchNorm, a: torch.Tensor, d: torch.Tensor) -> dict:
    shape = (1, -1) + (1,) * (a.dim() - 2)
    x_hat = (a - mod.running_mean.view(shape)) * torch.rsqrt(mod.running_var.view(shape) + mod.eps)
    return _affine_norm_grads(x_hat, d, _per_channel(a))


def _groupnorm_grads(mod: nn.GroupNorm, a: torch.Tensor, d: torch.Tensor) -> dict:
    # Opacus's rule (grad_sample/group_norm.py): normalise the input, multiply by δ, sum over space
    return _affine_norm_grads(F.group_norm(a, mod.num_groups, eps=mod.eps), d, _per_channel(a))


def _layernorm_grads(mod: nn.LayerNorm, a: torch.Tensor, d: torch.Tensor) -> dict:
    shape = tuple(mod.normalized_shape)  # γ covers the trailing dims: sum over the ones between
    return _affine_norm_grads(F.layer_norm(a, shape, eps=mod.eps), d, tuple(range(1, a.dim() - len(shape))))


def _instancenorm_grads(mod: _InstanceNorm, a: torch.Tensor, d: torch.Tensor) -> dict:
    running = mod.track_running_stats and not mod.training  # as forward: running stats in eval only
    x_hat = F.instance_norm(a, mod.running_mean if running else None, mod.running_var if running else None,
                            use_input_stats=not running, eps=mod.eps)
    return _affine_norm_grads(x_hat, d, _per_channel(a))


def _squared(grads_rule):
    def sq_norms(mod, a, d) -> dict:
        return {k: g.square().flatten(1).sum(1) for k, g in grads_rule(mod, a, d).items()}
    sq_norms.__name__ = grads_rule.__name__.replace("_grads", "_sq_norms")
    return sq_norms


# ------------------------------------------------------------------ which rule
def _kind(mod: nn.Module) -> str | None:
    if type(mod) is nn.Linear:  # exact types: a subclass may change forward
        return "linear"
    if type(mod) is nn.Conv2d:
        return "conv2d"
    if isinstance(mod, _BatchNorm) and mod.running_mean is not None:
        return "batchnorm"
    if type(mod) is nn.GroupNorm:
        return "groupnorm"
    if type(mod) is nn.LayerNorm:
        return "layernorm"
    if type(mod) in INSTANCE_NORMS:
        return "instancenorm"
    return None


GRAD_RULES = {"linear": _linear_grads, "conv2d": _conv2d_grads, "batchnorm": _batchnorm_grads,
              "groupnorm": _groupnorm_grads, "layernorm": _layernorm_grads,
              "instancenorm": _instancenorm_grads}
SQ_NORM_RULES = {"linear": _linear_sq_norms, "conv2d": _conv2d_sq_norms,
                 **{k: _squared(GRAD_RULES[k]) for k in ("batchnorm", "groupnorm", "layernorm", "instancenorm")}}


def grad_rule(mod: nn.Module):
    """(mod, a, δ) -> {param name: (N, *param.shape)}, or None without a closed form."""
    return GRAD_RULES.get(_kind(mod))


def sq_norm_rule(mod: nn.Module):
    """(mod, a, δ) -> {param name: (N,) squared norms}, or None without a closed form."""
    return SQ_NORM_RULES.get(_kind(mod))
