"""cglib.train in-process, on hand-made inputs and tiny runs (an MLP of 8 units, a few steps):
schedules, batches, optimizer, device options, evaluation rows, checkpoints, and the loop
against a plain reference loop written out here."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from cglib import config
from cglib.models import build_model
from cglib.train import (_channels_last, _load_checkpoint, _log_eval, batch_indices, device_options,
                         eval_steps, evaluate, lr_at, make_optimizer, train_run)
from conftest import tiny_params


# ---------------------------------------------------------------------------- schedules

def test_eval_steps_small_totals_and_thinning():
    assert eval_steps(0) == [0]
    assert eval_steps(1) == [0, 1]
    assert eval_steps(9) == list(range(10))
    assert eval_steps(10) == list(range(11))  # the decade 10 starts at total itself
    assert eval_steps(25) == [0, *range(1, 10), 10, 20, 25]  # 30 > total is left out
    # per_decade 3: multipliers 1 + round(9j/3) = 1, 4, 7
    assert eval_steps(100, 3) == [0, 1, 4, 7, 10, 40, 70, 100]
    # per_decade 2: 1 + round(0), 1 + round(4.5) = 1, 5
    assert eval_steps(100, 2) == [0, 1, 5, 10, 50, 100]
    assert eval_steps(5, 1) == [0, 1, 5]
    # per_decade 5: 1 + round(1.8, 3.6, 5.4, 7.2) = 1, 3, 5, 6, 8
    assert eval_steps(100, 5) == [0, 1, 3, 5, 6, 8, 10, 30, 50, 60, 80, 100]


def test_eval_steps_ten_per_decade_fall_between_the_cg_points():
    # multipliers 1 + 9j/10 = 1, 1.9, 2.8, ..., 9.1: the first decade rounds to 1..9, the
    # second has ten points 10, 19, 28, ...
    assert eval_steps(100, 10) == [0, *range(1, 10), 10, 19, 28, 37, 46, 55, 64, 73, 82, 91, 100]


def test_lr_constant_and_step_boundaries():
    t = dict(lr=0.3, lr_schedule="constant", lr_milestones=[2], lr_gamma=0.5, steps=10)
    assert [lr_at(s, t) for s in (0, 5, 10)] == [0.3, 0.3, 0.3]
    t.update(lr_schedule="step")
    assert [lr_at(s, t) for s in (0, 1, 2, 3)] == [0.3, 0.3, 0.15, 0.15]
    t.update(lr_schedule="cosine")
    assert lr_at(5, t) == pytest.approx(0.15, abs=1e-15)
    assert lr_at(2, t) == pytest.approx(0.3 * 0.5 * (1 + math.cos(math.pi * 0.2)), abs=1e-15)


def _perm(n, seed, epoch):
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def test_batch_indices_drop_the_tail_and_reseed_each_epoch():
    """10 examples in batches of 3: 3 batches an epoch (the 10th example waits for the next
    epoch's permutation); epoch e is the permutation seeded by (seed, e)."""
    cache = {}
    got = [batch_indices(s, 10, 3, seed=4, cache=cache).tolist() for s in range(7)]
    p0, p1, p2 = (_perm(10, 4, e).tolist() for e in range(3))
    assert got == [p0[0:3], p0[3:6], p0[6:9], p1[0:3], p1[3:6], p1[6:9], p2[0:3]]
    assert cache["epoch"] == 2
    assert batch_indices(5, 10, 3, seed=4, cache={}, device="cpu").tolist() == p1[6:9]
    assert batch_indices(5, 10, 3, seed=4, cache={}, device="meta").device.type == "meta"  # moved once an epoch


def test_make_optimizer():
    model = torch.nn.Linear(2, 2)
    adam = make_optimizer(model, dict(base="adam", lr=0.01, weight_decay=0.2, momentum=0.9))
    assert type(adam) is torch.optim.Adam
    assert (adam.defaults["lr"], adam.defaults["weight_decay"]) == (0.01, 0.2)
    sgd = make_optimizer(model, dict(base="sgd", lr=0.5, weight_decay=0.1, momentum=0.7))
    assert type(sgd) is torch.optim.SGD
    assert (sgd.defaults["lr"], sgd.defaults["momentum"], sgd.defaults["weight_decay"]) == (0.5, 0.7, 0.1)


# ---------------------------------------------------------------------------- device options

def test_device_options(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Card X")
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3))
    mlp = torch.nn.Sequential(torch.nn.Linear(2, 2))
    on = dict(amp="bf16", channels_last=True, tf32=True)
    off = dict(amp="none", channels_last=False, tf32=False)
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    none = dict(amp="none", channels_last=False, tf32=False)
    assert device_options(on, cpu, conv, "sgd") == {"type": "cpu", **none}
    assert device_options(on, cuda, conv, "sgd") == {"type": "cuda", "name": "Card X", **on}
    assert device_options(on, cuda, conv, "winsorized") == {"type": "cuda", "name": "Card X", **on, "amp": "none"}
    assert device_options(on, cuda, mlp, "rm3") == {"type": "cuda", "name": "Card X", **on, "channels_last": False}
    assert device_options(off, cuda, conv, "sgd") == {"type": "cuda", "name": "Card X", **none}
    assert device_options(dict(on, tf32=False), cuda, conv, "sgd")["tf32"] is False


def test_channels_last_only_for_images():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    y = _channels_last(x)
    assert y.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x, y)
    flat = torch.ones(3, 4)
    assert _channels_last(flat) is flat


# ---------------------------------------------------------------------------- evaluation

def _ce(row, label):
    return math.log(sum(math.exp(v) for v in row)) - row[label]


def test_evaluate_rows_on_hand_made_logits():
    """An identity "model": the inputs are the logits. Accuracy and loss per split, overfit =
    train - (ε/K + (1-ε)·test), E5 accuracy and count for each difficulty level 0..K_d present."""
    x = [[2., 0., 0.], [0., 1., 0.], [1., 3., 0.], [0., .5, 0.]]
    y = [0, 1, 0, 0]            # correct: yes, yes, no, no
    xt = [[1., 0., 0.], [0., 2., 0.], [0., 0., 1.], [1., 0., 2.]]
    yt = [0, 1, 2, 0]           # correct: 3 of 4
    xe, ye = [[0., 1., 0.]], [1]
    run = dict(x_eval=torch.tensor(x), y_eval=torch.tensor(y),
               corrupt_eval=torch.tensor([False, False, True, False]),
               tests={"test": (torch.tensor(xt), torch.tensor(yt)), "e-test": (torch.tensor(xe), torch.tensor(ye))},
               noise=0.4, num_classes=3, difficulty_eval=torch.tensor([0, 3, 2, 0]), difficulty_levels=3)
    rows = evaluate(torch.nn.Identity(), run)
    loss = [_ce(r, c) for r, c in zip(x, y)]
    want = [dict(split="train", metric="accuracy", value=0.5),
            dict(split="train", metric="loss", value=sum(loss) / 4),
            dict(split="pristine", metric="accuracy", value=2 / 3),
            dict(split="pristine", metric="loss", value=(loss[0] + loss[1] + loss[3]) / 3),
            dict(split="corrupt", metric="accuracy", value=0.0),
            dict(split="corrupt", metric="loss", value=loss[2]),
            dict(split="test", metric="accuracy", value=0.75),
            dict(split="test", metric="loss", value=sum(_ce(r, c) for r, c in zip(xt, yt)) / 4),
            dict(split="e-test", metric="accuracy", value=1.0),
            dict(split="e-test", metric="loss", value=_ce(xe[0], 1)),
            dict(split="train", metric="overfit", value=0.5 - (0.4 / 3 + 0.6 * 0.75)),
            dict(split="difficulty=0", metric="accuracy", experiment="E5", value=0.5),
            dict(split="difficulty=0", metric="count", experiment="E5", value=2.0),
            dict(split="difficulty=2", metric="accuracy", experiment="E5", value=0.0),
            dict(split="difficulty=2", metric="count", experiment="E5", value=1.0),
            dict(split="difficulty=3", metric="accuracy", experiment="E5", value=1.0),
            dict(split="difficulty=3", metric="count", experiment="E5", value=1.0)]
    assert [{k: v for k, v in r.items() if k != "value"} for r in rows] == \
        [{k: v for k, v in r.items() if k != "value"} for r in want]
    assert [r["value"] for r in rows] == pytest.approx([r["value"] for r in want], rel=1e-6)


def test_evaluate_without_corrupt_examples_or_mask():
    """No corrupt example (noise 0): no corrupt rows; no mask (clean-label runs): train only."""
    run = dict(x_eval=torch.tensor([[1., 0.], [0., 1.]]), y_eval=torch.tensor([0, 0]),
               corrupt_eval=torch.tensor([False, False]), tests={"test": (torch.tensor([[1., 0.]]), torch.tensor([0]))},
               noise=0.0, num_classes=2)
    rows = evaluate(torch.nn.Identity(), run)
    assert [(r["split"], r["metric"]) for r in rows] == [
        ("train", "accuracy"), ("train", "loss"), ("pristine", "accuracy"), ("pristine", "loss"),
        ("test", "accuracy"), ("test", "loss"), ("train", "overfit")]
    assert rows[-1]["value"] == pytest.approx(0.5 - 1.0)
    rows = evaluate(torch.nn.Identity(), dict(run, corrupt_eval=None, difficulty_eval=None))
    assert [r["split"] for r in rows] == ["train", "train", "test", "test", "train"]


def test_evaluate_with_every_example_corrupt():
    """No pristine example (all labels changed): no pristine rows, and the corrupt rows after
    them are still written."""
    run = dict(x_eval=torch.tensor([[1., 0.], [0., 1.]]), y_eval=torch.tensor([0, 0]),
               corrupt_eval=torch.tensor([True, True]), tests={"test": (torch.tensor([[1., 0.]]), torch.tensor([0]))},
               noise=1.0, num_classes=2, difficulty_eval=None)
    rows = evaluate(torch.nn.Identity(), run)
    assert [(r["split"], r["metric"]) for r in rows] == [
        ("train", "accuracy"), ("train", "loss"), ("corrupt", "accuracy"), ("corrupt", "loss"),
        ("test", "accuracy"), ("test", "loss"), ("train", "overfit")]
    assert [r["value"] for r in rows if r["metric"] == "accuracy"] == [0.5, 0.5, 1.0]


# ---------------------------------------------------------------------------- checkpoints

def test_load_checkpoint(tmp_path):
    logs = []
    fp = {"a": 1, "b": [2], "c": "x"}
    assert _load_checkpoint(None, fp, logs.append) is None
    assert _load_checkpoint(tmp_path / "missing.pt", fp, logs.append) is None
    assert _load_checkpoint(tmp_path, fp, logs.append) is None  # a folder is no checkpoint
    assert logs == []
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert _load_checkpoint(bad, fp, logs.append) is None
    assert logs[-1].startswith(f"starting afresh: checkpoint {bad} is unreadable (")
    path = tmp_path / "c.pt"
    torch.save({"fingerprint": {"a": 1, "b": [3], "d": 0}, "step": 5}, path)
    assert _load_checkpoint(path, fp, logs.append) is None
    assert logs[-1] == f"starting afresh: checkpoint {path} was made with other b, c, d"
    torch.save({"step": 5}, path)  # no fingerprint at all
    assert _load_checkpoint(path, fp, logs.append) is None
    assert logs[-1] == f"starting afresh: checkpoint {path} was made with other a, b, c"
    torch.save({"fingerprint": fp, "step": 5}, path)
    assert _load_checkpoint(path, fp, logs.append) == {"fingerprint": fp, "step": 5}


def test_log_eval_table():
    """The row of a step: the whole model's numbers (no layer or null rows), the step's epoch;
    the header at step 0 only."""
    rows = [dict(step=0, epoch=0.0, split="train", metric="loss", value=9.0)]
    now = [dict(split="train", metric="loss", layer="all", null=-1, value=1.5),
           dict(split="train", metric="accuracy", value=0.25),
           dict(split="test", metric="accuracy", value=0.5), dict(split="pristine", metric="accuracy", value=0.75),
           dict(split="corrupt", metric="accuracy", value=0.125), dict(split="train", metric="overfit", value=-0.5),
           dict(split="train", metric="loss", layer="1", value=7.0),   # a layer's row, later: not the table's
           dict(split="train", metric="accuracy", null=0, value=0.0)]  # a null's row, later: not the table's
    rows += [dict(r, step=3, epoch=1.5) for r in now]
    rows.append(dict(step=4, epoch=2.0, split="test", metric="accuracy", value=0.875))  # another step's, later
    logs = []
    _log_eval(logs.append, 3, rows)
    assert logs == ["      3    1.50  1.5000  0.250  0.500  0.750  0.125  -0.500"]
    logs.clear()
    _log_eval(logs.append, 0, rows[:1])
    assert logs == ["   step   epoch    loss  train   test  prist   corr overfit",
                    "      0    0.00  9.0000    nan    nan    nan    nan     nan"]


# ---------------------------------------------------------------------------- the loop

N, B = 50, 20  # 2 batches an epoch, 10 examples of tail


def _params(**train):
    """Validated tiny params, then the train section of these short runs (set after validation:
    the schema's cross-field rules are about whole studies, e.g. el2n_epoch within the steps)."""
    p = config.validate(tiny_params())
    p["train"].update({"steps": 7, "batch_size": B, "eval_per_decade": 3, "checkpoint_every": 3, "lr": 0.2,
                       "momentum": 0.5, "weight_decay": 0.01, "lr_schedule": "step", "lr_milestones": [3],
                       "lr_gamma": 0.5, **train})
    p["model"] = {"name": "mlp", "hidden": [8]}
    return p


def _data():
    g = torch.Generator().manual_seed(0)
    return {"x_train": torch.randn(N, 6, generator=g), "y_train": torch.randint(0, 3, (N,), generator=g),
            "x_test": torch.randn(20, 6, generator=g), "y_test": torch.randint(0, 3, (20,), generator=g),
            "input_shape": (6,), "num_classes": 3}


CORRUPT = torch.arange(N) % 5 == 0


def _labels(data):
    return torch.where(CORRUPT, (data["y_train"] + 1) % 3, data["y_train"])


def _run(p, spec=None, corrupt=CORRUPT, **kw):
    data = _data()
    spec = dict(dict(run="r", optimizer="sgd", clip=0, noise=0.2, seed=3, subset="full"), **(spec or {}))
    logs = kw.pop("logs", [])
    out = train_run(p, data, _labels(data), corrupt, spec, log=kw.pop("log", logs.append), progress=False, **kw)
    return out, logs


def _reference_model(p, data, labels, seed, steps):
    """The run's training written out plainly: weights from torch.manual_seed(seed), epoch e a
    permutation seeded by seed·1,000,003 + e (tail dropped), SGD with the step schedule."""
    t = p["train"]
    torch.manual_seed(seed)
    model = build_model(p["model"], data["input_shape"], data["num_classes"])
    opt = torch.optim.SGD(model.parameters(), lr=t["lr"], momentum=t["momentum"], weight_decay=t["weight_decay"])
    per_epoch = N // B
    for step in range(steps):
        epoch, j = step // per_epoch, step % per_epoch
        idx = _perm(N, seed, epoch)[j * B:(j + 1) * B]
        for group in opt.param_groups:
            group["lr"] = t["lr"] * (t["lr_gamma"] if step >= t["lr_milestones"][0] else 1.0)
        opt.zero_grad()
        F.cross_entropy(model(data["x_train"][idx]), labels[idx]).backward()
        opt.step()
    return model.eval()


def _value(rows, step, split, metric):
    got = [r["value"] for r in rows if (r["step"], r["split"], r["metric"]) == (step, split, metric)]
    assert len(got) == 1, (step, split, metric, got)
    return got[0]


def test_run_matches_a_plain_reference_loop():
    p = _params()
    before = __import__("time").perf_counter()
    out, logs = _run(p)
    elapsed = __import__("time").perf_counter() - before
    rows = out["rows"]
    assert (out["status"], out["steps_done"]) == ("ok", 7)
    assert 0 < out["wall_s"] <= elapsed
    assert out["device"] == {"type": "cpu", "amp": "none", "channels_last": False, "tf32": False}
    assert not any(line.startswith("device") for line in logs)  # no GPU option asked for
    assert sorted({r["step"] for r in rows}) == [0, 1, 4, 7]
    assert all(r["epoch"] == r["step"] * B / N for r in rows) and _value(rows, 1, "train", "loss") > 0
    assert {r["epoch"] for r in rows} == {0.0, 0.4, 1.6, 2.8}
    assert {r["experiment"] for r in rows} == {"E1"}
    assert [(r["split"], r["metric"]) for r in rows if r["step"] == 7] == [
        ("train", "accuracy"), ("train", "loss"), ("pristine", "accuracy"), ("pristine", "loss"),
        ("corrupt", "accuracy"), ("corrupt", "loss"), ("test", "accuracy"), ("test", "loss"), ("train", "overfit")]
    data = _data()
    labels = _labels(data)
    for steps in (0, 4, 7):
        model = _reference_model(p, data, labels, 3, steps)
        with torch.no_grad():
            out_train, out_test = model(data["x_train"]), model(data["x_test"])
        right = out_train.argmax(1) == labels
        assert _value(rows, steps, "train", "loss") == pytest.approx(F.cross_entropy(out_train, labels).item(), rel=1e-6)
        assert _value(rows, steps, "train", "accuracy") == pytest.approx(right.float().mean().item())
        assert _value(rows, steps, "corrupt", "accuracy") == pytest.approx(right[CORRUPT].float().mean().item())
        assert _value(rows, steps, "pristine", "accuracy") == pytest.approx(right[~CORRUPT].float().mean().item())
        test_acc = (out_test.argmax(1) == data["y_test"]).float().mean().item()
        assert _value(rows, steps, "test", "accuracy") == pytest.approx(test_acc)
        assert _value(rows, steps, "train", "overfit") == pytest.approx(
            right.float().mean().item() - (0.2 / 3 + 0.8 * test_acc))
    # E8: GraNd at step 0 is the initial model's per-example gradient norm (the probes ran)
    from cglib.scores import grand
    want = grand(_reference_model(p, data, labels, 3, 0), data["x_train"], labels).numpy()
    assert out["scores"]["grand"].to_numpy() == pytest.approx(want, rel=1e-5)


def test_eval_train_sample_and_difficulty_rows():
    """train.eval_train_sample: train accuracy and loss on the fixed sample; difficulty: E5 rows of
    levels 0..len(difficulty.seeds) on that sample."""
    from cglib.data import fixed_sample
    p = _params(eval_train_sample=15, steps=1)
    out, _ = _run(p, difficulty=torch.arange(N) % 4)
    rows = out["rows"]
    data = _data()
    labels = _labels(data)
    model = _reference_model(p, data, labels, 3, 1)
    idx = fixed_sample(N, 15, seed=0)
    with torch.no_grad():
        o = model(data["x_train"][idx])
    right = o.argmax(1) == labels[idx]
    assert _value(rows, 1, "train", "loss") == pytest.approx(F.cross_entropy(o, labels[idx]).item(), rel=1e-6)
    assert _value(rows, 1, "train", "accuracy") == pytest.approx(right.float().mean().item())
    d = (torch.arange(N) % 4)[idx]
    for level in range(4):
        assert _value(rows, 1, f"difficulty={level}", "count") == float((d == level).sum())
        assert _value(rows, 1, f"difficulty={level}", "accuracy") == pytest.approx(right[d == level].float().mean().item())
    assert {r["experiment"] for r in rows if r["split"].startswith("difficulty")} == {"E5"}


def test_subset_run_without_corrupt_mask_is_e6():
    out, _ = _run(_params(steps=1), spec={"subset": "e-train", "noise": 0.0}, corrupt=None,
                  tests={"h-test": (torch.zeros(2, 6), torch.tensor([0, 1]))})
    rows = out["rows"]
    assert {r["experiment"] for r in rows} == {"E6"}
    assert [r["split"] for r in rows if r["step"] == 1] == ["train", "train", "test", "test", "h-test", "h-test", "train"]


def test_gpu_options_on_the_cpu_are_logged_as_not_taking_effect():
    for key, value in (("amp", "bf16"), ("channels_last", True), ("tf32", True)):
        out, logs = _run(_params(steps=0, **{key: value}))
        assert out["device"] == {"type": "cpu", "amp": "none", "channels_last": False, "tf32": False}
        assert logs[0] == "device cpu: amp none, channels_last False, tf32 False (the GPU options act on CUDA only)"


def test_divergence_stops_the_run():
    out, logs = _run(_params(lr=1e30, lr_milestones=[], steps=30))
    assert out["status"] == "diverged" and 0 < out["steps_done"] < 30
    assert logs[-1].endswith(f"at step {out['steps_done']}: run marked diverged, stopping")
    assert max(r["step"] for r in out["rows"]) == out["steps_done"]


class Killed(Exception):
    pass


def _kill_at(step):
    def log(line):
        if line.split()[:1] == [str(step)]:
            raise Killed
    return log


def test_kill_and_resume_equals_the_unbroken_run(tmp_path):
    """Checkpoints every 3 steps after the start (none at step 0), resume at the saved step
    without measuring it again, the checkpoint deleted at the end."""
    p = _params()
    whole, _ = _run(p)
    ckpt = tmp_path / "r.pt"
    with pytest.raises(Killed):
        _run(p, checkpoint=ckpt, log=_kill_at(1))
    assert not ckpt.exists()
    with pytest.raises(Killed):
        _run(p, checkpoint=ckpt, log=_kill_at(4))
    saved = torch.load(ckpt, weights_only=False)
    assert saved["step"] == 3 and max(r["step"] for r in saved["rows"]) == 1
    resumed, logs = _run(p, checkpoint=ckpt)
    assert f"resumed from {ckpt} at step 3" in logs
    assert resumed["rows"] == whole["rows"] and (resumed["status"], resumed["steps_done"]) == ("ok", 7)
    assert resumed["scores"].equals(whole["scores"])
    assert not ckpt.exists()


def test_a_checkpoint_of_other_params_is_not_resumed(tmp_path):
    p = _params()
    ckpt = tmp_path / "r.pt"
    with pytest.raises(Killed):
        _run(p, checkpoint=ckpt, log=_kill_at(4))
    other = _params(lr=0.1)
    fresh, _ = _run(other)
    out, logs = _run(other, checkpoint=ckpt)
    assert f"starting afresh: checkpoint {ckpt} was made with other params.train" in logs
    assert out["rows"] == fresh["rows"]


def test_bn_priming_mc_primes_before_step_0():
    """A BatchNorm CNN: step 0's evaluation (eval mode, running statistics) is that of the
    initial model after bn_prime_steps training-mode passes on minibatches of seed + 200,000;
    without priming it differs, and an MLP (no BatchNorm) is not primed."""
    g = torch.Generator().manual_seed(1)
    data = {"x_train": torch.randn(30, 1, 4, 4, generator=g) + 1, "y_train": torch.randint(0, 3, (30,), generator=g),
            "x_test": torch.randn(6, 1, 4, 4, generator=g), "y_test": torch.randint(0, 3, (6,), generator=g),
            "input_shape": (1, 4, 4), "num_classes": 3}
    spec = dict(run="bn", optimizer="sgd", clip=0, noise=0.0, seed=2, subset="full")

    def run(priming):
        p = _params(steps=0, batch_size=10, bn_priming=priming, bn_prime_steps=4)
        p["model"] = {"name": "cnn", "channels": [2]}
        logs = []
        out = train_run(p, data, data["y_train"], None, spec, log=logs.append, progress=False)
        return p, _value(out["rows"], 0, "train", "loss"), logs

    p, primed, logs = run("mc")
    assert "BatchNorm statistics primed by 4 no-op steps before step 0 (MC appendix B)" in logs
    torch.manual_seed(2)
    model = build_model(p["model"], (1, 4, 4), 3)
    with torch.no_grad():
        fresh = F.cross_entropy(model.eval()(data["x_train"]), data["y_train"]).item()
    model.train()
    seed = 2 + 200_000
    with torch.no_grad():
        for k in range(4):
            epoch, j = divmod(k, 3)
            model(data["x_train"][_perm(30, seed, epoch)[j * 10:(j + 1) * 10]])
        model.eval()
        want = F.cross_entropy(model(data["x_train"]), data["y_train"]).item()
    assert primed == pytest.approx(want, rel=1e-6)
    _, unprimed, logs = run("none")
    assert unprimed == pytest.approx(fresh, rel=1e-6) and unprimed != primed
    assert not any("primed" in line for line in logs)
    _, logs = _run(_params(steps=0))
    assert not any("primed" in line for line in logs)


def test_channels_last_on_the_cpu_leaves_the_model_alone(monkeypatch):
    """train.channels_last acts on CUDA only: a conv net trained on the CPU keeps its layout."""
    import cglib.train
    models = []
    real = cglib.train.build_model
    monkeypatch.setattr(cglib.train, "build_model", lambda *a: models.append(real(*a)) or models[-1])
    g = torch.Generator().manual_seed(0)
    data = {"x_train": torch.randn(20, 2, 4, 4, generator=g), "y_train": torch.randint(0, 3, (20,), generator=g),
            "x_test": torch.randn(4, 2, 4, 4, generator=g), "y_test": torch.randint(0, 3, (4,), generator=g),
            "input_shape": (2, 4, 4), "num_classes": 3}
    p = _params(steps=1, batch_size=10, channels_last=True, bn_priming="none")
    p["model"] = {"name": "cnn", "channels": [2]}
    spec = dict(run="cl", optimizer="sgd", clip=0, noise=0.0, seed=0, subset="full")
    out = train_run(p, data, data["y_train"], None, spec, log=lambda *a: None, progress=False)
    assert out["device"]["channels_last"] is False
    conv = next(m for m in models[0].modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous() and not conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_layout_changes_no_number(monkeypatch):
    """Where channels_last takes effect (CUDA; here device_options is made to say so on the
    CPU): the model, the training data and every extra test set are converted, and the rows are
    those of the plain layout."""
    import cglib.train
    real = cglib.train.device_options
    g = torch.Generator().manual_seed(0)
    data = {"x_train": torch.randn(20, 2, 4, 4, generator=g), "y_train": torch.randint(0, 3, (20,), generator=g),
            "x_test": torch.randn(4, 2, 4, 4, generator=g), "y_test": torch.randint(0, 3, (4,), generator=g),
            "input_shape": (2, 4, 4), "num_classes": 3}
    tests = {"e-test": (data["x_train"][:5], data["y_train"][:5])}
    p = _params(steps=2, batch_size=10, bn_priming="none", eval_per_decade=9)
    p["model"] = {"name": "cnn", "channels": [2]}
    spec = dict(run="cl", optimizer="sgd", clip=0, noise=0.0, seed=0, subset="full")
    plain = train_run(p, data, data["y_train"], None, spec, log=lambda *a: None, progress=False, tests=tests)
    monkeypatch.setattr(cglib.train, "device_options", lambda *a: dict(real(*a), channels_last=True))
    layouts, models = [], []
    real_per_example, real_build = cglib.train.per_example, cglib.train.build_model
    monkeypatch.setattr(cglib.train, "per_example", lambda model, x, y: layouts.append(
        (len(x), x.is_contiguous(memory_format=torch.channels_last))) or real_per_example(model, x, y))
    monkeypatch.setattr(cglib.train, "build_model", lambda *a: models.append(real_build(*a)) or models[-1])
    cl = train_run(p, data, data["y_train"], None, spec, log=lambda *a: None, progress=False, tests=tests)
    assert set(layouts) == {(20, True), (4, True), (5, True)}  # train sample, test, e-test
    conv = next(m for m in models[0].modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    key = lambda r: (r["step"], r["split"], r["metric"])  # noqa: E731
    assert [key(r) for r in cl["rows"]] == [key(r) for r in plain["rows"]]
    assert {"e-test", "test", "train"} <= {r["split"] for r in cl["rows"]}
    assert [r["value"] for r in cl["rows"]] == pytest.approx([r["value"] for r in plain["rows"]], rel=1e-5)


def test_every_part_of_the_fingerprint_starts_a_run_afresh(tmp_path, monkeypatch):
    """A checkpoint is resumed only if every param that reaches the run, the run itself, the
    device options and each input file's digest are as they were; a change of any one starts
    afresh, and the log names exactly that part."""
    import cglib.train as train_mod
    p, inputs = _params(), {"data": "d1", "labels": "l1"}
    ckpt, saved = tmp_path / "r.pt", tmp_path / "saved.pt"
    with pytest.raises(Killed):
        _run(p, checkpoint=ckpt, log=_kill_at(4), inputs=inputs)
    saved.write_bytes(ckpt.read_bytes())

    def other(key, value):
        q = copy.deepcopy(p)
        section, _, name = key.rpartition(".")
        q[section][name] = value
        return q
    real_options = train_mod.device_options
    cases = {  # the part the log names: (params, spec change, inputs, device options' extra)
        "params.train": (other("train.lr", 0.3), {}, inputs, {}),
        "params.model": (other("model.hidden", [9]), {}, inputs, {}),
        "params.data": (other("data.n_test", 7), {}, inputs, {}),
        "params.difficulty.el2n_epoch": (other("difficulty.el2n_epoch", p["difficulty"]["el2n_epoch"] + 1), {}, inputs, {}),
        "params.difficulty.seeds": (other("difficulty.seeds", [0, 1, 2, 3]), {}, inputs, {}),
        "run": (p, {"noise": 0.3}, inputs, {}),
        "device": (p, {}, inputs, {"name": "another card"}),
        "input data": (p, {}, {"data": "d2", "labels": "l1"}, {}),
        "input splits": (p, {}, {**inputs, "splits": "s1"}, {}),
    }
    for key, (q, spec, ins, extra) in cases.items():
        monkeypatch.setattr(train_mod, "device_options", lambda *a, extra=extra: {**real_options(*a), **extra})
        ckpt.write_bytes(saved.read_bytes())
        out, logs = _run(q, spec, checkpoint=ckpt, inputs=ins)
        assert f"starting afresh: checkpoint {ckpt} was made with other {key}" in logs, (key, logs[:3])
        assert out["steps_done"] == 7 and min(r["step"] for r in out["rows"]) == 0, key
    monkeypatch.setattr(train_mod, "device_options", real_options)
    ckpt.write_bytes(saved.read_bytes())
    _, logs = _run(p, checkpoint=ckpt, inputs=dict(reversed(list(inputs.items()))))  # all as it was
    assert f"resumed from {ckpt} at step 3" in logs


def test_each_variant_s_rows_name_its_experiment():
    """E1 plain SGD, E3 winsorized SGD, E4 the robust means (W&S §3); E6 any subset run."""
    labels = {}
    for name, clip in (("sgd", 0), ("winsorized", 1), ("m3", 0), ("rm3", 0), ("ra3", 0)):
        out, _ = _run(_params(steps=0, batch_size=21), {"optimizer": name, "clip": clip})
        labels[name] = {r["experiment"] for r in out["rows"] if r["split"] in ("train", "test")}
    assert labels == {"sgd": {"E1"}, "winsorized": {"E3"}, "m3": {"E4"}, "rm3": {"E4"}, "ra3": {"E4"}}


def test_the_score_probe_sees_every_training_batch_as_it_is_presented(monkeypatch):
    """E8 records each example's output when its minibatch is presented (cglib.probes.ScoreProbe):
    the training forward pass of every step is captured, with that step's batch."""
    from cglib.probes import ScoreProbe
    seen, real = [], ScoreProbe.capture

    def capture(self, model, idx):
        seen.append(idx.tolist())
        return real(self, model, idx)
    monkeypatch.setattr(ScoreProbe, "capture", capture)
    _run(_params(steps=4))
    cache = {}
    assert seen == [batch_indices(k, N, B, 3, cache, torch.device("cpu")).tolist() for k in range(4)]
