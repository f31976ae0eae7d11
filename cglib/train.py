"""The training loop: a plain loop over device-resident tensors, as in nanoGPT / airbench.

One call of `train_run` trains one run (noise × optimizer × seed) and returns its metric rows
(the variable columns of DESIGN.md §6; `tables.metrics_frame` adds the constant ones).
Everything a run depends on flows from its params and seed: the initial weights, the batch order
(a permutation per epoch drawn from (seed, epoch), so a resumed run needs no RNG state) and the
robust-gradient history (saved in the checkpoint).
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from cglib import gpu, model_sources, tables
from cglib.measuring import prime_batchnorm_mc
from cglib.data import fixed_sample
from cglib.models import build_model, logits
from cglib.probes import make_probes
from cglib.transforms import make_gradient_transform

# BatchNorm priming draws its minibatches with this offset on the run's seed: its own stream,
# so training sees the same minibatches with or without priming
BN_PRIME_SEED_OFFSET = 200_000
EXPERIMENT_OF = {"sgd": "E1", "winsorized": "E3", "m3": "E4", "rm3": "E4", "ra3": "E4"}


# ---------------------------------------------------------------------------- schedules

def eval_steps(total: int, per_decade: int = 9) -> list[int]:
    """0, then per decade [10^k, 10^(k+1)) the multiples 1..9 (per_decade=9, as the CG code
    logged), thinned to `per_decade` evenly spaced multipliers below 9; above 9 the multipliers
    1 + 9j/per_decade fall between them (18: 1, 1.5, 2, ...; 90: 1, 1.1, ...), each point
    rounded to a whole step, so the first decade (steps 1-9) never has more than 9. Always ends
    with `total`."""
    if per_decade <= 9:
        mults = sorted({1 + round(j * 9 / per_decade) for j in range(per_decade)})
    else:
        mults = [1 + j * 9 / per_decade for j in range(per_decade)]
    steps = {0, total}
    decade = 1
    while decade <= total:
        steps.update(s for s in (round(m * decade) for m in mults) if s <= total)
        decade *= 10
    return sorted(steps)


def lr_at(step: int, t: dict) -> float:
    if t["lr_schedule"] == "step":
        return t["lr"] * t["lr_gamma"] ** sum(step >= m for m in t["lr_milestones"])
    if t["lr_schedule"] == "cosine":
        return t["lr"] * 0.5 * (1 + math.cos(math.pi * step / t["steps"]))
    return t["lr"]


def batch_indices(step: int, n: int, batch: int, seed: int, cache: dict, device=None) -> torch.Tensor:
    """Minibatch of `step`: epochs are fresh permutations seeded by (seed, epoch); the tail of
    an epoch that does not fill a batch is dropped, so every batch has exactly `batch` examples.
    The permutation is drawn on the CPU (the same batches on any device) and moved to `device`
    once per epoch, not once per step."""
    per_epoch = n // batch
    epoch, j = divmod(step, per_epoch)
    if cache.get("epoch") != epoch:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=gen)
        cache.update(epoch=epoch, perm=perm if device is None else perm.to(device))
    return cache["perm"][j * batch:(j + 1) * batch]


def make_optimizer(model: torch.nn.Module, t: dict) -> torch.optim.Optimizer:
    if t["base"] == "adam":
        return torch.optim.Adam(model.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])
    return torch.optim.SGD(model.parameters(), lr=t["lr"], momentum=t["momentum"],
                           weight_decay=t["weight_decay"])


# ---------------------------------------------------------------------------- device options

def device_options(t: dict, device: torch.device, model: torch.nn.Module, optimizer: str) -> dict:
    """What a run trains on, as run.json records it: the device type (and the card's name), and
    the train section's GPU options as they take effect. They act on CUDA only, so a CPU run is
    the same whatever they say.
    amp "bf16": autocast of the training forward passes only. Parameters, gradients, optimizer
    and RM3 / M3 medians stay fp32, and evaluation and every probe (per-example gradient norms,
    m-coherence, loss shares, GraNd) run outside it in fp32. A winsorized run keeps fp32
    throughout: its per-coordinate order statistics of per-example gradients would round to ties
    in bf16's 8 bits. (E8's records are the training pass's own logits, so bf16 ones.)
    channels_last: only a model with convolutions has a memory format to change.
    tf32: matmuls and convolutions with TF32 inputs (cglib.gpu.configure); off is strict fp32."""
    cuda = device.type == "cuda"
    convolutional = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    out = {"type": device.type}
    if cuda:
        out["name"] = torch.cuda.get_device_name(device)
    out.update(amp=t["amp"] if cuda and optimizer != "winsorized" else "none",
               channels_last=bool(t["channels_last"] and cuda and convolutional),
               tf32=bool(t["tf32"] and cuda))
    return out


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


# ---------------------------------------------------------------------------- evaluation

def per_example(model, x, y, chunk: int = 512):
    """(correct bool, loss float) per example, in eval mode, chunked to bound memory."""
    out = logits(model, x, chunk)
    return out.argmax(1) == y, F.cross_entropy(out, y, reduction="none")


def evaluate(model, run: dict) -> list[dict]:
    """E1 rows: accuracy and loss on train (noisy labels), pristine, corrupt, test (and any extra
    test sets, e.g. e-test / h-test for E6); overfit. E5 rows: training accuracy (and count) per
    difficulty level, when the run knows its examples' difficulty."""
    rows = []
    c, l = per_example(model, run["x_eval"], run["y_eval"])
    groups = {"train": slice(None)}
    if run["corrupt_eval"] is not None:  # E6 subset runs have clean labels only
        groups.update(pristine=~run["corrupt_eval"], corrupt=run["corrupt_eval"])
    acc = {}
    for split, mask in groups.items():
        if isinstance(mask, torch.Tensor) and not bool(mask.any()):
            continue  # e.g. no corrupt example at noise 0: no row rather than a NaN
        acc[split] = c[mask].float().mean().item()
        rows += [dict(split=split, metric="accuracy", value=acc[split]),
                 dict(split=split, metric="loss", value=l[mask].mean().item())]
    for split, (x, y) in run["tests"].items():
        ct, lt = per_example(model, x, y)
        acc[split] = ct.float().mean().item()
        rows += [dict(split=split, metric="accuracy", value=acc[split]),
                 dict(split=split, metric="loss", value=lt.mean().item())]
    eps, k = run["noise"], run["num_classes"]
    # CG §3.3: the test labels are clean, so a perfect learner of the noisy train set "should"
    # score ε/K + (1-ε)·test on train; anything above that is memorisation.
    overfit = acc["train"] - (eps / k + (1 - eps) * acc["test"])
    rows.append(dict(split="train", metric="overfit", value=overfit))
    if run.get("difficulty_eval") is not None:  # W&S Fig. 5a: accuracy by difficulty
        d = run["difficulty_eval"]
        for level in range(run["difficulty_levels"] + 1):
            mask = d == level
            if bool(mask.any()):
                rows += [dict(split=f"difficulty={level}", metric="accuracy", experiment="E5",
                              value=c[mask].float().mean().item()),
                         dict(split=f"difficulty={level}", metric="count", experiment="E5",
                              value=float(mask.sum().item()))]
    return rows


# ---------------------------------------------------------------------------- checkpoints

def _load_checkpoint(path: Path | None, fingerprint: dict, log: Callable) -> dict | None:
    """The checkpoint at `path` if everything the run depends on (`fingerprint`: every param that
    reaches it and the digests of its input files) is what it was when it was written."""
    if path is None or not path.is_file():
        return None
    try:
        ckpt = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as err:  # a checkpoint cut short by a kill is rewritten, not trusted
        log(f"starting afresh: checkpoint {path} is unreadable ({err})")
        return None
    old = ckpt.get("fingerprint")
    if old != fingerprint:
        old = old if isinstance(old, dict) else {}
        changed = sorted(k for k in fingerprint.keys() | old.keys() if old.get(k) != fingerprint.get(k))
        log(f"starting afresh: checkpoint {path} was made with other {', '.join(changed)}")
        return None
    return ckpt


# ---------------------------------------------------------------------------- the loop

def train_run(params: dict, data: dict, labels: torch.Tensor, corrupt: torch.Tensor | None, spec: dict,
              checkpoint: Path | None = None, log: Callable = print, progress: bool = True,
              difficulty: torch.Tensor | None = None, tests: dict | None = None,
              inputs: dict | None = None) -> dict:
    """Train one run. `data` from cglib.data.load_prepared (on the device; for an E6 run, its
    x_train already cut to the subset), `labels` the training labels and `corrupt` their mask
    (None for clean-label subset runs), `spec` one entry of cglib.config.run_grid, `difficulty`
    each training example's difficulty (E5; None = not known), `tests` extra evaluation sets
    {split: (x, y)} beside the test set (E6: e-test, h-test), `inputs` digests of the input files
    (a checkpoint made from other inputs is not resumed).
    Returns {"rows": [...], "scores": per-example E8 scores (DataFrame), "status": "ok" |
    "diverged", "steps_done", "wall_s", "device": `device_options`}. Every tensor of the run
    (data, labels, masks, probes' samples and state, gradient history) lives on the device of
    `data`; only numbers for the results come back to the CPU."""
    t, device = params["train"], data["x_train"].device
    n, batch = len(labels), t["batch_size"]
    labels = labels.to(device)
    corrupt = corrupt.to(device) if corrupt is not None else None
    gpu.configure(t, device)  # on CUDA: deterministic kernels, TF32 as train.tf32 says
    torch.manual_seed(spec["seed"])  # seeds every device's generator, CUDA's included
    # built on the CPU, then moved: the same initial weights on any device
    model = build_model(params["model"], data["input_shape"], data["num_classes"]).to(device)
    options = device_options(t, device, model, spec["optimizer"])
    if options["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
        data = {k: _channels_last(v) if isinstance(v, torch.Tensor) else v for k, v in data.items()}
        tests = {k: (_channels_last(x), y) for k, (x, y) in (tests or {}).items()}
    if device.type == "cuda" or any(t[k] not in ("none", False) for k in ("amp", "channels_last", "tf32")):
        name = f" ({options['name']})" if "name" in options else ""
        log(f"device {device}{name}: amp {options['amp']}, channels_last {options['channels_last']}, "
            f"tf32 {options['tf32']}" + ("" if device.type == "cuda" else " (the GPU options act on CUDA only)"))
    optimizer = make_optimizer(model, t)
    transform = make_gradient_transform(spec["optimizer"], spec["clip"], t["rolling_warmup"],
                                        t["winsorize_reading"])
    transform.amp = torch.bfloat16 if options["amp"] == "bf16" else None
    schedule = eval_steps(t["steps"], t["eval_per_decade"])
    probes = make_probes(params, spec["optimizer"], data, labels, corrupt, log, schedule,
                         noise=spec.get("noise"))

    eval_idx = fixed_sample(n, t["eval_train_sample"] or n, seed=0, device=device)
    run = dict(x_eval=data["x_train"][eval_idx], y_eval=labels[eval_idx],
               corrupt_eval=corrupt[eval_idx] if corrupt is not None else None,
               tests={"test": (data["x_test"], data["y_test"]), **(tests or {})},
               noise=float(spec["noise"]), num_classes=data["num_classes"],
               difficulty_eval=difficulty.to(device)[eval_idx] if difficulty is not None else None,
               difficulty_levels=len(params["difficulty"]["seeds"]))

    # everything the run's numbers depend on; a checkpoint is resumed only if all of it matches
    # (the model section as its name reads it: checkpoints from before model.arch/path/kwargs resume)
    fingerprint = {"params.train": t, "params.model": model_sources.used(params["model"]),
                   "params.data": params["data"],
                   "params.difficulty.el2n_epoch": params["difficulty"]["el2n_epoch"],
                   "params.difficulty.seeds": params["difficulty"]["seeds"], "run": spec, "device": options,
                   **{f"input {k}": v for k, v in (inputs or {}).items()}}
    fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
    rows, start, status, resumed_at = [], 0, "ok", None
    ckpt = _load_checkpoint(checkpoint, fingerprint, log)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        transform.load_state_dict(ckpt["transform"])
        for name, probe in probes.items():
            probe.load_state_dict(ckpt["probes"][name])
        rows, start = ckpt["rows"], ckpt["step"]
        resumed_at = start  # its measurements are already in the checkpoint
        log(f"resumed from {checkpoint} at step {start}")
    elif t["bn_priming"] == "mc":  # MC appendix B; a resumed run has its statistics in the checkpoint
        seed, cache = spec["seed"] + BN_PRIME_SEED_OFFSET, {}
        batches = (data["x_train"][batch_indices(k, n, batch, seed, cache, device)]
                   for k in range(t["bn_prime_steps"]))
        if passes := prime_batchnorm_mc(model, batches):
            log(f"BatchNorm statistics primed by {passes} no-op steps before step 0 (MC appendix B)")

    schedule = set(schedule)
    experiment = EXPERIMENT_OF[spec["optimizer"]] if spec.get("subset", "full") == "full" else "E6"
    cache: dict = {}
    t0 = time.perf_counter()
    model.train()
    bar = tqdm(range(start, t["steps"] + 1), initial=start, total=t["steps"] + 1,
               disable=None if progress else True, desc=spec["run"], leave=False)
    for step in bar:
        if step != resumed_at:  # measure at θ_step, before this step's update
            scheduled = step in schedule
            new = [{"experiment": experiment, **r} for r in evaluate(model, run)] if scheduled else []
            for probe in probes.values():
                new += probe.rows(step, model, scheduled)
            rows += [dict(r, step=step, epoch=step * batch / n) for r in new]
            if scheduled:
                _log_eval(log, step, rows)
        if step == t["steps"]:
            break
        if checkpoint is not None and step > start and step % t["checkpoint_every"] == 0:
            tables.save_torch(dict(fingerprint=fingerprint, step=step, rows=rows, model=model.state_dict(),
                              optimizer=optimizer.state_dict(), transform=transform.state_dict(),
                              probes={k: p.state_dict() for k, p in probes.items()}), checkpoint)
        idx = batch_indices(step, n, batch, spec["seed"], cache, device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, t)
        optimizer.zero_grad(set_to_none=True)
        with probes["scores"].capture(model, idx) if "scores" in probes else contextlib.nullcontext():
            loss = transform.backward(model, data["x_train"][idx], labels[idx])
        if not torch.isfinite(loss):
            status = "diverged"
            log(f"loss is {loss.item()} at step {step}: run marked diverged, stopping")
            break
        optimizer.step()
    bar.close()
    if checkpoint is not None and checkpoint.exists():
        checkpoint.unlink()  # finished: the outputs now hold everything the checkpoint had
    scores = probes["scores"].frame() if "scores" in probes else None
    return dict(rows=rows, scores=scores, status=status, steps_done=step, wall_s=time.perf_counter() - t0,
                device=options)


def _log_eval(log: Callable, step: int, rows: list[dict]) -> None:
    now = {(r["split"], r["metric"]): r["value"] for r in rows
           if r["step"] == step and r.get("layer", "all") == "all" and r.get("null", -1) == -1}
    if step == 0:
        log(f"{'step':>7} {'epoch':>7} {'loss':>7} {'train':>6} {'test':>6} {'prist':>6} {'corr':>6} {'overfit':>7}")
    get = lambda k: now.get(k, float("nan"))  # noqa: E731
    epoch = next(r["epoch"] for r in rows if r["step"] == step)
    log(f"{step:>7} {epoch:>7.2f} {get(('train', 'loss')):>7.4f} {get(('train', 'accuracy')):>6.3f} "
        f"{get(('test', 'accuracy')):>6.3f} {get(('pristine', 'accuracy')):>6.3f} "
        f"{get(('corrupt', 'accuracy')):>6.3f} {get(('train', 'overfit')):>7.3f}")
