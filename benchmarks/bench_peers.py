"""Per-example squared gradient norms: cglib beside the field's own tools, in one run.

For each model and batch: `cglib.coherence.per_example_sq_norms`, BackPACK's BatchL2Grad,
Opacus's ghost clipping (GradSampleModuleFastGradientClipping: its per-sample norms, computed
in the hooks of one backward that also forms the summed gradient) and torch.func (vmap of grad,
materialised), each as a ratio to one plain forward+backward of the same batch, timed
interleaved (best of several rounds, one thread). Every library's values are first checked
against a float64 torch.func reference; one beyond the tolerance stops the run (`agree`). A peer
that is not installed or cannot take a model is a row with ratio None and the reason.
"""
from __future__ import annotations

import copy
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from benchmarks.bench_coherence import _best_times, _effort, _once
from cglib.coherence import per_example_sq_norms
from cglib.models import cnn

# Relative to the float64 reference. Typical: float32 rounding, ~1e-7. At most: a ReLU input that
# rounds to the other side of 0 in float32 (batched matmuls round differently from one example's)
# switches a unit on or off and moves that example's norm by up to ~1e-2 (seen: 3e-3 on one of
# 100 examples). A wrong rule (a dropped bias, a missing normalisation) moves every example.
TYPICAL, AT_MOST = 1e-5, 1e-2


# BackPACK's and Opacus's module hooks warn on every call where the input needs no gradient
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")


class Disagreement(AssertionError):
    pass


def agree(library: str, got: torch.Tensor, want: torch.Tensor) -> float:
    """The median relative deviation of `got` from `want` (returned); Disagreement where it is
    above TYPICAL or where any example's is above AT_MOST."""
    got, want = got.detach().double().flatten(), want.detach().double().flatten()
    if got.shape != want.shape:
        raise Disagreement(f"{library}: {tuple(got.shape)} values, reference has {tuple(want.shape)}")
    err = (got - want).abs() / want.abs().clamp_min(1e-12)
    median, worst = err.median().item(), err.max().item()
    if not (median <= TYPICAL and worst <= AT_MOST):  # NaN fails too
        raise Disagreement(f"{library}: per-example squared norms off by {median:.1e} (median, relative; "
                           f"at most {TYPICAL:g}) and {worst:.1e} (largest; at most {AT_MOST:g})")
    return median


def reference(model, x, y) -> torch.Tensor:
    """float64 per-example squared norms by torch.func, the model as it is (eval)."""
    m = copy.deepcopy(model).double().eval()
    params = {k: p.detach() for k, p in m.named_parameters()}
    buffers = dict(m.named_buffers())

    def loss(ps, xi, yi):
        return F.cross_entropy(functional_call(m, (ps, buffers), (xi[None],)), yi[None], reduction="sum")

    out = torch.zeros(len(x), dtype=torch.float64)
    for s in range(0, len(x), 100):
        g = vmap(grad(loss), in_dims=(None, 0, 0))(params, x[s:s + 100].double(), y[s:s + 100])
        out[s:s + 100] = sum(v.flatten(1).square().sum(1) for v in g.values())
    return out


# ---------------------------------------------------------------------------- the libraries

def _cglib(model, x, y):
    return lambda: per_example_sq_norms(model, x, y)  # its default chunking, as a user gets it


def _torch_func(model, x, y):
    params = {k: p.detach() for k, p in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss(ps, xi, yi):
        return F.cross_entropy(functional_call(model, (ps, buffers), (xi[None],)), yi[None], reduction="sum")

    def run():
        g = vmap(grad(loss), in_dims=(None, 0, 0), chunk_size=256)(params, x, y)
        return sum(v.flatten(1).square().sum(1) for v in g.values())
    return run


def _backpack(model, x, y):
    from backpack import backpack, extend
    from backpack.extensions import BatchL2Grad

    m, lossf = extend(copy.deepcopy(model)), extend(nn.CrossEntropyLoss(reduction="sum"))

    def run():
        with backpack(BatchL2Grad()):
            lossf(m(x), y).backward()
        out = sum(p.batch_l2 for p in m.parameters())
        m.zero_grad(set_to_none=True)
        return out
    return run


def _opacus(model, x, y):
    from opacus.grad_sample import GradSampleModuleFastGradientClipping
    from opacus.validators import ModuleValidator

    m = copy.deepcopy(model).train()  # Opacus's hooks fire in training mode only
    errors = ModuleValidator.validate(m, strict=False)
    if errors:  # e.g. BatchNorm: batch statistics mix the examples in training mode
        raise ValueError(str(errors[0]).splitlines()[0])
    gsm = GradSampleModuleFastGradientClipping(m, batch_first=True, loss_reduction="sum", use_ghost_clipping=True)

    def run():
        F.cross_entropy(gsm(x), y, reduction="sum").backward()
        out = gsm.get_norm_sample().square()
        gsm.zero_grad(set_to_none=True)
        return out
    return run


LIBRARIES = {"cglib": _cglib, "backpack": _backpack, "opacus": _opacus, "torch.func": _torch_func}
# torch.func materialises every per-example gradient: on the MLPs up to a minute a call, so a
# call that takes over ONCE_ABOVE seconds is timed once; a faster one interleaved like the rest.
ONCE, ONCE_ABOVE = {"torch.func"}, 1.0


def _forward_backward(model, x, y):
    def run():
        F.cross_entropy(model(x), y, reduction="sum").backward()
        model.zero_grad(set_to_none=True)
    return run


# ---------------------------------------------------------------------------- the cases

def _mlp(*widths):
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _cnn(norm: str):
    """The project's CNN (cglib.models.cnn, channels 16, 32 on 28×28×1), its BatchNorm in eval
    as a measurement sees it, or replaced by GroupNorm (4 groups), or by nothing."""
    model = cnn((1, 28, 28), [16, 32], 10)
    for i, mod in enumerate(model):
        if isinstance(mod, nn.BatchNorm2d):
            model[i] = nn.GroupNorm(4, mod.num_features) if norm == "groupnorm" else (
                nn.Identity() if norm == "none" else mod)
    return model.eval()


def cases(quick: bool):
    yield "mlp256", "MLP 784-256-10", _mlp(784, 256, 10), (784,), (100, 1000), 0.8
    yield "mlp1024", "MLP 784-1024-1024-10", _mlp(784, 1024, 1024, 10), (784,), (100, 1000), 0.8
    for norm in ("batchnorm", "groupnorm", "none"):
        yield f"cnn_{norm}", f"CNN 16-32 ({norm}, eval)", _cnn(norm), (1, 28, 28), (1000,), None


def run(quick: bool = False, case_list=None) -> list[dict]:
    torch.manual_seed(0)
    rows = []
    for key, title, model, shape, batches, target in case_list or cases(quick):
        for batch in batches:
            x, y = torch.randn(batch, *shape), torch.randint(0, 10, (batch,))
            want = reference(model, x, y)
            fns, names, reasons, errs, slow = [], [], {}, {}, set()
            for lib, make in LIBRARIES.items():
                try:
                    fn = make(model, x, y)
                    start = time.perf_counter()
                    got = fn()
                    if lib in ONCE and time.perf_counter() - start > ONCE_ABOVE:
                        slow.add(lib)
                    errs[lib] = agree(lib, got, want)
                except Disagreement:
                    raise
                except Exception as exc:  # noqa: BLE001 - a peer that cannot take this model
                    reasons[lib] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}" if str(exc) else type(exc).__name__
                    continue
                fns.append(fn)
                names.append(lib)
            once = {lib: _once(fn) for lib, fn in zip(names, fns) if lib in slow}
            timed = [(lib, fn) for lib, fn in zip(names, fns) if lib not in slow]
            best, rounds = _best_times([fn for _, fn in timed] + [_forward_backward(model, x, y)], *_effort(quick))
            ref = best[-1]
            times = {**dict(zip([lib for lib, _ in timed], best)), **once}
            for lib in LIBRARIES:
                rows.append({
                    "name": f"sq_norms_{key}_b{batch}[{lib}]",
                    "ratio": times[lib] / ref if lib in times else None,
                    "target": target if lib == "cglib" else None,
                    "fast_ms": times[lib] * 1e3 if lib in times else None,
                    "reference_ms": ref * 1e3,
                    "baseline": f"{title}, batch {batch}; ref = one plain forward+backward",
                    "baseline_ratio": None,
                    "note": (f"agrees with float64 torch.func to {errs[lib]:.1e} (median); " +
                             ("timed once" if lib in slow else f"best of {rounds} interleaved runs"))
                            if lib in times else f"— {reasons[lib]}"})
    return rows


if __name__ == "__main__":
    for row in run(quick=True):
        print(row)
