"""Per-example gradients of the cross-entropy loss.

Convention: the per-example gradient of example i is the gradient of
``loss_i = cross_entropy(model(x)[i], y[i])`` -- *not* of ``loss_i / B``. The gradient of the
mean batch loss is therefore ``g.mean(0)`` for every returned ``g`` of shape (B, *param.shape).

Fast path (one forward + one backward for the whole batch): for every module with a closed
form (cglib.layer_rules: Linear, Conv2d, BatchNorm with running statistics, GroupNorm,
LayerNorm, InstanceNorm) the layer input ``a_i`` is captured by a forward hook and the gradient
of the summed loss with respect to the layer output, ``delta_i``, by an identity autograd node
placed on the output. Because example i's loss depends only on example i's activations,
``delta_i = d loss_i / d out_i``, and each parameter's per-example gradient is a closed form in
the two (a Linear weight: the outer product ``delta_i^T a_i``, kept factored). The backward
pass asks autograd only for the gradient of a dummy "anchor" tensor wired into those identity
nodes, so no summed weight gradient is ever computed and ``p.grad`` is never touched.

Fallback, in one pass: when any trainable parameter has no closed form (a module kind without a
rule, parameters registered directly on a container, weights shared between modules, a call
without the batch in dim 0), every parameter's gradient comes from one
``torch.func.vmap(grad(...))`` over ``functional_call``, chunked over the batch so memory stays
bounded (the fast path and a vmap pass for the rest would run the model twice).

Requirements: examples must not interact in the forward pass. BatchNorm using batch statistics
(train mode, or ``track_running_stats=False``) couples examples and is rejected with a
ValueError -- put the model (or its BatchNorm layers) in eval mode first. Dropout is allowed:
the fast path uses the masks of its single forward pass, the vmap fallback draws its own masks
per example (``randomness="different"``).
The fast path assumes a module's parameters are used only by calling that module, and that a
module sees the batch in dim 0 (as Opacus's ``batch_first``): a call whose input or output has
another size there falls back; a sequence-first input whose length happens to equal the batch
size cannot be told apart by its shape.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, grad_and_value, vmap

from .layer_rules import grad_rule

DEFAULT_CHUNK = 32  # examples per vmap chunk: bounds the fallback's memory to ~32 per-example grads


class Outer(NamedTuple):
    """A per-example Linear weight gradient kept factored: example i's gradient is
    ``delta[i][:, None] * act[i][None, :]`` (shape (out, in)); never materialized unless asked."""

    delta: Tensor  # (B, out)
    act: Tensor  # (B, in)

    def materialize(self) -> Tensor:
        return self.delta.unsqueeze(2) * self.act.unsqueeze(1)


def per_example_grads(model: nn.Module, x: Tensor, y: Tensor,
                      chunk_size: int | None = None) -> dict[str, Tensor]:
    """{qualified parameter name: (B, *param.shape)} per-example gradients of each example's
    cross-entropy loss, for every parameter with ``requires_grad`` (see module docstring)."""
    _, grads = per_example_grads_factored(model, x, y, chunk_size)
    return {n: g.materialize() if isinstance(g, Outer) else g for n, g in grads.items()}


def per_example_grads_factored(model: nn.Module, x: Tensor, y: Tensor,
                               chunk_size: int | None = None
                               ) -> tuple[Tensor, dict[str, Tensor | Outer]]:
    """Like ``per_example_grads`` but returns ``(losses, grads)``: the detached per-example
    losses (B,) and the gradients, where a Linear weight used once on (B, in) inputs is an
    ``Outer`` (factored, rank one per example) instead of a (B, out, in) tensor."""
    _check_independent_examples(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    fast = _fast_modules(model)
    fast_names = {n for _, names in fast.values() for n in names.values()}
    grads: dict[str, Tensor | Outer] | None = None
    if named and all(n in fast_names for n, _ in named):
        losses, grads = _fast_path(model, x, y, fast)  # None where a call breaks the closed forms
    if grads is None and named:  # one vmap pass over every parameter, not two passes
        losses, grads = _vmap_grads(model, x, y, [n for n, _ in named], chunk_size or DEFAULT_CHUNK)
    if not named:  # nothing trainable: still report the losses
        with torch.no_grad():
            losses, grads = F.cross_entropy(model(x), y, reduction="none"), {}
    return losses, {n: grads[n] for n, _ in named}  # keep named_parameters() order


def per_example_grads_reference(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """The slow twin used by the tests: plain ``vmap(grad(functional_call))`` for all params."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())

    def loss_fn(params, xi, yi):
        out = functional_call(model, (params, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    with torch.no_grad():
        return vmap(grad(loss_fn), in_dims=(None, 0, 0), randomness="different")(params, x, y)


# ---------------------------------------------------------------------------------------------
def _check_independent_examples(model: nn.Module) -> None:
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (
                m.training or not m.track_running_stats):
            raise ValueError(
                f"per-example gradients: BatchNorm '{name or type(m).__name__}' uses batch "
                "statistics, which couple the examples; call model.eval() (or .eval() on the "
                "BatchNorm layers) first")


def _fast_modules(model: nn.Module) -> dict[str, tuple[nn.Module, dict[str, str]]]:
    """Modules with a closed form (cglib.layer_rules) -> (module, {"weight"/"bias": qualified
    name}), for those whose parameters are registered exactly once in the model (tied weights
    get gradient contributions from elsewhere, which the hooks would miss)."""
    counts: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[id(p)] = counts.get(id(p), 0) + 1
    found = {}
    for mname, m in model.named_modules():
        own = {k: p for k, p in m.named_parameters(recurse=False)}
        if grad_rule(m) is None or any(counts[id(p)] != 1 for p in own.values()):
            continue
        names = {k: f"{mname}.{k}" if mname else k for k, p in own.items() if p.requires_grad}
        if names:
            found[mname] = (m, names)
    return found


class _GradTap(torch.autograd.Function):
    """Identity on a layer's output; its backward hands dL/d(output) to ``record``.

    The output is a clone (not a view) so in-place ops that follow (e.g. ReLU(inplace=True))
    are legal, and the recorded gradient is the one with respect to the layer's own output.
    Asking autograd for the gradient of ``anchor`` alone walks back through every tap without
    computing any parameter's gradient."""

    @staticmethod
    def forward(ctx, out, anchor, record):
        ctx.record = record
        return out.clone()

    @staticmethod
    def backward(ctx, grad_out):
        ctx.record(grad_out)
        # The anchor's gradient is irrelevant; it only makes autograd traverse this node.
        return grad_out, grad_out.new_zeros(()), None


def _fast_path(model, x, y, fast):
    """One forward and one backward for the whole batch; None when some call of a fast module
    does not have the batch in dim 0 (its closed form would not apply)."""
    some_param = next(p for m, _ in fast.values() for p in m.parameters())
    anchor = torch.zeros((), device=some_param.device, dtype=some_param.dtype, requires_grad=True)
    records: dict[str, list[tuple[Tensor, list]]] = {name: [] for name in fast}
    B, broken = x.shape[0], []

    def make_hook(mname):
        def hook(module, inputs, out):
            # the input by position, with the batch in dim 0 (rule modules keep dim 0 in the output)
            a = inputs[0] if inputs and isinstance(inputs[0], Tensor) else None
            if a is None or a.dim() < 2 or a.shape[0] != B:
                broken.append(mname)
                return None
            slot: list = []
            records[mname].append((a.detach(), slot))
            return _GradTap.apply(out, anchor, slot.append)
        return hook

    handles = [m.register_forward_hook(make_hook(mname)) for mname, (m, _) in fast.items()]
    try:
        with torch.enable_grad():
            losses = F.cross_entropy(model(x), y, reduction="none")
            if broken:
                return losses.detach(), None
            # Summed loss: per example, d(sum)/d(out_i) = d(loss_i)/d(out_i). A loss that needs
            # no gradient touched no trainable module: every gradient is zero, nothing to walk.
            if losses.requires_grad:
                torch.autograd.grad(losses.sum(), anchor, allow_unused=True)
    finally:
        for h in handles:
            h.remove()

    grads: dict[str, Tensor | Outer] = {}
    for mname, (m, names) in fast.items():
        calls = [(a, slot[0]) for a, slot in records[mname] if slot]
        if type(m) is nn.Linear and len(calls) == 1 and calls[0][0].dim() == 2:
            a, d = calls[0]  # the common case: rank one per example, kept factored
            factored = {"weight": Outer(d, a), "bias": d}
            grads.update((n, factored[k]) for k, n in names.items())
            continue
        rule = grad_rule(m)
        for k, n in names.items():  # summed over the module's calls (none: a zero gradient)
            total = None
            for a, d in calls:
                g = rule(m, a, d)[k]
                total = g if total is None else total + g
            grads[n] = total if total is not None else getattr(m, k).new_zeros((B, *getattr(m, k).shape))
    return losses.detach(), grads


def _vmap_grads(model, x, y, names, chunk_size):
    params = dict(model.named_parameters())
    diff = {n: params[n].detach() for n in names}
    buffers = dict(model.named_buffers())

    def loss_fn(diff, xi, yi):
        # Parameters not in `diff` are read from the module itself (constants here).
        out = functional_call(model, (diff, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    # no_grad: the module's own (requires_grad) parameters must not build an outer graph;
    # torch.func.grad ignores the outer no_grad for the differentiated inputs.
    with torch.no_grad():
        g, losses = vmap(grad_and_value(loss_fn), in_dims=(None, 0, 0), chunk_size=chunk_size,
                         randomness="different")(diff, x, y)
    return losses, g
