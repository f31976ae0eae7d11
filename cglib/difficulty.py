"""Easy and hard examples, difficulty over seeds, and the cross-generalization splits (W&S §4).

- `classify_easy_hard` (W&S §4.2): train with plain SGD on the clean labels, evaluating the whole
  training set before every step, until training accuracy first reaches the threshold (0.5 in
  the paper); the examples classified correctly at that moment are *easy*, the rest *hard*.
- `merge_seeds` (W&S §4.3): over K such runs, difficulty = the number of runs in which an
  example was hard (0 = "super easy", K = "super hard").
- `cross_splits` (W&S §4.2, §4.4): easy and hard pools, each split at random into a train and a
  test part (5:1 in the paper), e-train and h-train of equal size.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from cglib.models import build_model
from cglib.tables import histogram  # noqa: F401  (the stages import it from here)
from cglib.train import batch_indices, per_example

# The easy/hard runs draw their initial weights from their own seed range, so that easy/hard
# seed 0 and training seed 0 do not start from the same weights: a shared start would tie the
# difficulty of an example to the very run whose accuracy by difficulty (E5) is measured.
SEED_OFFSET = 100_000


class ThresholdNotReached(RuntimeError):
    """Training accuracy never reached the threshold within the allowed steps."""


def classify_easy_hard(params: dict, data: dict, seed: int, log: Callable = print,
                       progress: bool = True) -> dict:
    """One easy/hard classification run on the clean training labels (`data` from
    cglib.data.load_prepared). Returns {"hard": bool tensor (n,), "p_true": float tensor (n,),
    "step": the first step at which accuracy ≥ threshold, "accuracy": the accuracy then}."""
    d = params["difficulty"]
    x, y = data["x_train"], data["y_train"]
    n, batch = len(y), d["batch_size"]
    torch.manual_seed(SEED_OFFSET + seed)
    model = build_model(params["model"], data["input_shape"], data["num_classes"]).to(x.device)
    opt = torch.optim.SGD(model.parameters(), lr=d["lr"])
    cache: dict = {}
    model.train()
    for step in tqdm(range(d["max_steps"] + 1), disable=None if progress else True, leave=False,
                     desc=f"easyhard seed {seed}"):
        correct, loss = per_example(model, x, y)  # eval mode, before this step's update
        acc = correct.double().mean().item()
        if acc >= d["threshold"]:
            log(f"seed {seed}: training accuracy {acc:.4f} ≥ {d['threshold']} at step {step} "
                f"(epoch {step * batch / n:.2f})")
            return dict(hard=~correct.cpu(), p_true=torch.exp(-loss).cpu(), step=step, accuracy=acc)
        if step == d["max_steps"]:
            break
        idx = batch_indices(step, n, batch, SEED_OFFSET + seed, cache, x.device)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    raise ThresholdNotReached(
        f"difficulty.max_steps: training accuracy was {acc:.4f} after {d['max_steps']} steps, below "
        f"difficulty.threshold = {d['threshold']}; raise max_steps or lr, or lower the threshold")


def easyhard_frame(result: dict) -> pd.DataFrame:
    """The easy/hard stage's table: example, hard, step, accuracy, p_true."""
    n = len(result["hard"])
    return pd.DataFrame({
        "example": np.arange(n, dtype=np.int64), "hard": result["hard"].numpy().astype(bool),
        "step": np.full(n, result["step"], dtype=np.int64),
        "accuracy": np.full(n, result["accuracy"], dtype=np.float64),
        "p_true": result["p_true"].double().numpy()})


def seed_column(seed: int) -> str:
    return f"hard_seed{seed}"


def merge_seeds(tables: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """results/difficulty.parquet (DESIGN §6): example, difficulty (number of seeds in which the
    example was hard, 0…K), one boolean column per seed (in the order given)."""
    seeds = list(tables)
    first = tables[seeds[0]]["example"].to_numpy()
    out = pd.DataFrame({"example": first.astype(np.int64)})
    for s in seeds:
        t = tables[s]
        if not np.array_equal(t["example"].to_numpy(), first):
            raise ValueError(f"easy/hard table of seed {s} lists other examples than seed {seeds[0]}")
        out[seed_column(s)] = t["hard"].to_numpy().astype(bool)
    hard = out[[seed_column(s) for s in seeds]].to_numpy()
    out.insert(1, "difficulty", hard.sum(axis=1).astype(np.int64))
    return out


def seed_summary(tables: dict[int, pd.DataFrame], n_per_epoch: float) -> pd.DataFrame:
    """Where each seed's split fell: step, epoch, accuracy, numbers of easy and hard examples."""
    rows = []
    for s, t in tables.items():
        rows.append(dict(seed=s, step=int(t["step"].iloc[0]), epoch=int(t["step"].iloc[0]) / n_per_epoch,
                         accuracy=float(t["accuracy"].iloc[0]), easy=int((~t["hard"]).sum()),
                         hard=int(t["hard"].sum())))
    return pd.DataFrame(rows)


class PoolsTooSmall(ValueError):
    """The easy or hard pool cannot supply the requested split."""


def pools(diff: pd.DataFrame, kind: str, seeds: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Example ids of the easy and hard pools. "single": easy/hard of one classification run,
    the first seed's (W&S §4.2); "consensus": difficulty 0 vs difficulty K (easy resp. hard in
    every run)."""
    ex, d = diff["example"].to_numpy(), diff["difficulty"].to_numpy()
    if kind == "single":
        hard = diff[seed_column(seeds[0])].to_numpy()
        return ex[~hard], ex[hard]
    return ex[d == 0], ex[d == len(seeds)]


def cross_splits(diff: pd.DataFrame, d: dict, min_train: int = 1) -> pd.DataFrame:
    """e-train / e-test / h-train / h-test (W&S §4.2): from each pool the same number m of
    examples (`pool_size`, or 0 = as many as the smaller pool has) drawn at random, split
    train:test = ratio:1. Columns: example, subset; examples in no subset are not listed."""
    easy, hard = pools(diff, d["pools"], d["seeds"])
    m = d["pool_size"] or min(len(easy), len(hard))
    if m > min(len(easy), len(hard)):
        raise PoolsTooSmall(f"difficulty.pool_size: {m} examples asked from each pool, but the "
                            f"{d['pools']} pools have {len(easy)} easy and {len(hard)} hard")
    n_test = m // (d["split_ratio"] + 1)
    n_train = m - n_test
    if n_test < 1 or n_train < min_train:
        raise PoolsTooSmall(f"difficulty.pools: the {d['pools']} pools have {len(easy)} easy and "
                            f"{len(hard)} hard examples; a {d['split_ratio']}:1 split of {m} gives "
                            f"{n_train} train and {n_test} test, need ≥ {min_train} train (batch size) "
                            f"and ≥ 1 test")
    rng = np.random.default_rng(d["split_seed"])
    parts = []
    for pool, (tr, te) in ((easy, ("e-train", "e-test")), (hard, ("h-train", "h-test"))):
        chosen = rng.permutation(pool)[:m]
        parts += [pd.DataFrame({"example": np.sort(chosen[:n_train]), "subset": tr}),
                  pd.DataFrame({"example": np.sort(chosen[n_train:]), "subset": te})]
    out = pd.concat(parts, ignore_index=True)
    return out.astype({"example": "int64", "subset": "string"})
