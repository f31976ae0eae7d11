"""Measurements taken during training, beyond accuracy and loss.

A probe is asked at every step, before that step's update (so at the weights θ_t), and returns
metric rows: `CoherenceProbe` at the evaluation steps (E7: m-coherence and α per layer on a fixed
train sample and a fixed test sample, MC §5), `ShareProbe` at every step up to a limit (E2:
pristine / corrupt shares of the loss reduction with K null worlds, CG §2.4), `ScoreProbe` at
every epoch boundary (E8: per-example difficulty scores as running aggregates). Probes with state
(the cumulative i^p, i^c, the score sums) hand it to the checkpoint, so a resumed run ends with
the same numbers.
"""
from __future__ import annotations

import contextlib

import torch

from cglib.coherence import model_coherence_stats, per_example_sq_norms
from cglib.data import fixed_sample
from cglib.models import logits
from cglib.scores import ExampleScores
from cglib.shares import LossShareTracker


class CoherenceProbe:
    """m-coherence of per-example gradients, whole model and per parameter-owning module."""

    def __init__(self, cfg: dict, x_train, y_train, x_test, y_test, prime_bn: bool = False):
        self.cfg, self.prime_bn = cfg, prime_bn  # prime_bn: re-estimate BatchNorm per measurement
        self.samples = {}
        for split, x, y, seed in (("train", x_train, y_train, cfg["seed"]), ("test", x_test, y_test, cfg["seed"] + 1)):
            size = cfg[f"{split}_sample"]
            if size:  # 0 = this split is not measured
                idx = fixed_sample(len(x), size, seed, x.device)
                self.samples[split] = (x[idx], y[idx])

    def rows(self, step: int, model, scheduled: bool) -> list[dict]:
        if not scheduled:
            return []
        out = []
        for split, (x, y) in self.samples.items():
            stats = model_coherence_stats(model, x, y, chunk_size=self.cfg["chunk_size"],
                                          prime_bn=self.prime_bn)
            for layer, s in stats.items():
                out += [dict(split=split, layer=layer or "root", metric="m_coherence", value=s.m_coherence),
                        dict(split=split, layer=layer or "root", metric="alpha", value=s.alpha)]
            if self.cfg["label_part"]:  # the label-dependent part alone (cglib.coherence._loss_sum)
                label = model_coherence_stats(model, x, y, chunk_size=self.cfg["chunk_size"],
                                              prime_bn=self.prime_bn, loss="label_part")
                out += [dict(split=split, layer=layer or "root", metric="m_coherence_label", value=s.m_coherence)
                        for layer, s in label.items()]
        return [dict(r, experiment="E7") for r in out]

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class ShareProbe:
    """f^p, f^c, i^p, i^c on the whole training set, real designation (null −1) and K nulls."""

    def __init__(self, cfg: dict, x_train, labels, corrupt, log=print, prime_bn: bool = False,
                 schedule: list[int] = ()):
        # measured steps: every one of the first `steps`, then (then_eval) the evaluation steps;
        # each stands for the steps until the next one in the cumulative i^p, i^c
        later = [s for s in schedule if s >= cfg["steps"]] if cfg["then_eval"] and cfg["steps"] else []
        measured = [*range(cfg["steps"]), *later]
        self.weight = {s: nxt - s for s, nxt in zip(measured, measured[1:])}
        if measured:
            self.weight[measured[-1]] = 1  # the last: its own step only
        self.x, self.y = x_train, labels
        # designations are drawn on the CPU (the same null worlds on any device); the tracker
        # copies them to the device of x once
        self.tracker = LossShareTracker(~corrupt.bool().cpu(), k_nulls=cfg["nulls"], seed=cfg["seed"],
                                        chunk_size=cfg["chunk_size"], prime_bn=prime_bn)
        if self.tracker.note:
            log(f"loss-reduction shares: {self.tracker.note}")

    def rows(self, step: int, model, scheduled: bool) -> list[dict]:
        if step not in self.weight:
            return []
        out = []
        for r in self.tracker.update(model, self.x, self.y, weight=self.weight[step]):
            out += [dict(split="train", metric=k, null=r["null"], value=v, experiment="E2")
                    for k, v in r.items() if k != "null"]
        return out

    def state_dict(self) -> dict:
        return self.tracker.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.tracker.load_state_dict(state)


class ScoreProbe:
    """E8 scores of every training example (cglib.scores): GraNd at step 0, then one record per
    epoch. As the papers record them (Toneva et al., Swayamdipta et al., Pleiss et al.), an
    example's record is the model's output when its minibatch is presented, before that step's
    update, captured from the training forward pass itself (so it costs no extra pass); the few
    examples of an epoch's dropped tail are evaluated at the epoch's end instead."""

    def __init__(self, x_train, labels, batch_size: int, el2n_epoch: int, num_classes: int,
                 chunk_size: int = 1024):
        self.x, self.y, self.chunk = x_train, labels, chunk_size
        self.per_epoch = len(labels) // batch_size  # the loop drops an epoch's unfilled tail
        self.scores = ExampleScores(len(labels), el2n_epoch, device=x_train.device)
        self.outputs = torch.zeros(len(labels), num_classes, device=x_train.device)
        self.presented = torch.zeros(len(labels), dtype=torch.bool, device=x_train.device)

    def rows(self, step: int, model, scheduled: bool) -> list[dict]:
        if step == 0:
            # set_grand takes the squared norms (scores.grand would hand over their square roots)
            self.scores.set_grand(per_example_sq_norms(model, self.x, self.y, chunk_size=self.chunk))
        elif step % self.per_epoch == 0:
            tail = (~self.presented).nonzero().squeeze(1)
            if len(tail):
                self.outputs[tail] = logits(model, self.x[tail]).float()
            self.scores.update(step // self.per_epoch, self.outputs, self.y)
            self.presented.zero_()
        return []

    @contextlib.contextmanager
    def capture(self, model, idx):
        """Record the outputs of the model's forward calls on the batch `idx` (in call order:
        M3 calls it on the batch's three contiguous thirds)."""
        seen = []
        handle = model.register_forward_hook(lambda mod, inp, out: seen.append(out.detach()))
        try:
            yield
        finally:
            handle.remove()
        out = torch.cat(seen) if seen else None
        if out is None or out.shape != (len(idx), self.outputs.shape[1]):
            out = logits(model, self.x[idx])  # a transform that called the model otherwise
        self.outputs[idx] = out.float()
        self.presented[idx] = True

    def frame(self):
        return self.scores.frame()

    def state_dict(self) -> dict:
        return dict(scores=self.scores.state_dict(), outputs=self.outputs.clone(),
                    presented=self.presented.clone())

    def load_state_dict(self, state: dict) -> None:
        self.scores.load_state_dict(state["scores"])
        self.outputs.copy_(state["outputs"])
        self.presented.copy_(state["presented"])


def make_probes(params: dict, optimizer: str, data: dict, labels, corrupt, log=print,
                schedule: list[int] = (), noise: float | None = None) -> dict:
    """The probes a study asks for (`train.coherence`, `train.shares`; the E8 scores always) in
    a run of `optimizer` at label noise `noise`. `corrupt` is None in clean-label runs (no shares
    to split); `schedule` the run's evaluation steps. The shares are tracked only at 0 < ε < 1,
    the levels CG §2.4 analyses (25, 50, 75 %): at ε = 0 there is no corrupt group (f^p ≡ 1), and
    at ε = 1 every label was permuted, so the "pristine" examples are chance matches."""
    train_params = params["train"]
    probes = {}
    coh = train_params["coherence"]
    # train.bn_priming: mc primes once before step 0 (cglib.train), then measures on training's
    # own statistics; per_measurement re-estimates them on each measured sample
    prime_bn = train_params["bn_priming"] == "per_measurement"
    if coh["train_sample"] or coh["test_sample"]:
        probes["coherence"] = CoherenceProbe(coh, data["x_train"], labels, data["x_test"], data["y_test"], prime_bn)
    shares = train_params["shares"]
    contrast = noise is None or 0 < noise < 1
    if shares["steps"] and optimizer in shares["optimizers"] and corrupt is not None and contrast:
        probes["shares"] = ShareProbe(train_params["shares"], data["x_train"], labels, corrupt, log, prime_bn,
                                      schedule)
    probes["scores"] = ScoreProbe(data["x_train"], labels, train_params["batch_size"],
                                  params["difficulty"]["el2n_epoch"], data["num_classes"], coh["chunk_size"])
    return probes
