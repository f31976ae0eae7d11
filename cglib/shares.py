"""Pristine and corrupt shares of the loss reduction (CG §2.4), with permutation null worlds.

With g the gradient of the summed loss over the whole training set and g^p, g^c its parts summed
over pristine and corrupt examples (g = g^p + g^c):

    f^p = ⟨g, g^p⟩ / ⟨g, g⟩,   f^c = 1 − f^p = ⟨g, g^c⟩ / ⟨g, g⟩,
    i^p_t = (1/|p|) Σ_{t' ≤ t} ⟨g_t', g^p_t'⟩,   i^c_t = (1/|c|) Σ_{t' ≤ t} ⟨g_t', g^c_t'⟩.

A null world re-designates pristine/corrupt by a fixed random permutation (same group sizes).

How ⟨g, g^p⟩ is computed for many designations at once ("jvp", the default): one backward pass
gives g; one forward-mode pass (torch.func.jvp along g) gives every example's ⟨g, ∇ℓ_i⟩, and
⟨g, g^p⟩ = Σ_{i∈p} ⟨g, ∇ℓ_i⟩ is then a masked sum — so K nulls cost nothing extra. "backward"
does what CG describes: one backward pass per designation over the smaller of its two groups
(g^c = g − g^p needs no pass); "auto" uses it when a layer has no forward-mode derivative.
All passes run in eval mode (restored afterwards): the decomposition g = Σ g_i needs examples
that do not interact (no BatchNorm batch statistics), and eval mode consumes no random numbers,
so measuring never perturbs the training run's random stream. BatchNorm running statistics are
first re-estimated on the measured set (`prime_batchnorm`, as for m-coherence) and restored
afterwards: early in training they are still the initial (0, 1) and the eval-mode losses would
describe a different function from the one being trained. Models without BatchNorm skip this.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp

from .measuring import _chunks, _device, measuring

METHODS = ("auto", "jvp", "backward")


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {k: p for k, p in model.named_parameters() if p.requires_grad}


def _summed_gradient(model, params, x, y, chunk_size) -> list[torch.Tensor]:
    """Gradient of the summed cross-entropy over (x, y), float64, without touching p.grad."""
    device = _device(model)
    total = [torch.zeros_like(p, dtype=torch.float64) for p in params.values()]
    for s in _chunks(len(x), chunk_size):
        loss = F.cross_entropy(model(x[s].to(device)), y[s].to(device), reduction="sum")
        for t, gp in zip(total, torch.autograd.grad(loss, list(params.values()), allow_unused=True)):
            if gp is not None:
                t += gp
    return total


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return sum((u * v).sum().item() for u, v in zip(a, b))


def _per_example_dots(model, params, g, x, y, chunk_size) -> torch.Tensor:
    """⟨g, ∇ℓ_i⟩ for every example: the directional derivative of ℓ_i along g (forward mode)."""
    device = _device(model)
    primals = {k: p.detach() for k, p in params.items()}
    tangents = {k: t.to(p.dtype) for (k, p), t in zip(params.items(), g)}
    dots = []
    with torch.no_grad():
        for s in _chunks(len(x), chunk_size):
            xc, yc = x[s].to(device), y[s].to(device)

            def losses(ps):
                return F.cross_entropy(functional_call(model, ps, (xc,)), yc, reduction="none")

            dots.append(jvp(losses, (primals,), (tangents,))[1].double())
    return torch.cat(dots)


def loss_shares(model: nn.Module, x: torch.Tensor, y: torch.Tensor, pristine_masks,
                chunk_size: int = 1024, method: str = "auto", prime_bn: bool = True) -> dict:
    """One measurement at the model's current weights over the set (x, y), all trainable weights.
    prime_bn: measure with BatchNorm statistics re-estimated on x (restored afterwards).

    pristine_masks: a sequence of boolean (n,) masks, each one designation of the pristine group.
    Returns {"gg": ⟨g, g⟩, "g_gp": [⟨g, g^p⟩ for each mask], "method": the method used};
    ⟨g, g^c⟩ = gg − g_gp[k]. Cost: 1 backward + 1 forward-mode pass ("jvp"), or 1 backward plus
    one pass over the smaller group per non-trivial mask ("backward"), never more than K+2.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    n = len(x)
    # the masks select among x's examples, so they live where x does (a no-op when they already
    # do: LossShareTracker hands them over on the device)
    masks = [torch.as_tensor(mk, dtype=torch.bool).flatten().to(x.device) for mk in pristine_masks]
    if len(y) != n or any(len(mk) != n for mk in masks):
        raise ValueError(f"x, y and every mask must have the same length ({n})")
    params = _trainable(model)
    with measuring(model, x, prime_bn, chunk_size):
        g = _summed_gradient(model, params, x, y, chunk_size)
        gg = _dot(g, g)
        # a mask that is all pristine (or all corrupt) needs no pass: ⟨g, g⟩ (or 0)
        g_gp = [gg if bool(mk.all()) else 0.0 if not bool(mk.any()) else None for mk in masks]
        todo = [k for k, v in enumerate(g_gp) if v is None]
        used = "none"  # no pass beyond g was needed
        if todo and method in ("auto", "jvp"):
            try:
                dots = _per_example_dots(model, params, g, x, y, chunk_size)
                g_gp = [dots[mk].sum().item() if v is None else v for mk, v in zip(masks, g_gp)]
                todo, used = [], "jvp"
            except (RuntimeError, NotImplementedError) as err:
                if method == "jvp" or "forward" not in str(err).lower():
                    raise
                warnings.warn(f"forward-mode AD unavailable ({err}); using masked backward passes")
        for k in todo:
            mk = masks[k]
            small = mk if int(mk.sum()) <= n // 2 else ~mk  # g^c = g − g^p: pass over the smaller
            g_small = _summed_gradient(model, params, x[small], y[small.to(y.device)], chunk_size)
            g_gp[k] = _dot(g, g_small) if small is mk else gg - _dot(g, g_small)
            used = "backward"
    return {"gg": gg, "g_gp": g_gp, "method": used}


def null_designations(pristine: torch.Tensor, k_nulls: int, seed: int) -> list[torch.Tensor]:
    """K null-world pristine masks: pristine[perm] for a seeded random permutation each, so group
    sizes are kept; a draw identical to the real designation is redrawn. Empty when a group is
    empty (every permutation is then the real designation)."""
    pristine = torch.as_tensor(pristine, dtype=torch.bool).flatten().cpu()
    n_p = int(pristine.sum())
    if n_p == 0 or n_p == len(pristine):
        return []
    gen = torch.Generator().manual_seed(int(seed))
    nulls = []
    while len(nulls) < k_nulls:
        mask = pristine[torch.randperm(len(pristine), generator=gen)]
        if not torch.equal(mask, pristine):
            nulls.append(mask)
    return nulls


class LossShareTracker:
    """f^p, f^c (point-in-time) and i^p, i^c (cumulative) for the real designation and K nulls.

    Call `update(model, x, y)` with the whole training set (same order as `pristine`) at every
    step t up to the limit, at the weights θ_t before step t's update: i_* sum over every call
    (on a sparse schedule, `weight` = the steps a call stands for: a left Riemann sum).
    Rows: {"null": -1 (real) or 0..K-1, "f_pristine", "f_corrupt", "i_pristine", "i_corrupt"}.
    With no corrupt (or no pristine) examples, f is still defined (f^p = 1, f^c = 0, or reverse),
    the undefined i_* key is omitted, null worlds are skipped and `note` says why.
    """

    def __init__(self, pristine, k_nulls: int = 3, seed: int = 0, chunk_size: int = 1024,
                 method: str = "auto", prime_bn: bool = True):
        self.prime_bn = prime_bn
        self.pristine = torch.as_tensor(pristine, dtype=torch.bool).flatten().cpu().clone()
        self.k_nulls, self.seed, self.chunk_size, self.method = int(k_nulls), int(seed), chunk_size, method
        self.n_pristine = int(self.pristine.sum())
        self.n_corrupt = len(self.pristine) - self.n_pristine
        self.nulls = null_designations(self.pristine, self.k_nulls, self.seed)
        self._masks = {}  # device → the designations there, copied once (drawn on the CPU: the same on any device)
        self.note = None
        if self.n_corrupt == 0 or self.n_pristine == 0:
            empty = "corrupt" if self.n_corrupt == 0 else "pristine"
            self.note = (f"no {empty} examples: f is fixed (f_{empty} = 0), i_{empty} is undefined "
                         f"and omitted, and null worlds are skipped (every permutation is the same)")
        self.steps = 0
        # Σ_t ⟨g_t, g^p_t⟩ and Σ_t ⟨g_t, g^c_t⟩ per designation (row 0 = real), float64 for resume
        self.cum = torch.zeros(1 + len(self.nulls), 2, dtype=torch.float64)

    def update(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, weight: int = 1) -> list[dict]:
        """One measurement; `weight`: how many steps it stands for in i_* (1 when every step is
        measured; more on a sparse schedule, where i_* becomes a left Riemann sum)."""
        if len(x) != len(self.pristine):
            raise ValueError(f"update needs the whole training set: {len(x)} examples given, "
                             f"{len(self.pristine)} designated")
        if x.device not in self._masks:
            self._masks[x.device] = [mk.to(x.device) for mk in (self.pristine, *self.nulls)]
        shares = loss_shares(model, x, y, self._masks[x.device], self.chunk_size, self.method, self.prime_bn)
        gg = shares["gg"]
        rows = []
        for k, g_gp in enumerate(shares["g_gp"]):
            self.cum[k, 0] += weight * g_gp
            self.cum[k, 1] += weight * (gg - g_gp)
            row = {"null": k - 1}
            if self.n_corrupt == 0 or self.n_pristine == 0:
                row["f_pristine"] = float(self.n_corrupt == 0)
                row["f_corrupt"] = 1.0 - row["f_pristine"]
            elif gg > 0:  # ⟨g, g⟩ = 0 only at an exact stationary point: no loss reduction to share
                row["f_pristine"] = g_gp / gg
                row["f_corrupt"] = 1.0 - row["f_pristine"]
            if self.n_pristine:
                row["i_pristine"] = self.cum[k, 0].item() / self.n_pristine
            if self.n_corrupt:
                row["i_corrupt"] = self.cum[k, 1].item() / self.n_corrupt
            rows.append(row)
        self.steps += 1
        return rows

    def state_dict(self) -> dict:
        return {"pristine": self.pristine.clone(), "k_nulls": self.k_nulls, "seed": self.seed,
                "steps": self.steps, "cum": self.cum.clone()}

    def load_state_dict(self, state: dict) -> None:
        if (not torch.equal(state["pristine"].cpu(), self.pristine)
                or state["k_nulls"] != self.k_nulls or state["seed"] != self.seed):
            raise ValueError("tracker state is for a different designation, k_nulls or seed")
        self.steps = int(state["steps"])
        self.cum = state["cum"].to(torch.float64).cpu().clone()
