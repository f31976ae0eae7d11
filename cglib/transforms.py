"""Gradient transforms (DESIGN §4): SGD / winsorized / M3 / RM3 / RA3. Each ``backward(model,
x, y)`` fills ``p.grad`` of every trainable parameter with the (robustly) aggregated gradient of
the mean cross-entropy and returns the mean batch loss; then any torch optimizer takes its step,
so every variant composes with every base optimizer. The aggregators (median of 3, the streaming
winsorized mean) are in cglib.robust."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cglib.pergrad import Outer, per_example_grads_factored
from cglib.robust import READINGS, _compile_medians, _medians_, clip_counts, winsorized_means

TRANSFORMS = ("sgd", "winsorized", "m3", "rm3", "ra3")


def make_gradient_transform(name: str, clip: int = 0, warmup: str = "reference",
                            reading: str = "order_statistic") -> "GradientTransform":
    """A transform whose ``backward(model, x, y)`` sets ``p.grad`` of every trainable parameter
    to the robustly aggregated gradient of the mean cross-entropy loss (same scale as SGD) and
    returns the detached mean batch loss; then call ``optimizer.step()`` as usual. ``warmup``:
    RM3 / RA3's first two steps (see ``Rolling``); ``reading``: what the winsorization level
    means (see ``Winsorized``)."""
    if name not in TRANSFORMS:
        raise ValueError(f"unknown gradient transform {name!r}; expected one of {TRANSFORMS}")
    if name == "winsorized":
        if isinstance(clip, bool) or not isinstance(clip, int) or clip < 0:
            raise ValueError(f"winsorized needs an integer clip >= 0, got {clip!r}")
        return Winsorized(clip, reading)  # clip against B is checked for each batch
    if clip not in (0, None):
        raise ValueError(f"clip={clip!r} only applies to 'winsorized', not {name!r}")
    if name in ("rm3", "ra3"):
        return Rolling(name, warmup)
    return {"sgd": Plain, "m3": M3}[name](name)


class GradientTransform:
    """Base: stateless transforms; ``state_dict`` records what was built, for checking.
    ``amp``: None (fp32) or a dtype for autocast of the forward passes (cglib.train sets it on
    CUDA for train.amp); losses and gradients stay fp32."""

    amp: torch.dtype | None = None

    def __init__(self, name: str, clip: int = 0):
        self.name, self.clip = name, clip

    def _loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Mean cross-entropy of the batch; under autocast only the forward pass: the loss is
        taken on fp32 logits (``.float()`` is a no-op without autocast, so fp32 runs are
        unchanged to the bit)."""
        if self.amp is None:
            return F.cross_entropy(model(x), y)
        with torch.autocast(device_type=x.device.type, dtype=self.amp):
            out = model(x)
        return F.cross_entropy(out.float(), y)

    def backward(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {"name": self.name, "clip": self.clip}

    def load_state_dict(self, state: dict) -> None:
        if (state.get("name"), state.get("clip")) != (self.name, self.clip):
            raise ValueError(f"state of transform {state.get('name')!r} (clip "
                             f"{state.get('clip')!r}) cannot load into {self.name!r} "
                             f"(clip {self.clip!r})")


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _plain_backward(params, model, x, y, loss_fn=None) -> tuple[Tensor, list[Tensor]]:
    """loss.backward() into freshly allocated grads (p.grad is *set*, never accumulated)."""
    for _, p in params:
        p.grad = None
    loss = loss_fn(model, x, y) if loss_fn is not None else F.cross_entropy(model(x), y)
    loss.backward()
    return loss.detach(), [p.grad if p.grad is not None else torch.zeros_like(p)
                           for _, p in params]


class Plain(GradientTransform):
    """Plain minibatch gradient: what SGD, momentum or Adam normally see."""

    def backward(self, model, x, y):
        return _plain_backward(_trainable(model), model, x, y, self._loss)[0]


class Winsorized(GradientTransform):
    """Per coordinate, winsorized mean of the per-example gradients (c = 0 is plain SGD).
    reading "order_statistic": clip c values on each side; "percentile": c is a percentage,
    read as the CG code does (``percentile_counts``)."""

    def __init__(self, clip: int, reading: str = "order_statistic"):
        super().__init__("winsorized", clip)
        if reading not in READINGS:
            raise ValueError(f"winsorization reading must be one of {READINGS}, got {reading!r}")
        self.reading = reading

    def state_dict(self) -> dict:
        return {**super().state_dict(), "reading": self.reading}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if state.get("reading", "order_statistic") != self.reading:
            raise ValueError(f"state of a {state.get('reading')!r} winsorization cannot load into "
                             f"a {self.reading!r} one")

    def backward(self, model, x, y):
        # always fp32, whatever ``amp`` says: the order statistics compare per-example gradient
        # values, which bf16's 8-bit mantissa would round into ties (cglib.train records amp
        # "none" for these runs)
        B, params = x.shape[0], _trainable(model)
        c = clip_counts(self.clip, B, self.reading)
        if c == (0, 0):
            return _plain_backward(params, model, x, y)[0]
        losses, grads = per_example_grads_factored(model, x, y)
        # One stream per dtype and device: Linear weights as outer products, every other
        # per-example gradient (biases, conv, ...) concatenated into one dense source, since
        # the streaming loop's cost is per row and call, not per coordinate, for small params.
        groups: dict = {}
        for n, g in grads.items():
            ref = g.delta if isinstance(g, Outer) else g
            groups.setdefault((ref.device, ref.dtype), []).append(n)
        out = {}
        for names in groups.values():
            sources, outer, dense = winsorized_sources(grads, names, B)
            means = winsorized_means(sources, c)
            out.update(zip(outer, means))
            if dense:
                out.update(zip(dense, means[-1].split([grads[n][0].numel() for n in dense])))
        for n, p in params:
            p.grad = out[n].reshape(p.shape)
        return losses.mean()


def winsorized_sources(grads: dict, names: list[str], B: int) -> tuple[list, list[str], list[str]]:
    """The winsorized stream's sources for the gradients ``names``: each factored Linear weight
    an "outer" source, every other gradient concatenated into one "dense" source (last).
    Returns (sources, the outer names, the dense names in the dense source's order)."""
    outer = [n for n in names if isinstance(grads[n], Outer)]
    dense = [n for n in names if n not in outer]
    sources = [("outer", (grads[n].delta, grads[n].act)) for n in outer]
    if dense:
        sources.append(("dense", (torch.cat([grads[n].reshape(B, -1) for n in dense], 1),)))
    return sources, outer, dense


class M3(GradientTransform):
    """Median of the mean gradients of 3 equal contiguous groups of the batch (W&S §3.2)."""

    def backward(self, model, x, y):
        B, params = x.shape[0], _trainable(model)
        if B % 3:
            raise ValueError(f"m3 splits the batch into 3 equal groups: batch size {B} is "
                             "not divisible by 3")
        group_grads, losses = [], []
        for xs, ys in zip(x.chunk(3), y.chunk(3)):
            loss = self._loss(model, xs, ys)
            gs = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
            group_grads.append([torch.zeros_like(p) if g is None else g
                                for g, (_, p) in zip(gs, params)])
            losses.append(loss.detach())
        for (_, p), m in zip(params, _medians_(*group_grads)):
            p.grad = m
        return torch.stack(losses).mean()


WARMUPS = ("reference", "partial")


class Rolling(GradientTransform):
    """RM3 / RA3: median / mean of this step's minibatch gradient and the previous two steps'
    raw minibatch gradients. Every backward() call is one step; history is kept by parameter
    name. Warm-up, before three gradients exist:
      "reference": no update at steps 0 and 1 (p.grad is None, so torch optimizers skip the
          parameter: no momentum or weight-decay change either), as the W&S reference code
          (coherent_gradients/weak_and_strong/optimizers/rm3.py, ra3.py: the ring buffer fills
          first); step 2 applies the median / mean of g0, g1, g2, all taken at the initial weights.
      "partial": step 0 applies g0, step 1 (g0 + g1) / 2 (the median of two values is their
          mean), so RM3 and RA3 share steps 0 and 1."""

    def __init__(self, name: str, warmup: str = "reference"):
        super().__init__(name)
        if warmup not in WARMUPS:
            raise ValueError(f"warm-up must be one of {WARMUPS}, got {warmup!r}")
        self.warmup = warmup
        self.steps = 0
        self._history: list[dict[str, Tensor]] = []  # raw gradients, most recent first
        self._scratch: dict[str, Tensor] = {}

    def backward(self, model, x, y):
        params = _trainable(model)
        loss, grads = _plain_backward(params, model, x, y, self._loss)
        names = [n for n, _ in params]
        prev = [[_move(h, n, g) for n, g in zip(names, grads)] for h in self._history]
        if len(prev) < 2 and self.warmup == "reference":
            out = [None] * len(grads)  # the buffer is filling: no update this step
        elif not prev:
            out = [g.clone() for g in grads]  # p.grad must never alias the history
        elif len(prev) == 1:
            out = [torch.add(g, h1).mul_(0.5) for g, h1 in zip(grads, prev[0])]
        elif self.name == "rm3":
            # The result goes into g_{t-2}'s buffer, which is dead after this step: no
            # allocation; the eager path keeps a persistent scratch for max(h1, h2).
            scratch = (None if _compile_medians(grads)
                       else [self._scratch_for(n, g) for n, g in zip(names, grads)])
            out = _medians_(prev[0], prev[1], grads, scratch)
        else:
            out = [h2.add_(h1).add_(g).div_(3) for g, h1, h2 in zip(grads, *prev)]
        for (_, p), o in zip(params, out):
            p.grad = o
        self._history = [dict(zip(names, grads))] + ([dict(zip(names, prev[0]))] if prev else [])
        self.steps += 1
        return loss

    def _scratch_for(self, name: str, like: Tensor) -> Tensor:
        s = self._scratch.get(name)
        if s is None or s.shape != like.shape or s.dtype != like.dtype or s.device != like.device:
            s = self._scratch[name] = torch.empty_like(like)
        return s

    def state_dict(self) -> dict:
        # Clones: later steps overwrite history buffers in place.
        return {**super().state_dict(), "steps": self.steps, "warmup": self.warmup,
                "history": [{n: t.detach().clone() for n, t in h.items()}
                            for h in self._history]}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if state.get("warmup", "partial") != self.warmup:
            raise ValueError(f"state of a {state.get('warmup', 'partial')!r} warm-up cannot load into "
                             f"a {self.warmup!r} one")
        self.steps = int(state["steps"])
        self._history = [{n: t.detach().clone() for n, t in h.items()} for h in state["history"]]
        if len(self._history) > 2:
            raise ValueError("rolling transform state holds more than two past gradients")


def _move(history: dict[str, Tensor], name: str, like: Tensor) -> Tensor:
    """A past gradient on the device of this step's (a no-op but after a resume: checkpoints
    load on the CPU, and the history crosses to the device once, at the first step)."""
    if name not in history or history[name].shape != like.shape:
        raise ValueError(f"gradient history does not match the model at parameter {name!r}")
    return history[name].to(device=like.device, dtype=like.dtype)
