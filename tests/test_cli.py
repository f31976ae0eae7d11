"""cglib.cli.scorecard: the report stage's DVC metrics (results/scorecard.json)."""
import pytest

from cglib import cli


def claims(*verdicts):
    return {f"C{i}": {"claim": "long text " * 20, "verdict": v, "holds": {"holds": 1, "does not hold": 0}.get(v)}
            for i, v in enumerate(verdicts)}


def test_scorecard_counts_runs_and_verdicts_and_keeps_every_column():
    card = cli.scorecard(claims("holds", "holds", "does not hold", "not measured"), ["ok", "ok", "diverged"])
    assert card == {"runs": 2, "diverged": 1, "holds": 2, "fails": 1, "inconclusive": 0, "unmeasurable": 0,
                    "unmeasured": 1}
    card = cli.scorecard(claims("inconclusive", "not measurable", "inconclusive", "does not hold"), [])
    assert card == {"runs": 0, "diverged": 0, "holds": 0, "fails": 1, "inconclusive": 2, "unmeasurable": 1,
                    "unmeasured": 0}
    every = cli.scorecard(claims(*cli.VERDICT_KEYS), ["ok"])
    assert [every[k] for k in cli.VERDICT_KEYS.values()] == [1] * 5
    assert cli.scorecard({}, []) == dict(runs=0, diverged=0, **dict.fromkeys(cli.VERDICT_KEYS.values(), 0))


def test_scorecard_refuses_an_unknown_verdict_naming_the_claim():
    with pytest.raises(ValueError, match=r"findings.json: C1: verdict 'maybe' is not one of holds, does not hold"):
        cli.scorecard(claims("holds", "maybe"), ["ok"])


# ---------------------------------------------------------------------------- start, fail

import logging  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402

from cglib import gpu, tables  # noqa: E402
from conftest import tiny_params, write_params  # noqa: E402


@pytest.fixture
def stage_env(tmp_path, monkeypatch):
    """A valid params file; sys.argv as an engine starts stages/prep.py; the hook and the
    module's logger restored afterwards (start sets both)."""
    params = write_params(tmp_path / "p.yaml", tiny_params())
    monkeypatch.setattr(sys, "argv", ["/x/stages/prep.py", "--params", str(params)])
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(cli, "_logger", None)
    yield params
    logging.getLogger("prep").handlers.clear()


def test_start_logs_to_stderr_and_a_new_log_file_named_after_the_script(tmp_path, stage_env, capsys):
    log_path = tmp_path / "a" / "b" / "prep.log"  # two folders to make
    args, params, log = cli.start(cli.parser("d"), ["--params", str(stage_env), "--log", str(log_path)])
    assert args.log == str(log_path) and params["study"] == "tiny" and params["train"]["steps"] == 60
    logger = logging.getLogger("prep")  # the stem of sys.argv[0]
    assert log.__self__ is logger and cli._logger is logger and logger.propagate is False
    log("hello")
    assert capsys.readouterr().err == "hello\n" and log_path.read_text() == "hello\n"
    # a second start (its folder now exists) starts the file afresh and does not double the handlers
    _, _, log = cli.start(cli.parser("d"), ["--params", str(stage_env), "--log", str(log_path)])
    log("again")
    assert capsys.readouterr().err == "again\n" and log_path.read_text() == "again\n"


def test_start_without_a_log_file_logs_to_stderr_only(tmp_path, stage_env, capsys):
    args, _, log = cli.start(cli.parser("d"), ["--params", str(stage_env)])
    assert args.log is None and len(logging.getLogger("prep").handlers) == 1
    log("only here")
    assert capsys.readouterr().err == "only here\n"


def test_start_exits_2_on_bad_params(tmp_path, stage_env, capsys):
    bad = write_params(tmp_path / "bad.yaml", {**tiny_params(), "trian": {}})
    with pytest.raises(SystemExit) as err:
        cli.start(cli.parser("d"), ["--params", str(bad)])
    assert err.value.code == 2 and capsys.readouterr().err.startswith("params error: trian: unknown key")


def test_a_crash_goes_to_the_log_a_write_error_as_one_line(tmp_path, stage_env):
    log_path = tmp_path / "prep.log"
    cli.start(cli.parser("d"), ["--params", str(stage_env), "--log", str(log_path)])
    sys.excepthook(tables.WriteError, tables.WriteError("out.parquet: no space left"), None)
    assert log_path.read_text() == "error: out.parquet: no space left\n"
    try:
        raise ValueError("boom")
    except ValueError as err:
        sys.excepthook(ValueError, err, err.__traceback__)
    text = log_path.read_text()
    assert "Traceback (most recent call last)" in text and text.endswith("ValueError: boom\n")


def test_fail_prints_one_line_and_exits_1_without_a_logger(monkeypatch, capsys, caplog):
    monkeypatch.setattr(cli, "_logger", None)
    with pytest.raises(SystemExit) as err:
        cli.fail("no data")
    assert err.value.code == 1 and capsys.readouterr().err == "error: no data\n"
    with pytest.raises(SystemExit) as err:
        cli.fail("later", 3)
    assert err.value.code == 3 and capsys.readouterr().err == "error: later\n"
    # a logger whose handlers are gone is no place for the message: stderr is
    quiet = logging.getLogger("test_cli.quiet")
    quiet.handlers.clear()
    monkeypatch.setattr(cli, "_logger", quiet)
    with caplog.at_level(logging.INFO):
        with pytest.raises(SystemExit):
            cli.fail("gone")
    assert capsys.readouterr().err == "error: gone\n" and caplog.records == []


def test_fail_goes_to_the_stage_log(tmp_path, stage_env, capsys):
    log_path = tmp_path / "prep.log"
    cli.start(cli.parser("d"), ["--params", str(stage_env), "--log", str(log_path)])
    with pytest.raises(SystemExit) as err:
        cli.fail("bad input", 4)
    assert err.value.code == 4 and log_path.read_text() == "error: bad input\n"
    assert capsys.readouterr().err == "error: bad input\n"


def test_read_table_names_the_file_the_stage_and_the_hint(tmp_path, monkeypatch, capsys):
    import pandas as pd

    monkeypatch.setattr(cli, "_logger", None)
    good = tmp_path / "t.parquet"
    pd.DataFrame({"a": [1, 2]}).to_parquet(good)
    assert cli.read_table(good, "corrupt")["a"].tolist() == [1, 2]
    missing = tmp_path / "gone.parquet"
    with pytest.raises(SystemExit) as err:
        cli.read_table(missing, "corrupt", cli.REBUILD)
    assert err.value.code == 1
    assert capsys.readouterr().err == (f"error: {missing}: not found; run corrupt first (rm {missing}; then "
                                       "snakemake --cores all, or dvc repro)\n")


# ---------------------------------------------------------------------------- load_training_data

@pytest.fixture
def fake_training(monkeypatch):
    """torch, cglib.data and cglib.models stand-ins that record what load_training_data asks of
    them (no torch import: the wiring is what is tested)."""
    calls = {"threads": [], "configure": [], "load": []}

    class DataError(RuntimeError):
        pass

    torch = types.SimpleNamespace(set_num_threads=calls["threads"].append)
    data = types.SimpleNamespace(DataError=DataError, load_prepared=lambda path, device: (
        calls["load"].append((path, device)) or {"x": path}))
    models = types.SimpleNamespace(pick_device=lambda device, log: (log(f"device {device}"), "dev")[1])
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "cglib.data", data)
    monkeypatch.setitem(sys.modules, "cglib.models", models)
    monkeypatch.setattr(gpu, "configure", lambda t, device: calls["configure"].append((t, device)))
    monkeypatch.setattr(cli, "_logger", None)
    return types.SimpleNamespace(calls=calls, data=data, models=models)


def test_load_training_data_sets_threads_device_and_loads(fake_training, capsys):
    t = {"threads": 3, "device": "cpu"}
    assert cli.load_training_data("prep.pt", t) == ({"x": "prep.pt"}, "dev")
    calls = fake_training.calls
    assert calls == {"threads": [3], "configure": [(t, "dev")], "load": [("prep.pt", "dev")]}
    assert capsys.readouterr().out == "device cpu\n"  # no logger: print
    calls["threads"].clear()
    cli.load_training_data("prep.pt", {"threads": 0, "device": "cpu"})  # 0: torch's own default
    assert calls["threads"] == []


def test_load_training_data_logs_the_device_to_the_stage_log(fake_training, monkeypatch, capsys):
    logger = logging.getLogger("test_cli.train")
    logger.handlers.clear()
    seen = []
    logger.addHandler(logging.Handler())
    logger.handlers[0].emit = lambda record: seen.append(record.getMessage())
    logger.setLevel(logging.INFO)
    monkeypatch.setattr(cli, "_logger", logger)
    cli.load_training_data("prep.pt", {"threads": 0, "device": "cuda"})
    assert seen == ["device cuda"] and capsys.readouterr().out == ""
    logger.handlers.clear()


@pytest.mark.parametrize("error", [RuntimeError, gpu.CardsBusy])
def test_load_training_data_one_line_when_no_device(fake_training, monkeypatch, capsys, error):
    def busy(device, log):
        raise error("no card free\nsecond line\nthird line")
    monkeypatch.setattr(fake_training.models, "pick_device", busy)
    with pytest.raises(SystemExit) as err:
        cli.load_training_data("prep.pt", {"threads": 0, "device": "cuda"})
    assert err.value.code == 1 and capsys.readouterr().err == "error: no card free\n"
    assert fake_training.calls["load"] == []


def test_load_training_data_one_line_on_bad_data(fake_training, monkeypatch, capsys):
    def damaged(path, device):
        raise fake_training.data.DataError(f"{path}: damaged; run prepare")
    monkeypatch.setattr(fake_training.data, "load_prepared", damaged)
    with pytest.raises(SystemExit) as err:
        cli.load_training_data("prep.pt", {"threads": 0, "device": "cpu"})
    assert err.value.code == 1 and capsys.readouterr().err == "error: prep.pt: damaged; run prepare\n"


# ---------------------------------------------------------------------------- the lock, the environment

LOCK = """# made by make lock

Jinja2==3.1.4  # a trailing comment
ruamel.yaml==0.18.6
torch==2.3.0
"""


def test_read_lock_canonical_names_comments_and_blank_lines(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text(LOCK)
    assert cli.read_lock(lock) == {"jinja2": "3.1.4", "ruamel-yaml": "0.18.6", "torch": "2.3.0"}
    lock.write_text("")
    assert cli.read_lock(lock) == {}


@pytest.mark.parametrize("bad", ["torch>=2", "==2.3.0", "torch==", "torch==2.3.0; python_version < '3.12'",
                                 "torch==2.3.0 @ file:///wheels/torch.whl"])
def test_read_lock_refuses_each_other_form_naming_the_line(tmp_path, bad):
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"# pins\n\n{bad}\nnumpy==1.26.4\n")
    with pytest.raises(ValueError) as err:
        cli.read_lock(lock)
    assert str(err.value) == f"{lock}:3: expected name==version, got {bad!r}"


def dists(**versions):
    """importlib.metadata.distributions() stand-in: Name → version (None: a distribution
    without a name, as a broken install leaves)."""
    return lambda: [types.SimpleNamespace(metadata={"Name": n}, version=v) for n, v in versions.items()]


@pytest.mark.parametrize("installed, lock, state", [
    ({"Jinja2": "3.1.4", "torch": "2.3.0", "coherent_gradients": "0.1"}, "jinja2==3.1.4\ntorch==2.3.0\n",
     "every installed distribution as pinned (2 pins)"),
    ({"Jinja2": "3.1.4", "torch": "2.4.0"}, "jinja2==3.1.4\ntorch==2.3.0\n", "differ: torch 2.4.0 (lock 2.3.0)"),
    ({"Jinja2": "3.1.4"}, "jinja2==3.1.4\ntorch==2.3.0\n", "not installed: torch"),
    ({"Jinja2": "3.1.4", "torch": "2.3.0", "pandas": "2.2.0"}, "jinja2==3.1.4\ntorch==2.3.0\n",
     "not in the lock: pandas"),
    ({"Jinja2": "3.0", "numpy": "2.0", "pandas": "2.2.0", "coherent-gradients": "0.1"},
     "jinja2==3.1.4\ntorch==2.3.0\nnumpy==2.0\nscipy==1.0\n",
     "differ: jinja2 3.0 (lock 3.1.4); not installed: scipy, torch; not in the lock: pandas"),
])
def test_environment_compares_installed_with_the_lock(tmp_path, monkeypatch, installed, lock, state):
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "distributions", dists(**installed, **{"": "9"}))
    path = tmp_path / "requirements.lock"
    path.write_text(lock)
    env = cli.environment(path)
    listed = ", ".join(f"{cli._canonical(n)} {v}" for n, v in sorted(installed.items(), key=lambda x: x[0].lower()))
    assert env == {"requirements.lock": state, "installed packages": listed}


def test_environment_without_a_usable_lock(tmp_path, monkeypatch):
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "distributions", dists(torch="2.3.0"))
    missing = tmp_path / "none.lock"
    assert cli.environment(missing) == {"requirements.lock": f"{missing}: not found (installed outside this checkout)",
                                        "installed packages": "torch 2.3.0"}
    bad = tmp_path / "bad.lock"
    bad.write_text("torch>=2\n")
    assert cli.environment(bad) == {"requirements.lock": f"{bad}:1: expected name==version, got 'torch>=2'",
                                    "installed packages": "torch 2.3.0"}
