"""Robust-aggregation step times relative to a plain SGD step (DESIGN §8).

A "step" is zero_grad + transform.backward + optimizer.step on random data. Fast and reference
(SGD) steps are timed interleaved, round by round, so drift on a shared machine hits both
alike; the naive step is timed in a block of its own (see ``measure``). Each reports the median
over rounds after a warm-up (which also pays any torch.compile cost, see cglib.robust).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from cglib import robust
from cglib.pergrad import per_example_grads_factored, per_example_grads_reference
from cglib.robust import _medians_
from cglib.transforms import make_gradient_transform, winsorized_sources

B = 100


def mlp(*widths: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(widths) - 2 else [])
    return nn.Sequential(*layers)


def data(n_in: int, batch: int = B):
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, n_in, generator=g), torch.randint(0, 10, (batch,), generator=g)


def transform_step(widths, name: str, clip: int = 0, batch: int = B):
    torch.manual_seed(0)
    model, (x, y) = mlp(*widths), data(widths[0], batch)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    t = make_gradient_transform(name, clip)

    def step():
        opt.zero_grad()
        t.backward(model, x, y)
        opt.step()
    return step


def manual_step(widths, aggregate, batch: int = B):
    """A step whose gradient is aggregate(model, x, y, state) -> list of grads."""
    torch.manual_seed(0)
    model, (x, y) = mlp(*widths), data(widths[0], batch)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    state: dict = {}

    def step():
        opt.zero_grad()
        for p, g in zip(model.parameters(), aggregate(model, x, y, state)):
            p.grad = g
        opt.step()
    return step


def median_pass(widths):
    """RM3's own work alone: the in-place median of three gradient-sized buffer sets, as the
    transform runs it. Over the SGD step it bounds from below what any RM3 costs that takes the
    median in a pass of its own after the backward (the composable form DESIGN §4 asks for)."""
    gen = torch.Generator().manual_seed(0)
    bufs = [[torch.randn(p.shape, generator=gen) for p in mlp(*widths).parameters()]
            for _ in range(3)]
    return lambda: _medians_(*bufs)


def naive_rm3(model, x, y, state):
    """Keep full copies of the last two gradients; torch.median over a fresh stack."""
    F.cross_entropy(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    hist = state.setdefault("hist", [])
    hist.insert(0, grads)
    del hist[3:]
    return [torch.stack(gs).median(0).values for gs in zip(*hist)]


def naive_m3(model, x, y, state):
    params = list(model.parameters())
    groups = [torch.autograd.grad(F.cross_entropy(model(xs), ys), params)
              for xs, ys in zip(x.chunk(3), y.chunk(3))]
    return [torch.stack(gs).median(0).values for gs in zip(*groups)]


def naive_winsorized(c: int):
    def aggregate(model, x, y, state):
        per_ex = per_example_grads_reference(model, x, y)
        out = []
        for g in per_ex.values():
            s = g.sort(0).values
            out.append(torch.clamp(g, s[c], s[g.shape[0] - 1 - c]).mean(0))
        return out
    return aggregate


def winsorized_parts(widths, c: int, batch: int = B) -> dict:
    """The winsorized step's parts, each a function to time: the forward and backward pass that
    yields the per-example factors, the order statistics (the streamed top / bottom lists) and
    the clipped sums (float64 plain sum, then the replacements), on one fixed batch."""
    torch.manual_seed(0)
    model, (x, y) = mlp(*widths), data(widths[0], batch)
    _, grads = per_example_grads_factored(model, x, y)
    kinds, srcs, shapes = robust._layout(winsorized_sources(grads, list(grads), batch)[0])
    counts = robust.clip_counts(c, batch)
    compiled = robust._want_compile(x.device)
    tops, bots = robust._order_statistics(kinds, srcs, shapes, counts, compiled)
    return {"per_example": lambda: per_example_grads_factored(model, x, y),
            "order_stats": lambda: robust._order_statistics(kinds, srcs, shapes, counts,
                                                                 compiled),
            "clipped_sums": lambda: robust._clipped_sums(kinds, tops, bots, srcs, compiled)}


def measure(fns: dict, rounds: int, warmup: int, naive=None, naive_rounds: int = 0) -> dict:
    """Median ms per step. The fast and reference steps (``fns``) alternate round by round in a
    rotating order, so drift on a shared machine hits both alike. The naive step runs in its
    own block afterwards: it allocates and frees stacks of whole gradients, which leaves the
    allocator and caches in a state that is not the training loop's, and would slow
    whichever step came next."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    times: dict = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    if naive is not None:
        naive()  # warm-up
        times["naive"] = []
        for _ in range(naive_rounds or rounds):
            t0 = time.perf_counter()
            naive()
            times["naive"].append(time.perf_counter() - t0)
    return {k: 1e3 * sorted(v)[len(v) // 2] for k, v in times.items()}


def row(name, ms, target, baseline, note):
    return {"name": name, "ratio": ms["fast"] / ms["ref"], "target": target,
            "fast_ms": ms["fast"], "reference_ms": ms["ref"], "baseline": baseline,
            "baseline_ratio": ms["naive"] / ms["ref"] if "naive" in ms else None, "note": note}


def run(quick: bool) -> list[dict]:
    rounds, warmup = (7, 2) if quick else (40, 5)
    wide, deep = (784, 2048, 10), (784, 256, 256, 256, 10)
    rows = []

    ms = measure({"fast": transform_step(wide, "rm3"), "ref": transform_step(wide, "sgd")},
                 rounds, warmup, naive=manual_step(wide, naive_rm3))
    rows.append(row("rm3_vs_sgd", ms, 1.15, "stack + torch.median of 3 gradients",
                    f"MLP 784-2048-10, B={B}, SGD"))

    ms = measure({"fast": median_pass(wide), "ref": transform_step(wide, "sgd")}, rounds, warmup)
    rows.append(row("rm3_median_pass_vs_sgd", ms, None, "none (a part of rm3_vs_sgd)",
                    "RM3's fused median pass alone, timed between SGD steps as in training, / "
                    "SGD step: 1 + this is the floor of rm3_vs_sgd for a median taken after "
                    "the backward"))

    b3 = B - B % 3  # M3 needs 3 equal groups
    ms = measure({"fast": transform_step(wide, "m3", batch=b3),
                  "ref": transform_step(wide, "sgd", batch=b3)},
                 rounds, warmup, naive=manual_step(wide, naive_m3, batch=b3))
    rows.append(row("m3_vs_sgd", ms, None, "3 group grads, stack + torch.median",
                    f"MLP 784-2048-10, B={b3}, SGD; 3 forward/backward passes of B/3"))

    ms = measure({"fast": transform_step(deep, "winsorized", 2), "ref": transform_step(deep, "sgd")},
                 rounds, warmup, naive=manual_step(deep, naive_winsorized(2)),
                 naive_rounds=2 if quick else 5)
    rows.append(row("winsorized_vs_sgd", ms, 25.0, "torch.func vmap per-example grads + sort",
                    f"c=2, MLP 784-256-256-256-10, B={B}, SGD; aim 10"))

    # Where the winsorized step's time goes, each part against the same SGD step.
    what = {"per_example": "forward + backward to the per-example factors (no weight gradient)",
            "order_stats": "streamed top/bottom-3 lists per coordinate (compiled)",
            "clipped_sums": "float64 plain sum, minus the clipped values, plus their levels"}
    for part, fn in winsorized_parts(deep, 2).items():
        ms = measure({"fast": fn, "ref": transform_step(deep, "sgd")}, rounds, warmup)
        rows.append(row(f"wins_{part}", ms, None, "none (a part of winsorized_vs_sgd)",
                        f"{what[part]} / SGD step"))
    return rows
