"""Writing outputs: atomic, strict JSON, a full disk as one line naming the file."""
import errno
import json
import math
import subprocess

import pandas as pd
import pytest
import torch

from cglib import tables


@pytest.fixture
def tiny_fs(tmp_path):
    """A 256 KiB tmpfs where the test may mount one (root), else None."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        yield None
        return
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)  # lazy: a failed writer may still hold a handle


def test_full_disk_is_one_line_naming_the_file_and_leaves_no_temp(tiny_fs, tmp_path, monkeypatch):
    if tiny_fs is None:  # no mount here: simulate what a full disk does to torch.save
        def full(obj, f):
            raise RuntimeError("basic_ios::clear: iostream error")
        monkeypatch.setattr(torch, "save", full)
        monkeypatch.setattr(tables.shutil, "disk_usage", lambda p: type("U", (), {"free": 0})())
        where = tmp_path
    else:
        where = tiny_fs
    target = where / "ckpt.pt"
    with pytest.raises(tables.WriteError) as err:
        tables.save_torch({"w": torch.zeros(1_000_000)}, target)
    msg = str(err.value)
    assert msg.startswith(f"{target}: could not be written: no space left") and "\n" not in msg
    assert not target.exists() and list(where.iterdir()) == []  # no *.tmp left behind


def test_enospc_from_any_writer_names_the_file(tmp_path, monkeypatch):
    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(pd.DataFrame, "to_parquet", full)
    with pytest.raises(tables.WriteError, match=r"t\.parquet: could not be written: no space left"):
        tables.write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "t.parquet")
    assert list(tmp_path.iterdir()) == []


def test_json_is_strict(tmp_path):
    tables.write_json({"a": math.nan, "b": [math.inf, 1.5], "c": {"d": -math.inf}}, tmp_path / "x.json")
    text = (tmp_path / "x.json").read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c)) == {"a": None, "b": [None, 1.5], "c": {"d": None}}


def test_damaged_parquet_is_one_line_naming_file_and_stage(tmp_path):
    path = tmp_path / "t.parquet"
    tables.write_parquet(pd.DataFrame({"a": range(100)}), path)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(tables.DamagedFile) as err:
        tables.read_parquet(path, "the corrupt stage")
    assert str(err.value).startswith(f"{path}: damaged") and str(err.value).endswith("rerun the corrupt stage")
    with pytest.raises(tables.DamagedFile, match="not found; run the corrupt stage first"):
        tables.read_parquet(tmp_path / "none.parquet", "the corrupt stage")


def test_damage_is_judged_by_the_envelope_of_each_kind(tmp_path):
    """Intact files pass; each kind cut short (as a kill or a full disk leaves it) is named."""
    pq, pt, js = tmp_path / "t.parquet", tmp_path / "d.pt", tmp_path / "r.json"
    tables.write_parquet(pd.DataFrame({"a": range(50)}), pq)
    tables.save_torch({"x": torch.arange(1000)}, pt)
    tables.write_json({"a": 1}, js)
    assert [tables.damage(p) for p in (pq, pt, js, tmp_path / "missing.parquet")] == [None] * 4
    for path, why in ((pq, "not a complete Parquet file"), (pt, "not a complete torch file"), (js, "not valid JSON")):
        whole = path.read_bytes()
        for cut in (len(whole) - 2, len(whole) // 2, 5, 0):  # lost its last bytes, half, nearly all
            path.write_bytes(whole[:cut])
            assert tables.damage(path) == why, (path, cut)
    pq.write_bytes(b"PAR1")  # head and tail but no table
    assert tables.damage(pq) == "not a complete Parquet file"


def test_share_crossing_needs_hold_steps_below_and_not_a_dip_at_the_end():
    def rows(values, null=-1):
        return [dict(run="r", experiment="E2", metric="f_pristine", null=null, step=s, value=v)
                for s, v in enumerate(values)]
    m = pd.DataFrame(rows([.9, .8, .4, .7, .45, .4, .3, .2, .1, .6]) + rows([.9, .8, .7, .6, .6, .6, .6, .6, .6, .4], 0))
    out = tables.share_crossings(m, hold=3)["r"]
    assert out["real"] == {"f_pristine_at_0": 0.9, "crossing_step": 4}  # one dip at step 2 is not a crossing
    assert out["null0"]["crossing_step"] is None  # below only at the last step


def test_designation_sizes_count_pristine_and_corrupt_examples():
    ex = pd.DataFrame({"example": range(5), "corrupt": [True, False, False, True, False]})
    assert tables.designation_sizes(ex) == {"n_pristine": 3, "n_corrupt": 2}
    assert tables.designation_sizes(ex.assign(corrupt=False)) == {"n_pristine": 5, "n_corrupt": 0}


def test_model_label_names_the_cnn_head():
    assert tables.model_label({"name": "cnn", "channels": [4, 8]}) == "cnn-4x8"
    assert tables.model_label({"name": "cnn", "channels": [4, 8], "pool": "avg"}) == "cnn-4x8"
    assert tables.model_label({"name": "cnn", "channels": [4, 8], "pool": "none"}) == "cnn-4x8-flat"
    assert tables.model_label({"name": "mlp", "hidden": [256]}) == "mlp-256"


# ---------------------------------------------------------------------------- exact tables

def test_model_label_of_every_kind():
    assert tables.model_label({"name": "mlp", "hidden": [32, 16]}) == "mlp-32x16"
    assert tables.model_label({"name": "resnet18"}) == "resnet18"


def test_run_constants_keep_clip_only_for_winsorized():
    params = {"data": {"dataset": "synthetic"}, "model": {"name": "mlp", "hidden": [8]}}
    w = dict(run="w", optimizer="winsorized", clip=2, noise="0.25", seed="3")
    assert tables.run_constants(params, w) == dict(run="w", dataset="synthetic", model="mlp-8",
                                                   optimizer="winsorized", clip=2, noise=0.25, seed=3,
                                                   subset="full")
    s = dict(run="s", optimizer="sgd", clip=2, noise=0, seed=0, subset="e-train")
    c = tables.run_constants(params, s)
    assert c["clip"] is None and c["subset"] == "e-train" and type(c["noise"]) is float


def test_metrics_frame_fills_defaults_in_design_order():
    rows = [dict(experiment="E1", step=0, epoch=0.0, split="train", metric="accuracy", value=0.5),
            dict(experiment="E7", step=1, epoch=0.1, split="train", metric="m_coherence", value=2.0,
                 layer="fc1", null=0)]
    const = dict(run="r", dataset="d", model="m", optimizer="sgd", clip=None, noise=0.5, seed=1, subset="full")
    df = tables.metrics_frame(rows, const)
    assert list(df.columns) == list(tables.METRIC_COLUMNS)
    assert {c: str(t) for c, t in df.dtypes.items()} == tables.METRIC_COLUMNS
    assert df["layer"].tolist() == ["all", "fc1"] and df["null"].tolist() == [-1, 0]
    assert df["subset"].tolist() == ["full", "full"] and df["clip"].isna().all()
    assert df["value"].tolist() == [0.5, 2.0] and df["run"].tolist() == ["r", "r"]
    ex = tables.examples_frame(pd.DataFrame({"example": [0, 1], "label_clean": [3, 3], "label": [3, 4],
                                             "corrupt": [False, True], "aum": [0.5, -1.0]}), "r")
    assert list(ex.columns) == list(tables.EXAMPLE_COLUMNS)
    assert {c: str(t) for c, t in ex.dtypes.items()} == tables.EXAMPLE_COLUMNS
    assert ex["run"].tolist() == ["r", "r"] and ex["aum"].tolist() == [0.5, -1.0] and ex["label"].tolist() == [3, 4]
    assert ex["grand"].isna().all() and ex["difficulty"].isna().all()


def test_parquet_envelope_boundary_of_twelve_bytes(tmp_path):
    p = tmp_path / "t.parquet"
    p.write_bytes(b"PAR1" + b"xxxx" + b"PAR1")  # 12 bytes: the smallest envelope
    assert tables.damage(p) is None
    p.write_bytes(b"PAR1" + b"xxx" + b"PAR1")  # 11
    assert tables.damage(p) == "not a complete Parquet file"
    p.write_bytes(b"PAR1" + b"xxxx" + b"PAR2")
    assert tables.damage(p) == "not a complete Parquet file"
    j = tmp_path / "r.json"
    j.write_bytes(b'"\xff\xfe"')  # not UTF-8
    assert tables.damage(j) == "not valid JSON"
    (tmp_path / "a.txt").write_text("anything")
    assert tables.damage(tmp_path / "a.txt") is None
    assert tables.damage(tmp_path) is None  # a folder is not a damaged file


def _fail_with(err):
    def write(tmp):
        tmp.write_text("half")
        raise err
    return write


@pytest.mark.parametrize("free,full,kib", [((1 << 20) - 1, True, 1023), (5 * 1024 + 1, True, 5), (1 << 20, False, None)])
def test_nearly_full_disk_counts_as_full_below_one_mib(tmp_path, monkeypatch, free, full, kib):
    monkeypatch.setattr(tables.shutil, "disk_usage", lambda p: type("U", (), {"free": free})())
    target = tmp_path / "x.bin"
    with pytest.raises(tables.WriteError) as err:
        tables._atomic(target, _fail_with(OSError("first line\nsecond")))
    want = (f"no space left on the device ({kib} KiB free); free some and rerun" if full else "first line")
    assert str(err.value) == f"{target}: could not be written: {want}"
    assert list(tmp_path.iterdir()) == []


def test_write_errors_name_the_type_when_silent_and_other_errors_pass(tmp_path, monkeypatch):
    monkeypatch.setattr(tables.shutil, "disk_usage", lambda p: type("U", (), {"free": 1 << 30})())
    with pytest.raises(tables.WriteError, match=r"could not be written: RuntimeError$"):
        tables._atomic(tmp_path / "x", _fail_with(RuntimeError()))
    with pytest.raises(ValueError, match="^boom$"):
        tables._atomic(tmp_path / "y", _fail_with(ValueError("boom")))
    assert list(tmp_path.iterdir()) == []  # no temp left behind either way
    tables.write_text("hello", tmp_path / "sub" / "z.txt")
    assert (tmp_path / "sub" / "z.txt").read_text() == "hello" and len(list((tmp_path / "sub").iterdir())) == 1


def test_file_digest_is_sha256_over_several_blocks(tmp_path):
    import hashlib
    blob = bytes(range(256)) * 5000  # > 1 MiB: more than one block
    (tmp_path / "b").write_bytes(blob)
    assert tables.file_digest(tmp_path / "b") == hashlib.sha256(blob).hexdigest()


def test_strict_json_keeps_finite_values_and_turns_tuples_into_lists(tmp_path):
    tables.write_json({"t": (1, math.nan), "f": 2.5, "i": 3, "s": "x"}, tmp_path / "x.json")
    text = (tmp_path / "x.json").read_text()
    assert json.loads(text) == {"t": [1, None], "f": 2.5, "i": 3, "s": "x"}
    assert text.endswith("}\n") and text.index('"f"') < text.index('"i"') < text.index('"s"')


def M(**kw):
    """One metric row with the defaults a run writes."""
    row = dict(run="r", experiment="E1", dataset="d", model="m", optimizer="sgd", clip=None, noise=0.0,
               seed=0, subset="full", step=0, epoch=0.0, split="train", metric="accuracy", layer="all",
               null=-1, value=0.0)
    row.update(kw)
    return row


def frame(rows):
    return pd.DataFrame(rows, columns=list(tables.METRIC_COLUMNS)).astype(tables.METRIC_COLUMNS)


def test_final_values_take_the_last_step_of_e1_whole_model_real_rows():
    df = frame([M(step=0, value=0.1), M(step=10, value=0.9), M(step=10, split="test", metric="loss", value=1.5),
                M(step=10, split="train", metric="overfit", value=0.2),
                M(step=10, split="test", metric="accuracy", layer="fc1", value=7.0),
                M(step=10, split="pristine", null=0, value=8.0),
                M(step=10, split="corrupt", metric="m_coherence", value=9.0),
                M(step=20, experiment="E5", split="difficulty=0", value=5.0)])
    assert tables.final_values(df) == {"train_accuracy": 0.9, "test_loss": 1.5, "train_overfit": 0.2}
    assert tables.final_values(frame([M(experiment="E5")])) == {}
    e6 = tables.final_values(frame([M(experiment="E6", split="e-test", step=3, value=0.4)]))
    assert e6 == {"e-test_accuracy": 0.4}


def test_run_row_is_the_whole_configuration_and_final_metrics():
    params = {"study": "s", "data": {"dataset": "synthetic", "n_train": 200},
              "model": {"name": "mlp", "hidden": [32]},
              "train": {"base": "sgd", "lr": 1, "momentum": 0, "lr_schedule": "constant", "batch_size": 20,
                        "steps": 60},
              "difficulty": {"subset_steps": 7}}
    spec = dict(run="r", optimizer="sgd", clip=0, noise=0.5, seed=1)
    row = tables.run_row(params, spec, "done", 60.0, {"train_accuracy": 0.5})
    assert row == dict(run="r", dataset="synthetic", model="mlp-32", optimizer="sgd", clip=None, noise=0.5,
                       seed=1, subset="full", study="s", status="done", steps_done=60, n_train=200,
                       base="sgd", lr=1.0, momentum=0.0, lr_schedule="constant", batch_size=20, steps=60,
                       hidden="[32]", train_accuracy=0.5)
    assert type(row["lr"]) is float and type(row["momentum"]) is float and type(row["steps_done"]) is int
    assert tables.run_row(params, {**spec, "subset": "h-train"}, "done", 7, {})["steps"] == 7


def test_summary_rounds_final_numbers_and_adds_digests_only_when_measured():
    runs = pd.DataFrame([dict(run="a", status="done", train_accuracy=0.12345678, test_loss=1.0,
                              train_overfit=math.nan, n_train=200),
                         dict(run="b", status="failed", train_accuracy=0.5, test_loss=2.0, train_overfit=0.25,
                              n_train=200)])
    m = frame([M(run="a")])
    out = tables.summary({"study": "s"}, runs, m)
    assert out == {"study": "s", "runs": {"a": {"status": "done", "train_accuracy": 0.123457, "test_loss": 1.0},
                                          "b": {"status": "failed", "train_accuracy": 0.5, "test_loss": 2.0,
                                                "train_overfit": 0.25}}}
    m = frame([M(run="a"), M(run="a", experiment="E7", metric="m_coherence", value=3.0),
               M(run="a", experiment="E2", metric="f_pristine", value=0.7)])
    out = tables.summary({"study": "s"}, runs, m)
    assert out["m_coherence_peaks"] == {"a": {"train": {"all": {"peak": 3.0, "step": 0}}}}
    assert out["share_crossings"] == {"a": {"real": {"f_pristine_at_0": 0.7, "crossing_step": None}}}


def test_plot_tables_are_step_by_run_accuracy_of_each_split():
    m = frame([M(run="b", step=0, value=0.1), M(run="a", step=0, value=0.2), M(run="a", step=5, value=0.3),
               M(run="a", step=5, split="test", value=0.4), M(run="a", step=5, layer="fc", value=9.0),
               M(run="a", step=5, null=0, value=9.0), M(run="a", step=5, metric="loss", value=9.0)])
    out = tables.plot_tables(m)
    assert list(out) == ["train_accuracy", "test_accuracy", "pristine_accuracy", "corrupt_accuracy"]
    train = out["train_accuracy"]
    assert list(train.columns) == ["step", "a", "b"] and train["step"].tolist() == [0, 5]
    assert train["a"].tolist() == [0.2, 0.3] and train["b"].iloc[0] == 0.1 and math.isnan(train["b"].iloc[1])
    assert out["test_accuracy"].to_dict("list") == {"step": [5], "a": [0.4]}
    assert list(out["corrupt_accuracy"].columns) == ["step"] and out["corrupt_accuracy"].empty


def test_coherence_peaks_per_run_split_layer_skip_all_nan():
    C = lambda **kw: M(experiment="E7", metric="m_coherence", **kw)  # noqa: E731
    m = frame([C(step=0, value=1.5), C(step=5, value=2.123456), C(step=9, value=1.9),
               C(step=5, layer="fc1", value=4.0), C(step=7, layer="fc1", value=math.nan),
               C(step=5, split="test", layer="fc2", value=math.nan),
               C(run="q", step=3, split="corrupt", value=1.25),
               M(experiment="E1", metric="m_coherence", value=99.0),
               M(experiment="E7", metric="alpha", value=99.0)])
    assert tables.coherence_peaks(m) == {
        "r": {"train": {"all": {"peak": 2.1235, "step": 5}, "fc1": {"peak": 4.0, "step": 5}}},
        "q": {"corrupt": {"all": {"peak": 1.25, "step": 3}}}}


def test_share_crossing_at_exactly_one_half_is_not_below_and_default_hold_is_five():
    def rows(values, **kw):
        return [M(experiment="E2", metric="f_pristine", step=s, value=v, **kw) for s, v in enumerate(values)]
    assert tables.CROSSING_HOLD == 5
    m = frame(rows([0.9, 0.5, 0.4, 0.4, 0.4, 0.4, 0.4]) + rows([0.6, 0.4, 0.4, 0.4, 0.4, 0.4, 0.9], null=1)
              + [M(experiment="E1", metric="f_pristine", run="z", value=0.1)])
    out = tables.share_crossings(m)
    assert out == {"r": {"real": {"f_pristine_at_0": 0.9, "crossing_step": 2},  # 0.5 is not below
                         "null1": {"f_pristine_at_0": 0.6, "crossing_step": 1}}}
    assert tables.share_crossings(m, hold=6)["r"] == {"real": {"f_pristine_at_0": 0.9, "crossing_step": None},
                                                      "null1": {"f_pristine_at_0": 0.6, "crossing_step": None}}
    # unsorted rows: step order, not row order
    shuffled = frame(list(reversed(rows([0.7, 0.3, 0.3]))))
    assert tables.share_crossings(shuffled, hold=2)["r"]["real"] == {"f_pristine_at_0": 0.7, "crossing_step": 1}


def test_windowed_shares_by_hand():
    def rows(run, null, ip, ic, steps=(20, 0, 10)):
        order = sorted(range(len(steps)), key=lambda j: steps[j])  # rows not in step order
        return ([M(run=run, experiment="E2", metric="i_pristine", null=null, step=steps[j], value=ip[order.index(j)])
                 for j in range(len(steps))]
                + [M(run=run, experiment="E2", metric="i_corrupt", null=null, step=steps[j], value=ic[order.index(j)])
                   for j in range(len(steps))])
    # run r, |p| = 1, |c| = 4: |p|·i^p = 1, 2, 3 and |c|·i^c = 1, 1, 4 at steps 0, 10, 20
    e2 = frame(rows("r", -1, [1, 2, 3], [0.25, 0.25, 1.0])
               # null 0: sums 1, 1, 2 and 0, −1, 0: the first window's sum is 0 → NaN
               + rows("r", 0, [1, 1, 2], [0, -0.25, 0])
               + rows("empty", -1, [1, 2, 3], [1, 1, 1])  # no corrupt examples: left out
               + rows("unknown", -1, [1, 2, 3], [1, 1, 1])  # not in runs: left out
               + [M(run="half", experiment="E2", metric="i_pristine", value=1.0)]  # no i_corrupt: left out
               + [M(run="r", experiment="E1", metric="i_pristine", null=5, value=1.0)])
    runs = pd.DataFrame({"run": ["r", "r", "empty", "half"], "n_pristine": [1, 1, 3, 2], "n_corrupt": [4, 4, 0, 2]})
    w = tables.windowed_shares(e2, runs, 2)
    assert list(w.columns) == tables.WINDOWED_COLUMNS
    got = w.to_dict("records")
    assert [{k: v for k, v in r.items() if not k.startswith("f_")} for r in got] == [
        dict(run="r", null=-1, window=0, step_first=0, step_last=10),
        dict(run="r", null=-1, window=1, step_first=20, step_last=20),
        dict(run="r", null=0, window=0, step_first=0, step_last=10),
        dict(run="r", null=0, window=1, step_first=20, step_last=20)]
    assert [r["f_pristine"] for r in got[:2]] == pytest.approx([2 / 3, 0.25], abs=1e-12)
    assert [r["f_corrupt"] for r in got[:2]] == pytest.approx([1 / 3, 0.75], abs=1e-12)
    assert math.isnan(got[2]["f_pristine"]) and math.isnan(got[2]["f_corrupt"])
    assert (got[3]["f_pristine"], got[3]["f_corrupt"]) == (0.5, 0.5)
    one = tables.windowed_shares(e2, runs, 1)
    assert one[one["null"] == -1]["f_pristine"].tolist() == pytest.approx([0.5, 1.0, 0.25], abs=1e-12)
    assert one[one["null"] == -1]["step_last"].tolist() == [0, 10, 20]
    with pytest.raises(ValueError, match="window must be ≥ 1, got 0"):
        tables.windowed_shares(e2, runs, 0)
    for no in (runs.drop(columns="n_corrupt"), runs.drop(columns="n_pristine")):
        empty = tables.windowed_shares(e2, no, 2)
        assert empty.empty and list(empty.columns) == tables.WINDOWED_COLUMNS
    assert tables.windowed_shares(e2[e2["experiment"] == "E1"], runs, 2).empty


def test_accuracy_by_difficulty_takes_each_runs_last_step():
    A = dict(run="a", optimizer="sgd", noise=0.5, seed=1)
    B = dict(run="b", optimizer="winsorized", clip=2, noise=0.0, seed=0)
    E = lambda d, step, acc, count, **kw: [  # noqa: E731
        M(experiment="E5", split=f"difficulty={d}", step=step, metric="accuracy", value=acc, **kw),
        M(experiment="E5", split=f"difficulty={d}", step=step, metric="count", value=count, **kw)]
    m = frame(E(0, 0, 0.1, 7, **A) + E(0, 10, 0.9, 7, **A) + E(2, 10, 0.4, 3, **A) + E(1, 4, 0.6, 5, **B)
              + E(0, 20, 0.0, 1, **{**A, "subset": "e-train"}) + [M(step=99, **A)])
    out = tables.accuracy_by_difficulty(m)
    assert list(out.columns) == ["run", "optimizer", "clip", "noise", "seed", "difficulty", "accuracy", "count"]
    assert out.drop(columns="clip").to_dict("list") == {
        "run": ["b", "a", "a"], "optimizer": ["winsorized", "sgd", "sgd"], "noise": [0.0, 0.5, 0.5],
        "seed": [0, 1, 1], "difficulty": [1, 0, 2], "accuracy": [0.6, 0.9, 0.4], "count": [5, 7, 3]}
    assert out["clip"].iloc[0] == 2 and out["clip"].iloc[1:].isna().all()
    assert str(out["count"].dtype) == "int64"
    empty = tables.accuracy_by_difficulty(frame([M()]))
    assert empty.empty and list(empty.columns) == list(out.columns)


def test_cross_generalization_means_over_seeds_with_the_papers_numbers():
    def rows(run, subset, seed, step, accs, losses):
        out = []
        for split, a, l in zip(("e-test", "h-test"), accs, losses):
            out += [M(run=run, experiment="E6", subset=subset, seed=seed, step=step, split=split, metric="accuracy", value=a),
                    M(run=run, experiment="E6", subset=subset, seed=seed, step=step, split=split, metric="loss", value=l)]
        return out
    m = frame(rows("e0", "e-train", 0, 0, [0.0, 0.0], [9.0, 9.0]) + rows("e0", "e-train", 0, 5, [0.8, 0.2], [1.0, 3.0])
              + rows("e1", "e-train", 1, 5, [0.6, 0.4], [2.0, 5.0]) + rows("h0", "h-train", 0, 7, [0.5, 0.3], [1.0, 0.5])
              + [M(run="h0", experiment="E6", subset="h-train", step=7, split="test", value=0.9),
                 M(run="h0", experiment="E6", subset="h-train", step=7, split="test", metric="loss", value=0.25),
                 M(run="h0", experiment="E6", subset="h-train", step=7, split="test", layer="fc", value=7.0),
                 M(run="h0", experiment="E6", subset="h-train", step=7, split="test", metric="count", value=7.0),
                 M(run="x", experiment="E1", subset="h-train", step=9, split="test", value=7.0)])
    out = tables.cross_generalization(m)
    assert list(out.columns) == ["trained_on", "evaluated_on", "accuracy", "accuracy_sd", "loss", "seeds", "paper"]
    assert out[["trained_on", "evaluated_on"]].values.tolist() == [
        ["e-train", "e-test"], ["e-train", "h-test"], ["h-train", "e-test"], ["h-train", "h-test"], ["h-train", "test"]]
    assert out["accuracy"].tolist() == pytest.approx([0.7, 0.3, 0.5, 0.3, 0.9], abs=1e-12)
    sd = math.sqrt(0.02)  # two values 0.2 apart, ddof = 1
    assert out["accuracy_sd"].iloc[:2].tolist() == pytest.approx([sd, sd], abs=1e-12)
    assert out["accuracy_sd"].iloc[2:].isna().all()
    assert out["loss"].tolist() == pytest.approx([1.5, 4.0, 1.0, 0.5, 0.25], abs=1e-12)
    assert out["seeds"].tolist() == [2, 2, 1, 1, 1]
    assert out["paper"].iloc[:4].tolist() == [0.85, 0.17, 0.44, 0.21] and math.isnan(out["paper"].iloc[4])
    empty = tables.cross_generalization(frame([M()]))
    assert empty.empty and list(empty.columns) == list(out.columns)


def test_score_correlations_one_row_per_run_and_score():
    A = dict(run="a", noise=0.5, experiment="E8")
    B = dict(run="b", noise=0.0, subset="e-train", experiment="E8", optimizer="m3", seed=2)
    m = frame([M(metric="spearman_difficulty_aum", value=0.3, **A), M(metric="auroc_corrupt_aum", value=0.8, **A),
               M(metric="auroc_corrupt_el2n", value=0.6, **A), M(metric="spearman_difficulty_el2n", value=-0.2, **B),
               M(run="c", experiment="E1", metric="auroc_corrupt_aum", value=0.1)])
    out = tables.score_correlations(m)
    cols = ["run", "subset", "optimizer", "clip", "noise", "seed", "score", "spearman_difficulty", "auroc_corrupt"]
    assert list(out.columns) == cols
    assert out[["run", "subset", "optimizer", "noise", "seed", "score"]].values.tolist() == [
        ["b", "e-train", "m3", 0.0, 2, "el2n"], ["a", "full", "sgd", 0.5, 0, "aum"], ["a", "full", "sgd", 0.5, 0, "el2n"]]
    assert out["spearman_difficulty"].iloc[:2].tolist() == [-0.2, 0.3] and math.isnan(out["spearman_difficulty"].iloc[2])
    assert math.isnan(out["auroc_corrupt"].iloc[0]) and out["auroc_corrupt"].iloc[1:].tolist() == [0.8, 0.6]
    empty = tables.score_correlations(frame([M()]))
    assert empty.empty and list(empty.columns) == cols


def test_difficulty_plot_table_and_summary_digests():
    hist = tables.histogram(pd.DataFrame({"difficulty": [0, 0, 2]}), 2)
    e5 = pd.DataFrame({"run": ["b", "a", "a"], "difficulty": [0, 0, 2], "accuracy": [0.25, 0.5, 0.75]})
    wide = tables.difficulty_plot_table(e5, hist)
    assert list(wide.columns) == ["difficulty", "count", "a", "b"]
    assert wide["difficulty"].tolist() == [0, 1, 2] and wide["count"].tolist() == [2, 0, 1]
    assert wide["a"].iloc[[0, 2]].tolist() == [0.5, 0.75] and math.isnan(wide["a"].iloc[1])
    assert wide["b"].iloc[0] == 0.25 and wide["b"].iloc[1:].isna().all()
    seeds = pd.DataFrame({"seed": [0, 1], "step": [5, 7], "epoch": [0.25, math.nan], "accuracy": [0.5, 0.1234567],
                          "easy": [3, 2], "hard": [1, 2]})
    e6 = pd.DataFrame({"trained_on": ["e-train"], "evaluated_on": ["h-test"], "accuracy": [0.3]})
    e8 = pd.DataFrame({"run": ["a", "a", "b"], "score": ["aum", "el2n", "aum"],
                       "spearman_difficulty": [0.1, math.nan, 0.2], "auroc_corrupt": [0.9, 0.8, math.nan]})
    assert tables.difficulty_summary(seeds, hist, e5, e6, e8) == {
        "easyhard": {"0": {"step": 5, "epoch": 0.25, "accuracy": 0.5, "easy": 3, "hard": 1},
                     "1": {"step": 7, "epoch": None, "accuracy": 0.123457, "easy": 2, "hard": 2}},
        "difficulty_histogram": {"0": 2, "1": 0, "2": 1},
        "accuracy_by_difficulty": {"a": {"0": 0.5, "2": 0.75}, "b": {"0": 0.25}},
        "cross_generalization": {"e-train -> h-test": 0.3},
        "score_correlations": {"a": {"aum": {"spearman_difficulty": 0.1, "auroc_corrupt": 0.9},
                                     "el2n": {"spearman_difficulty": None, "auroc_corrupt": 0.8}},
                               "b": {"aum": {"spearman_difficulty": 0.2, "auroc_corrupt": None}}}}


def test_last_step_is_per_run():
    df = pd.DataFrame({"run": ["a", "a", "b", "b"], "step": [1, 3, 2, 0], "value": [1, 2, 3, 4]})
    assert tables.last_step(df)["value"].tolist() == [2, 3]


def test_read_error_names_its_first_line_or_its_type(tmp_path, monkeypatch):
    for err, shown in ((ValueError("bad footer\nmore detail"), "bad footer"), (OSError(), "OSError")):
        def boom(path, err=err):
            raise err
        monkeypatch.setattr(tables.pd, "read_parquet", boom)
        with pytest.raises(tables.DamagedFile) as got:
            tables.read_parquet(tmp_path / "t.parquet", "the x stage")
        assert str(got.value) == (f"{tmp_path / 't.parquet'}: damaged or not a Parquet table ({shown}); delete it "
                                  f"and rerun the x stage")


def test_share_crossing_rounds_f_pristine_at_step_0_to_four_digits():
    m = frame([M(experiment="E2", metric="f_pristine", step=s, value=v) for s, v in ((0, 0.123456), (1, 0.2))])
    assert tables.share_crossings(m, hold=1)["r"]["real"] == {"f_pristine_at_0": 0.1235, "crossing_step": 0}


def test_the_tables_columns_are_design_s_in_its_order():
    """The results schema, spelled out here rather than read from tables.METRIC_COLUMNS (a
    column dropped or two swapped there would pass a test that reads it back)."""
    assert list(tables.METRIC_COLUMNS.items()) == [
        ("run", "string"), ("experiment", "string"), ("dataset", "string"), ("model", "string"),
        ("optimizer", "string"), ("clip", "Int64"), ("noise", "float64"), ("seed", "int64"), ("subset", "string"),
        ("step", "int64"), ("epoch", "float64"), ("split", "string"), ("metric", "string"), ("layer", "string"),
        ("null", "int64"), ("value", "float64")]
    assert tables.ROW_DEFAULTS == {"layer": "all", "null": -1, "subset": "full"}
    assert list(tables.EXAMPLE_COLUMNS.items()) == [
        ("run", "string"), ("example", "int64"), ("label_clean", "int64"), ("label", "int64"), ("corrupt", "bool"),
        ("difficulty", "Int64"), ("forgetting_events", "float64"), ("first_learned_epoch", "float64"),
        ("cumulative_accuracy", "float64"), ("confidence", "float64"), ("variability", "float64"),
        ("aum", "float64"), ("el2n", "float64"), ("grand", "float64")]


def test_report_figures_agree_with_the_snakefile_s_categories_and_captions():
    """Each figure has its Snakemake report category and caption; its placeholder names the same
    experiment as its category (a text handed to a neighbour would not)."""
    import re

    from conftest import ROOT
    smk = (ROOT / "rules" / "common.smk").read_text()
    block = smk[smk.index("REPORT_CATEGORY = {"):smk.index("}", smk.index("REPORT_CATEGORY = {"))]
    category = dict(re.findall(r'"(\w+)": "(E\d) ', block))
    assert set(tables.REPORT_FIGURES) == set(category) and len(category) == 9
    for name, text in tables.REPORT_FIGURES.items():
        assert f"({category[name]}" in text or f"({category[name]}," in text, name
        assert ("layer" in text) == name.endswith("layers") and (ROOT / "report" / "captions" / f"{name}.rst").is_file()
    assert tables.REPORT_OUTPUTS == ("report.html", "findings.json", "findings.csv",
                                     *(f"plots/{n}.{e}" for n in tables.REPORT_FIGURES for e in ("png", "svg")))


def test_writers_make_folders_drop_the_index_and_write_sorted_indented_json(tmp_path):
    df = pd.DataFrame({"a": [1, 2]}, index=[5, 7])
    tables.write_parquet(df, tmp_path / "x" / "y" / "t.parquet")  # folders made on the way
    back = pd.read_parquet(tmp_path / "x" / "y" / "t.parquet")
    assert list(back.columns) == ["a"] and back.index.tolist() == [0, 1]
    tables.write_json({"b": 1, "a": [1.5]}, tmp_path / "j" / "s.json")
    assert (tmp_path / "j" / "s.json").read_text() == '{\n  "a": [\n    1.5\n  ],\n  "b": 1\n}\n'


def test_windowed_shares_scale_each_side_by_its_own_size_and_keep_run_order():
    """|p|·i^p and |c|·i^c with sizes other than 1; rows by run then designation whatever the
    input order; a group with one of the two running shares only is left out, and so are another
    experiment's rows of the same names."""
    def rows(run, ip, ic, null=-1):
        return ([M(run=run, experiment="E2", metric="i_pristine", null=null, step=10 * j, value=v) for j, v in enumerate(ip)]
                + [M(run=run, experiment="E2", metric="i_corrupt", null=null, step=10 * j, value=v) for j, v in enumerate(ic)])
    # q: |p| = 2, |c| = 1: sums 2, 4 and 2, 2 → one window of 2 steps: 4 / (4 + 2)
    e2 = frame(rows("z", [1, 2], [1, 2]) + rows("q", [1, 2], [2, 2], null=0) + rows("q", [1, 2], [2, 2])
               + [M(run="c_only", experiment="E2", metric="i_corrupt", value=1.0)]
               + [M(run="q", experiment="E1", metric=k, null=3, value=1.0) for k in ("i_pristine", "i_corrupt")])
    runs = pd.DataFrame({"run": ["q", "z", "c_only"], "n_pristine": [2, 1, 3], "n_corrupt": [1, 1, 3]})
    w = tables.windowed_shares(e2, runs, 2)
    assert w[["run", "null"]].values.tolist() == [["q", -1], ["q", 0], ["z", -1]]
    assert w["f_pristine"].tolist() == pytest.approx([2 / 3, 2 / 3, 0.5], abs=1e-12)


def test_accuracy_by_difficulty_rows_sorted_by_each_key_in_turn():
    """noise, optimizer, clip, seed, difficulty: each decides where the ones before it tie
    (run names chosen so that their own order disagrees with every key)."""
    def E(run, d, noise=0.5, **kw):
        return [M(run=run, experiment="E5", split=f"difficulty={d}", metric=m, value=v, noise=noise, **kw)
                for m, v in (("accuracy", 0.5), ("count", 1))]
    m = frame(E("a1", 0, optimizer="winsorized", clip=5) + E("a2", 0, optimizer="winsorized", clip=2)
              + E("b1", 0, seed=1) + E("b2", 0) + E("m", 0, seed=7) + E("m", 1, seed=7) + E("n", 0, seed=7)
              + E("n", 1, seed=7))
    out = tables.accuracy_by_difficulty(m)
    assert list(zip(out["run"], out["difficulty"])) == [
        ("b2", 0), ("b1", 0), ("m", 0), ("n", 0), ("m", 1), ("n", 1), ("a2", 0), ("a1", 0)]
    low = frame(E("z", 0, noise=0.0, optimizer="winsorized", clip=9))
    assert tables.accuracy_by_difficulty(pd.concat([m, low]))["run"].iloc[0] == "z"  # noise first


def test_score_correlations_rows_sorted_by_subset_then_noise_then_optimizer():
    def S(run, **kw):
        return M(run=run, experiment="E8", metric="auroc_corrupt_aum", value=0.5, **kw)
    m = frame([S("a", noise=0.5), S("b", subset="e-train", noise=0.5), S("c", noise=0.0),
               S("d", noise=0.5, optimizer="m3")])
    out = tables.score_correlations(m)
    assert out["run"].tolist() == ["b", "c", "d", "a"]  # e-train < full; then 0.0 < 0.5; then m3 < sgd


def test_cross_generalization_rows_in_key_order_whatever_the_input_order():
    rows = [M(run=r, experiment="E6", subset=s, split=t, value=v) for r, s, t, v in
            [("h", "h-train", "test", 0.1), ("h", "h-train", "e-test", 0.2), ("e", "e-train", "h-test", 0.3)]]
    out = tables.cross_generalization(frame(rows))
    assert out[["trained_on", "evaluated_on", "accuracy"]].values.tolist() == [
        ["e-train", "h-test", 0.3], ["h-train", "e-test", 0.2], ["h-train", "test", 0.1]]
