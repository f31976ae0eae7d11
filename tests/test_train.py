"""The training loop: schedules, determinism, kill-and-resume, divergence."""
import json

import pandas as pd
import pytest
import torch

from cglib import config
from cglib.train import batch_indices, eval_steps, lr_at
from conftest import PY, ROOT, kill_after, run_stage, tiny_params, write_params


def test_eval_steps_log_spaced():
    assert eval_steps(1000) == [0, *range(1, 10), *range(10, 100, 10), *range(100, 1000, 100), 1000]
    s = eval_steps(12345, 3)
    assert s[0] == 0 and s[-1] == 12345 and s == sorted(set(s))
    assert {1, 4, 7, 10, 40, 70, 100} <= set(s)


@pytest.mark.parametrize("per_decade", [10, 18, 45, 90])
def test_eval_steps_above_nine_per_decade_add_points(per_decade):
    """Every decade past the first holds exactly per_decade points (the first, steps 1-9, at
    most 9); 90 is every 10th step from 100 on."""
    s = eval_steps(100_000, per_decade)
    for lo in (10, 100, 1000, 10_000):
        inside = [x for x in s if lo <= x < 10 * lo]
        assert len(inside) == per_decade, lo
    if per_decade % 9 == 0:  # the CG points stay, others fall between them
        assert set(eval_steps(100_000, 9)) < set(s)
    assert set(range(1, 10)) <= set(s) and s[-1] == 100_000
    if per_decade == 90:
        assert [x for x in s if 100 <= x < 1000] == list(range(100, 1000, 10))


def test_lr_schedules():
    t = dict(lr=0.1, lr_schedule="step", lr_milestones=[10, 20], lr_gamma=0.1, steps=30)
    assert [round(lr_at(s, t), 6) for s in (0, 9, 10, 19, 20, 29)] == [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    t.update(lr_schedule="cosine")
    assert lr_at(0, t) == pytest.approx(0.1) and lr_at(15, t) == pytest.approx(0.05) and lr_at(30, t) < 1e-12


def test_batches_cover_each_epoch_once():
    cache = {}
    epoch = torch.cat([batch_indices(s, 100, 20, seed=3, cache=cache) for s in range(5)])
    assert sorted(epoch.tolist()) == list(range(100))
    again = torch.cat([batch_indices(s, 100, 20, seed=3, cache={}) for s in range(5)])
    assert torch.equal(epoch, again)
    assert not torch.equal(batch_indices(5, 100, 20, 3, {}), batch_indices(0, 100, 20, 3, {}))


def prepare_tiny(tmp_path, **train):
    params = write_params(tmp_path / "p.yaml", tiny_params(**train))
    run_stage("prepare", "--params", params, "--out", tmp_path / "d.pt", check=True)
    run_stage("corrupt", "--params", params, "--data", tmp_path / "d.pt", "--noise", "0.5",
              "--out", tmp_path / "c.parquet", check=True)
    return params


def train_args(params, tmp_path, out, optimizer="sgd", clip=0, ckpt=None):
    return ["--params", params, "--data", tmp_path / "d.pt", "--labels", tmp_path / "c.parquet",
            "--noise", "0.5", "--optimizer", optimizer, "--clip", str(clip), "--seed", "0",
            "--out", tmp_path / out, "--checkpoint", ckpt or tmp_path / f"{out}.ckpt"]


def test_same_params_same_bytes(tmp_path):
    params = prepare_tiny(tmp_path)
    for out in ("a", "b"):  # two new interpreters: a fork's hash seed would be its server's
        run_stage("train", *train_args(params, tmp_path, out), check=True, fresh=True)
    a = (tmp_path / "a" / "metrics.parquet").read_bytes()
    assert a == (tmp_path / "b" / "metrics.parquet").read_bytes()
    assert (tmp_path / "a" / "run.json").read_text() == (tmp_path / "b" / "run.json").read_text()
    assert not (tmp_path / "a.ckpt").exists()  # a finished run leaves no checkpoint behind


PROBES = dict(coherence={"train_sample": 50, "test_sample": 50}, shares={"steps": 400, "nulls": 2})


@pytest.mark.parametrize("optimizer,clip,probes", [("sgd", 0, False), ("rm3", 0, False), ("sgd", 0, True)])
def test_sigkill_then_resume_matches_unbroken_run(tmp_path, optimizer, clip, probes):
    params = prepare_tiny(tmp_path, steps=1200, checkpoint_every=100, batch_size=30, eval_per_decade=9,
                          **(PROBES if probes else {}))
    run_stage("train", *train_args(params, tmp_path, "whole", optimizer, clip), check=True)

    ckpt = tmp_path / "killed.ckpt"
    cmd = [PY, str(ROOT / "stages" / "train.py"), *map(str, train_args(params, tmp_path, "killed", optimizer, clip, ckpt))]
    kill_after(cmd, ckpt, linger=0.3)  # let it run past the checkpoint before the kill
    assert not (tmp_path / "killed" / "metrics.parquet").exists()
    saved = torch.load(ckpt, weights_only=False)["step"]
    assert 0 < saved < 1200

    resumed = run_stage("train", *train_args(params, tmp_path, "killed", optimizer, clip, ckpt), check=True)
    assert f"resumed from {ckpt} at step" in resumed.stderr
    assert (tmp_path / "killed" / "metrics.parquet").read_bytes() == (tmp_path / "whole" / "metrics.parquet").read_bytes()


def test_divergence_is_marked_and_outputs_written(tmp_path):
    params = prepare_tiny(tmp_path, lr=1e30)
    proc = run_stage("train", *train_args(params, tmp_path, "boom"))
    assert proc.returncode == 0, proc.stderr
    meta = pd.read_json(tmp_path / "boom" / "run.json", typ="series")
    assert meta["status"] == "diverged" and meta["steps_done"] < 60
    text = (tmp_path / "boom" / "run.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"run.json is not strict JSON: {c}"))
    m = pd.read_parquet(tmp_path / "boom" / "metrics.parquet")
    assert (m["step"] == 0).any()


def test_run_learns_pristine_before_corrupt(tmp_path):
    """CG §2.3 on a real (tiny) run: after a few steps pristine accuracy leads corrupt accuracy
    by a wide margin; by the end the corrupt labels are being memorised too."""
    params = prepare_tiny(tmp_path, steps=1500, lr=0.2, eval_per_decade=9)
    run_stage("train", *train_args(params, tmp_path, "r"), check=True)
    m = pd.read_parquet(tmp_path / "r" / "metrics.parquet")
    acc = m[m["metric"] == "accuracy"].pivot_table(index="step", columns="split", values="value")
    assert acc.loc[50, "pristine"] - acc.loc[50, "corrupt"] > 0.3
    assert acc.loc[1500, "corrupt"] > acc.loc[50, "corrupt"] + 0.2
    assert set(m["experiment"]) == {"E1", "E8"} and config.run_name("sgd", 0, "0.5", 0) == m["run"].iloc[0]


def test_probes_rows_and_noise_zero(tmp_path):
    """E2/E7 rows land in the run table; at ε = 0 there is no corrupt group: no E2 rows (CG §2.4
    tracks the shares at 0 < ε < 1 only) and no NaN row."""
    params = write_params(tmp_path / "p.yaml", tiny_params(**PROBES))
    run_stage("prepare", "--params", params, "--out", tmp_path / "d.pt", check=True)
    for noise in ("0.0", "0.5"):
        run_stage("corrupt", "--params", params, "--data", tmp_path / "d.pt", "--noise", noise,
                  "--out", tmp_path / f"c{noise}.parquet", check=True)
        proc = run_stage("train", "--params", params, "--data", tmp_path / "d.pt", "--labels",
                         tmp_path / f"c{noise}.parquet", "--noise", noise, "--optimizer", "sgd",
                         "--seed", "0", "--out", tmp_path / noise, check=True)
        m = pd.read_parquet(tmp_path / noise / "metrics.parquet")
        assert not m["value"].isna().any()
        e7 = m[m["experiment"] == "E7"]
        assert set(e7["metric"]) == {"m_coherence", "alpha", "m_coherence_label"} and set(e7["split"]) == {"train", "test"}
        per = e7.groupby("metric")[["split", "layer", "step"]].apply(lambda g: sorted(map(tuple, g.to_numpy())))
        assert per["m_coherence_label"] == per["m_coherence"] == per["alpha"]  # measured alike
        assert {"all", "1", "3"} <= set(e7["layer"])  # whole model and both Linear layers
        assert e7["step"].nunique() == m.loc[m["experiment"] == "E1", "step"].nunique()
        e2 = m[m["experiment"] == "E2"]
        if noise == "0.0":
            assert e2.empty and "loss-reduction shares" not in proc.stderr
        else:
            assert sorted(e2["step"].unique()) == list(range(61))  # every step of the 60-step run, and the end
            assert set(e2["null"]) == {-1, 0, 1}
            f = e2.pivot_table(index=["step", "null"], columns="metric", values="value")
            assert ((f["f_pristine"] + f["f_corrupt"] - 1).abs() < 1e-9).all()


def test_checkpoint_of_other_labels_is_not_resumed(tmp_path):
    """Kill a run, change corrupt.seed (a new label table at the same path), rerun: the old
    checkpoint must not be resumed; the run starts afresh, says why, and equals a clean run."""
    params = prepare_tiny(tmp_path, steps=3000, checkpoint_every=100, batch_size=30, **PROBES)
    ckpt = tmp_path / "stale.ckpt"
    kill_after([PY, str(ROOT / "stages" / "train.py"),
                           *map(str, train_args(params, tmp_path, "stale", ckpt=ckpt))], ckpt)
    p = tiny_params(steps=3000, checkpoint_every=100, batch_size=30, **PROBES)
    p["corrupt"]["seed"] = 1
    params = write_params(tmp_path / "p.yaml", p)
    run_stage("corrupt", "--params", params, "--data", tmp_path / "d.pt", "--noise", "0.5",
              "--out", tmp_path / "c.parquet", check=True)
    rerun = run_stage("train", *train_args(params, tmp_path, "stale", ckpt=ckpt), check=True)
    assert "resumed" not in rerun.stderr
    assert f"starting afresh: checkpoint {ckpt} was made with other input labels" in rerun.stderr
    run_stage("train", *train_args(params, tmp_path, "fresh"), check=True)
    assert (tmp_path / "stale" / "metrics.parquet").read_bytes() == (tmp_path / "fresh" / "metrics.parquet").read_bytes()


def test_failures_land_in_the_log_file(tmp_path):
    """A stage's error (one-line failure or a crash's traceback) is in its log file, not only on stderr."""
    params = prepare_tiny(tmp_path)
    log = tmp_path / "logs" / "t.log"
    (tmp_path / "c.parquet").write_bytes(b"PAR1 not really")  # a damaged label table: a crash today
    proc = run_stage("train", *train_args(params, tmp_path, "x"), "--log", log)
    assert proc.returncode != 0
    text = log.read_text()
    assert "Traceback" in text or "error:" in text
    assert text.strip().splitlines()[-1] in proc.stderr
    bad = run_stage("train", *train_args(params, tmp_path, "y"), "--labels", tmp_path / "none.parquet",
                    "--log", log)
    assert bad.returncode != 0 and "none.parquet" in log.read_text()


@pytest.mark.parametrize("damage", ["labels", "data"])
def test_truncated_inputs_are_one_line_errors_naming_the_file(tmp_path, damage):
    params = prepare_tiny(tmp_path)
    path = tmp_path / ("c.parquet" if damage == "labels" else "d.pt")
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    proc = run_stage("train", *train_args(params, tmp_path, "x"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {path}: ") and "rerun the" in last
    assert "checkpoint" not in last and not (tmp_path / "x").exists()


def _bn_run(bn_priming):
    """A 45-step run of a tiny BatchNorm CNN on made-up 8×8 images, in-process."""
    from cglib.train import train_run
    p = config.validate(tiny_params(steps=45, batch_size=15, eval_per_decade=9, bn_priming=bn_priming,
                                    coherence={"train_sample": 30, "test_sample": 20, "chunk_size": 7}))
    p["model"] = {"name": "cnn", "channels": [4, 6]}  # the schema keeps cnn off synthetic data
    g = torch.Generator().manual_seed(0)
    data = {"x_train": torch.randn(90, 1, 8, 8, generator=g) + 0.5, "y_train": torch.randint(0, 3, (90,), generator=g),
            "x_test": torch.randn(40, 1, 8, 8, generator=g), "y_test": torch.randint(0, 3, (40,), generator=g),
            "input_shape": (1, 8, 8), "num_classes": 3}
    spec = dict(run="bn", optimizer="sgd", clip=0, noise=0.0, seed=0, subset="full")
    logs = []
    out = train_run(p, data, data["y_train"], torch.zeros(90, dtype=torch.bool), spec, log=logs.append,
                    progress=False)
    return p, data, pd.DataFrame(out["rows"]), logs


def test_bn_priming_mc_in_training_is_the_documented_procedure():
    """E7 at step 0 of a run = m-coherence of the model built as the run builds it, primed by
    bn_prime_steps training-mode passes on minibatches of its own seed; the training minibatches
    (so the weights, which BatchNorm in training mode does not tie to the running statistics)
    are those of an unprimed run."""
    from cglib.coherence import model_m_coherence
    from cglib.measuring import prime_batchnorm_mc
    from cglib.data import fixed_sample
    from cglib.models import build_model
    from cglib.train import BN_PRIME_SEED_OFFSET
    p, data, rows, logs = _bn_run("mc")
    assert any("primed by 40 no-op steps" in line for line in logs)
    torch.manual_seed(0)
    model = build_model(p["model"], (1, 8, 8), 3)
    cache = {}
    prime_batchnorm_mc(model, (data["x_train"][batch_indices(k, 90, 15, BN_PRIME_SEED_OFFSET, cache)] for k in range(40)))
    for split, x, y, seed in (("train", data["x_train"], data["y_train"], 0), ("test", data["x_test"], data["y_test"], 1)):
        idx = fixed_sample(len(x), 30 if split == "train" else 20, seed)
        want = model_m_coherence(model, x[idx], y[idx], chunk_size=7)["all"]
        got = rows[(rows.metric == "m_coherence") & (rows.split == split) & (rows.layer == "all") & (rows.step == 0)]
        assert got["value"].tolist() == [pytest.approx(want, rel=1e-9)], split
    _, _, unprimed, logs = _bn_run("none")
    assert not any("primed" in line for line in logs)
    e7 = lambda r: r[(r.metric == "m_coherence") & (r.step == 0)]["value"].to_numpy()  # noqa: E731
    assert not (e7(rows) == e7(unprimed)).all()  # the statistics differ at step 0 ...
    loss = lambda r: r[(r.metric == "loss") & (r.split == "train")]  # noqa: E731
    assert len(loss(rows)) == len(loss(unprimed)) > 5


def test_mc_run_trains_the_mc_section_model_and_steps(tmp_path):
    """--mc: the mc section's model, steps, lr and momentum, under its own run name; the study's
    own model and steps everywhere else. (An MLP here: the synthetic data are not images.)"""
    p = tiny_params(optimizers=[{"name": "sgd", "clip": 0}, {"name": "rm3", "clip": 0}])
    p["mc"] = {"model": {"name": "mlp", "hidden": [7]}, "noise": [0.5], "seeds": [0], "lr": 0.02,
               "momentum": 0.9, "steps": 40}
    # replicates of another optimizer than the run's must not trip the stage's own check of its run
    p["replicates"] = {"cells": [{"name": "rm3", "clip": 0, "noise": 0.5}], "seeds": [1]}
    params = write_params(tmp_path / "p.yaml", p)
    run_stage("prepare", "--params", params, "--out", tmp_path / "d.pt", check=True)
    run_stage("corrupt", "--params", params, "--data", tmp_path / "d.pt", "--noise", "0.5",
              "--out", tmp_path / "c.parquet", check=True)
    run_stage("train", *train_args(params, tmp_path, "mc"), "--mc", check=True)
    run_stage("train", *train_args(params, tmp_path, "plain"), check=True)
    mc, plain = (pd.read_parquet(tmp_path / d / "metrics.parquet") for d in ("mc", "plain"))
    assert set(mc["model"]) == {"mlp-7"} and set(plain["model"]) == {"mlp-32"}
    assert set(mc["run"]) == {"mc_sgd_c0_noise0.5_seed0"} and set(plain["run"]) == {"sgd_c0_noise0.5_seed0"}
    assert mc["step"].max() == 40 and plain["step"].max() == 60
    meta = json.loads((tmp_path / "mc" / "run.json").read_text())
    assert meta["conditions"] == "mc" and meta["steps_done"] == 40
    bad = run_stage("train", *train_args(params, tmp_path, "bad", optimizer="rm3"), "--mc")
    assert bad.returncode == 2 and "--mc runs are plain SGD" in bad.stderr


def test_mc_n_train_trains_on_the_first_examples_and_a_change_starts_afresh(tmp_path):
    """mc.n_train: an mc run trains on the first n examples (their labels and corrupt flags from
    the label table), E7's training sample is drawn from them, and a checkpoint made with another
    n_train is not resumed. (An MLP: the synthetic data are not images.)"""
    from cglib.coherence import model_coherence_stats
    from cglib.data import load_prepared
    from cglib.models import build_model

    def params(n_train):
        p = tiny_params(steps=600, coherence={"train_sample": 150, "test_sample": 20})
        p["mc"] = {"model": {"name": "mlp", "hidden": [7]}, "noise": [0.5], "seeds": [0], "steps": 600,
                   "n_train": n_train}
        return write_params(tmp_path / f"p{n_train}.yaml", p)

    run_stage("prepare", "--params", params(60), "--out", tmp_path / "d.pt", check=True)
    run_stage("corrupt", "--params", params(60), "--data", tmp_path / "d.pt", "--noise", "0.5",
              "--out", tmp_path / "c.parquet", check=True)
    # kill a run on 60 examples after a checkpoint, then rerun on the same checkpoint with 80
    ckpt = tmp_path / "stale.ckpt"
    kill_after([PY, str(ROOT / "stages" / "train.py"), *map(str, train_args(params(60), tmp_path, "run", ckpt=ckpt)),
                "--mc"], ckpt)
    assert torch.load(ckpt, weights_only=False)["step"] > 0
    rerun = run_stage("train", *train_args(params(80), tmp_path, "run", ckpt=ckpt), "--mc", check=True)
    assert "resumed" not in rerun.stderr
    assert f"starting afresh: checkpoint {ckpt} was made with other params.data" in rerun.stderr

    ex = pd.read_parquet(tmp_path / "run" / "examples.parquet")
    lab = pd.read_parquet(tmp_path / "c.parquet").iloc[:80]
    assert ex["example"].tolist() == list(range(80))
    assert (ex["label"].to_numpy() == lab["label"].to_numpy()).all()
    assert (ex["corrupt"].to_numpy() == lab["corrupt"].to_numpy()).all() and 0 < lab["corrupt"].sum() < 80
    # E7 at step 0 (no update yet): the 150-example train sample is capped to exactly those 80
    m = pd.read_parquet(tmp_path / "run" / "metrics.parquet")
    e7 = m[(m["metric"] == "m_coherence") & (m["step"] == 0) & (m["split"] == "train") & (m["layer"] == "all")]
    data = load_prepared(tmp_path / "d.pt")
    torch.manual_seed(0)
    model = build_model({"name": "mlp", "hidden": [7]}, data["input_shape"], data["num_classes"])
    want = model_coherence_stats(model, data["x_train"][:80], torch.tensor(lab["label"].to_numpy()))["all"]
    assert e7["value"].item() == pytest.approx(want.m_coherence, rel=1e-5)


def test_mc_n_train_beyond_the_training_set_is_a_params_error(tmp_path):
    p = tiny_params()
    p["mc"] = {"model": {"name": "mlp", "hidden": [7]}, "noise": [0.5], "seeds": [0], "steps": 40, "n_train": 300}
    params = write_params(tmp_path / "p.yaml", p)
    (tmp_path / "d.pt").write_bytes(b"")  # never read: the params are refused first
    proc = run_stage("train", *train_args(params, tmp_path, "out"), "--mc")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith("mc.n_train: 300 exceeds data.n_train = 200")
    assert not (tmp_path / "out").exists()


def test_shares_are_tracked_only_where_both_groups_mean_something():
    """CG §2.4 analyses 25, 50 and 75 % noise: no shares probe at ε = 0 (no corrupt group) or
    ε = 1 (every label permuted), one at 0 < ε < 1, and one when the level is not given."""
    from cglib.probes import make_probes

    p = config.validate(tiny_params(**PROBES))
    g = torch.Generator().manual_seed(0)
    data = {"x_train": torch.randn(30, 4, generator=g), "x_test": torch.randn(10, 4, generator=g),
            "y_test": torch.randint(0, 3, (10,), generator=g), "num_classes": 3}
    labels, corrupt = torch.randint(0, 3, (30,), generator=g), torch.arange(30) % 2 == 0
    have = {noise: "shares" in make_probes(p, "sgd", data, labels, corrupt, log=lambda *_: None, noise=noise)
            for noise in (0.0, 0.25, 0.5, 0.999, 1.0, None)}
    assert have == {0.0: False, 0.25: True, 0.5: True, 0.999: True, 1.0: False, None: True}
