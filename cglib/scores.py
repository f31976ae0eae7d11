"""Per-example difficulty scores of one training run (E8), kept as running aggregates.

At the end of each epoch 1..E the training loop hands `ExampleScores.update` that epoch's record:
the logits of every training example and the run's training labels (noisy ones included: on a
corrupt example, "correct" means fitting its noisy label). `cglib.probes.ScoreProbe` gathers a
record during the epoch: an example's logits are the training forward pass's own, in train mode,
when its minibatch is presented, before that step's update, as the reference code of Toneva et
al., Swayamdipta et al. and Pleiss et al. records them (the few examples of an epoch's dropped
tail are evaluated in eval mode at the epoch's end). With correct = argmax(logits) == label and
p = softmax(logits)[label]:

- forgetting_events   (Toneva et al. 2019, "An Empirical Study of Example Forgetting during Deep
  Neural Network Learning"): transitions correct → incorrect between consecutive records; +inf
  for an example correct in no record. +inf is data_diet's convention (mansheej/data_diet,
  forgetting.py); Toneva et al.'s order_examples_by_forgetting.py gives a never-learned example
  the number of epochs E, and cartography's train_dy_filtering.py 1000. Every one ranks it above
  any learned example (at most ⌊E/2⌋ forgetting events), so ranks, ρ and AUROC are the same.
- first_learned_epoch (Toneva et al. 2019): the first epoch (from 1) whose record is correct; +inf
  if none (Toneva's code counts from 0 and leaves never-learned examples NaN, out of the ranking).
- cumulative_accuracy (Jiang et al. 2021, "Characterizing Structural Regularities of Labeled Data
  in Overparameterized Models": the learning-speed proxy of the C-score): mean of correct.
- confidence, variability (Swayamdipta et al. 2020, "Dataset Cartography"): mean and population
  standard deviation (ddof=0, as in their definition and np.std) of p over the records.
- aum (Pleiss et al. 2020, "Identifying Mislabeled Data using the Area Under the Margin
  Ranking"): mean over records of the margin logit[label] − max_{k ≠ label} logit[k], from the
  first epoch's record on.
- el2n (Paul et al. 2021, "Deep Learning on a Data Diet"): ‖softmax(logits) − onehot(label)‖₂ in
  the record of epoch `el2n_epoch`; NaN if that epoch was not recorded.
- grand (Paul et al. 2021): ‖∇_θ ℓ(x_i, y_i)‖₂ over all trainable parameters at step 0 (before
  any update), in eval mode, handed over by `set_grand`; NaN until then.

Departures from the reference code, on purpose (README, "Difficulty scores (E8)"):
- EL2N is the training pass's record of its epoch (train mode, the weights moving during the
  epoch); data_diet (scores.py, get_run_score.py) evaluates it in eval mode in a separate pass at
  a saved checkpoint and averages it over runs (get_mean_score.py; Paul et al.: 10).
- GraNd is taken after BatchNorm priming (train.bn_priming: mc, 40 no-op training-mode passes
  before step 0), on those running statistics; data_diet takes it at the initial checkpoint with
  the initial statistics (mean 0, variance 1), averaged over runs. Models without BatchNorm (the
  MLP) are unaffected.
- AUM averages every epoch's margin from the first; the AUM reference (asappresearch/aum,
  examples/paper_replication/runner.py) starts after the first epoch ("due to variability of
  random initialization").
- variability has no fixed direction for corrupt labels: a corrupt label the model never fits
  keeps p near 0 in every epoch (low variability: cartography's "hard-to-learn" region, where
  Swayamdipta et al. find mislabelled examples), one it memorises late swings from 0 to 1 (high
  variability). HARDNESS_SIGN counts high variability as harder, so its AUROC for the corrupt
  labels is to be read two-sided: 0.2 is as strong a signal as 0.8 (TWO_SIDED).
The records are folded into O(n) running sums as they come (no per-epoch history), so an update
costs O(n·K) and the state fits in a checkpoint.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F


from cglib.coherence import per_example_sq_norms

SCORES = ("forgetting_events", "first_learned_epoch", "cumulative_accuracy", "confidence",
          "variability", "aum", "el2n", "grand")
# +1: a larger value means "harder / more likely mislabelled"; -1: a smaller value does
HARDNESS_SIGN = {"forgetting_events": +1, "first_learned_epoch": +1, "cumulative_accuracy": -1,
                 "confidence": -1, "variability": +1, "aum": -1, "el2n": +1, "grand": +1}
# scores whose AUROC for corrupt labels has no fixed side (see above): read |AUROC − 0.5|
TWO_SIDED = ("variability",)


class ExampleScores:
    """Running aggregates of the per-epoch records (no per-epoch per-example log kept). The state
    lives on `device`; `state_dict` / `load_state_dict` carry it through a checkpoint."""

    _TENSORS = ("last_correct", "forgets", "first_learned", "n_correct", "sum_p", "sum_p2",
                "sum_margin", "el2n", "grand")

    def __init__(self, n: int, el2n_epoch: int, device="cpu"):
        self.n, self.el2n_epoch, self.device = int(n), int(el2n_epoch), torch.device(device)
        self.epochs = 0  # the last recorded epoch = the number of records
        zeros = lambda: torch.zeros(self.n, dtype=torch.float64, device=self.device)  # noqa: E731
        full = lambda v: torch.full((self.n,), v, dtype=torch.float64, device=self.device)  # noqa: E731
        self.last_correct = torch.zeros(self.n, dtype=torch.bool, device=self.device)
        self.forgets, self.n_correct = zeros(), zeros()
        self.first_learned = full(math.inf)
        # float64 sums: E·p² accumulated in float32 would lose the small variances
        self.sum_p, self.sum_p2, self.sum_margin = zeros(), zeros(), zeros()
        self.el2n, self.grand = full(math.nan), full(math.nan)

    @torch.no_grad()
    def update(self, epoch: int, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Hand over the record of epoch `epoch` (1, 2, 3, ... consecutive) at its end: the logits
        taken during that epoch (ScoreProbe: each example's at its minibatch's presentation),
        (n, K) float, and the labels (n,) int."""
        if epoch != self.epochs + 1:  # a skipped or repeated record would corrupt every count
            raise ValueError(f"expected the record of epoch {self.epochs + 1}, got epoch {epoch}")
        if logits.dim() != 2 or len(logits) != self.n or labels.shape != (self.n,):
            raise ValueError(f"expected logits (n={self.n}, K) and labels (n,), got "
                             f"{tuple(logits.shape)} and {tuple(labels.shape)}")
        z = logits.detach().to(self.device, torch.float64)
        y = labels.to(self.device, torch.long)
        probs = z.softmax(1)
        correct = z.argmax(1) == y
        p = probs.gather(1, y[:, None])[:, 0]
        margin = z.gather(1, y[:, None])[:, 0] - z.scatter(1, y[:, None], -math.inf).max(1).values
        if self.epochs:  # a forgetting event needs a previous record
            self.forgets += (self.last_correct & ~correct).double()
        self.first_learned = torch.where(correct & self.first_learned.isinf(), float(epoch),
                                         self.first_learned)
        self.n_correct += correct.double()
        self.sum_p += p
        self.sum_p2 += p.square()
        self.sum_margin += margin
        if epoch == self.el2n_epoch:
            self.el2n = (probs - F.one_hot(y, z.shape[1]).double()).norm(dim=1)
        self.last_correct = correct
        self.epochs = epoch

    def set_grand(self, sq_norms: torch.Tensor) -> None:
        """GraNd at init: the sqrt of per-example squared gradient norms (`per_example_sq_norms`)."""
        sq = torch.as_tensor(sq_norms).to(self.device, torch.float64)
        if sq.shape != (self.n,):
            raise ValueError(f"expected {self.n} squared norms, got shape {tuple(sq.shape)}")
        self.grand = sq.sqrt()

    def frame(self) -> pd.DataFrame:
        """Columns exactly SCORES, one float64 row per example (in training-set order)."""
        e = self.epochs
        if e:
            mean_p = self.sum_p / e
            cols = {"forgetting_events": torch.where(self.n_correct > 0, self.forgets, math.inf),
                    "first_learned_epoch": self.first_learned,
                    "cumulative_accuracy": self.n_correct / e,
                    "confidence": mean_p,
                    # E[p²] − E[p]² can round just below 0 when p hardly moves
                    "variability": (self.sum_p2 / e - mean_p.square()).clamp(min=0).sqrt(),
                    "aum": self.sum_margin / e}
        else:  # no record yet: the record-based scores are undefined
            cols = {k: torch.full((self.n,), math.nan, dtype=torch.float64) for k in SCORES[:6]}
        cols.update(el2n=self.el2n, grand=self.grand)
        return pd.DataFrame({k: cols[k].cpu().numpy().astype(np.float64) for k in SCORES})

    def state_dict(self) -> dict:
        # clones: update() works in place, and a state handed out must not change afterwards
        state = {k: getattr(self, k).clone() for k in self._TENSORS}
        return dict(state, n=self.n, el2n_epoch=self.el2n_epoch, epochs=self.epochs)

    def load_state_dict(self, state: dict) -> None:
        if (state["n"], state["el2n_epoch"]) != (self.n, self.el2n_epoch):
            raise ValueError(f"state of n={state['n']}, el2n_epoch={state['el2n_epoch']} does not fit "
                             f"n={self.n}, el2n_epoch={self.el2n_epoch}")
        for k in self._TENSORS:
            setattr(self, k, state[k].to(self.device).clone())
        self.epochs = int(state["epochs"])


def grand(model, x, y, chunk_size: int = 1024) -> torch.Tensor:
    """GraNd (Paul et al. 2021) at the model's current weights: ‖∇_θ ℓ(x_i, y_i)‖₂ per example,
    (m,) float64 on the CPU; cross-entropy, eval mode (conventions of cglib.coherence)."""
    return per_example_sq_norms(model, x, y, chunk_size=chunk_size).sqrt()


def _score_columns(scores: pd.DataFrame) -> list[str]:
    # SCORES present, in SCORES order: a frame may carry other columns (labels, run, ...)
    return [c for c in SCORES if c in scores.columns]


def _ranks(v: np.ndarray) -> np.ndarray:
    """Average ranks, ties sharing their mean rank (scipy.stats.rankdata's "average"); +inf
    ranks above every finite value. By hand on pandas' rank, not with scipy.stats: importing
    scipy.stats costs ≈1.1 s of CPU in every training job (≈50 s of the default study), and
    these two statistics are one line each on ranks; tests check both against scipy."""
    return pd.Series(v).rank(method="average").to_numpy(np.float64)


def spearman_with(scores: pd.DataFrame, difficulty: np.ndarray) -> dict[str, float]:
    """Spearman rank correlation of each score column with `difficulty` (e.g. the W&S §4.3 count
    of seeds in which an example was hard): the Pearson correlation of their average ranks, as
    scipy.stats.spearmanr; NaN if either side is constant or holds a NaN. +inf (never learned)
    ranks above every finite value."""
    d = np.asarray(difficulty, dtype=np.float64)
    rd = _ranks(d) if not np.isnan(d).any() else None
    out = {}
    for col in _score_columns(scores):
        s = scores[col].to_numpy(np.float64)
        if len(s) != len(d):
            raise ValueError(f"{len(s)} scores but {len(d)} difficulties")
        degenerate = np.isnan(s).any() or rd is None or len(np.unique(s)) < 2 or len(np.unique(d)) < 2
        out[col] = math.nan if degenerate else float(np.corrcoef(_ranks(s), rd)[0, 1])
    return out


def auroc_corrupt(scores: pd.DataFrame, corrupt: np.ndarray) -> dict[str, float]:
    """AUROC of HARDNESS_SIGN[s]·score for detecting corrupt examples: the probability that a
    corrupt example scores harder than a pristine one, ties counting 1/2 (= U / (n1·n0) of the
    Mann-Whitney test, U = the corrupt examples' rank sum − n1(n1+1)/2). NaN when either class is
    empty or a score is NaN; 0.5 = no signal."""
    c = np.asarray(corrupt, dtype=bool)
    out = {}
    for col in _score_columns(scores):
        h = HARDNESS_SIGN[col] * scores[col].to_numpy(np.float64)
        if len(h) != len(c):
            raise ValueError(f"{len(h)} scores but {len(c)} corrupt flags")
        n1, n0 = int(c.sum()), int((~c).sum())
        if not n1 or not n0 or np.isnan(h).any():
            out[col] = math.nan
            continue
        u = _ranks(h)[c].sum() - n1 * (n1 + 1) / 2
        out[col] = float(u) / (n1 * n0)
    return out


def score_rows(per_example: pd.DataFrame, step: int, epoch: float) -> list[dict]:
    """One run's E8 metric rows (DESIGN §6 tidy form) at its last step: the Spearman ρ of each
    score with difficulty (when the run knows it) and, when the run has both corrupt and pristine
    examples, each score's AUROC for finding the corrupt ones."""
    rows = []
    if "difficulty" in per_example:
        for s, v in spearman_with(per_example, per_example["difficulty"].to_numpy()).items():
            rows.append(dict(metric=f"spearman_difficulty_{s}", value=v))
    corrupt = per_example["corrupt"].to_numpy().astype(bool)
    if corrupt.any() and not corrupt.all():
        for s, v in auroc_corrupt(per_example, corrupt).items():
            rows.append(dict(metric=f"auroc_corrupt_{s}", value=v))
    return [dict(r, experiment="E8", split="train", step=step, epoch=epoch) for r in rows]
