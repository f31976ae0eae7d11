"""cglib.config in-process: each cross-field rule at its boundary (accepted one step inside,
refused at the first value past it, with its exact message), the one-line schema messages,
fill_defaults, the YAML reading, the run grid. No stage subprocess: tests/test_config.py runs
the stages and engines on bad params."""
import copy

import pytest

from cglib import config

SCHEMA = config.schema()
DEFAULT = config.validate({})  # the schema's study: n_train 5000, batch 100, steps 10000, el2n_epoch 10


def with_(edits: dict) -> dict:
    """A deep copy of the default study with dotted keys set ("train.batch_size": 10)."""
    p = copy.deepcopy(DEFAULT)
    for dotted, value in edits.items():
        *parents, last = dotted.split(".")
        node = p
        for part in parents:
            node = node[part]
        node[last] = value
    return p


def accepted(edits: dict) -> None:
    config._cross_checks(with_(edits))


def refused(edits: dict) -> str:
    with pytest.raises(config.ParamsError) as err:
        config._cross_checks(with_(edits))
    return str(err.value)


def test_the_default_study_passes_the_cross_checks():
    assert (DEFAULT["data"]["n_train"], DEFAULT["train"]["batch_size"], DEFAULT["train"]["steps"],
            DEFAULT["difficulty"]["el2n_epoch"], DEFAULT["difficulty"]["split_ratio"]) == (5000, 100, 10000, 10, 5)
    accepted({})


# ---------------------------------------------------------------------------- _check_optimizer

ORDER = {"batch_size": 10, "winsorize_reading": "order_statistic"}
PERCENT = {"batch_size": 10, "winsorize_reading": "percentile"}


def check(name, clip, t):
    config._check_optimizer("k", {"name": name, "clip": clip}, t)


def check_refused(name, clip, t) -> str:
    with pytest.raises(config.ParamsError) as err:
        check(name, clip, t)
    return str(err.value)


def test_winsorized_clip_in_the_order_statistic_reading_is_below_half_the_batch():
    check("winsorized", 4, ORDER)  # 2 · 4 = 8 < 10
    check("winsorized", 0, ORDER)
    assert check_refused("winsorized", 5, ORDER) == "k.clip: 5 must be < batch_size/2 = 5"  # 2 · 5 = 10
    odd = {**ORDER, "batch_size": 11}
    check("winsorized", 5, odd)
    assert check_refused("winsorized", 6, odd) == "k.clip: 6 must be < batch_size/2 = 5.5"


def test_winsorized_clip_in_the_percentile_reading_is_at_most_50():
    check("winsorized", 50, PERCENT)  # a percentage: batch 10 does not bound it
    assert check_refused("winsorized", 51, PERCENT) == (
        "k.clip: 51 must be <= 50 (percent; train.winsorize_reading is percentile)")


@pytest.mark.parametrize("name", ["sgd", "m3", "rm3", "ra3"])
def test_only_winsorized_clips(name):
    t = {**ORDER, "batch_size": 9}
    check(name, 0, t)
    check(name, 0, {**t, "winsorize_reading": "percentile"})
    assert check_refused(name, 1, t) == f"k.clip: only winsorized clips; {name} needs clip 0"
    assert check_refused(name, 1, {**t, "winsorize_reading": "percentile"}).startswith("k.clip: only winsorized")


def test_m3_needs_a_batch_divisible_by_3():
    check("m3", 0, {**ORDER, "batch_size": 9})
    check("rm3", 0, ORDER)  # batch 10: only m3 splits the batch in three
    check("sgd", 0, ORDER)
    assert check_refused("m3", 0, ORDER) == "train.batch_size: 10 must be divisible by 3 for m3"
    assert check_refused("m3", 0, {**ORDER, "batch_size": 11}).startswith("train.batch_size: 11 must")


# ---------------------------------------------------------------------------- _cross_checks

def test_duplicate_optimizers_are_refused_by_name_and_clip():
    accepted({"train.optimizers": [{"name": "winsorized", "clip": 1}, {"name": "winsorized", "clip": 2},
                                   {"name": "sgd", "clip": 0}]})
    assert refused({"train.optimizers": [{"name": "sgd", "clip": 0}, {"name": "rm3", "clip": 0},
                                         {"name": "sgd", "clip": 0}]}) == (
        "train.optimizers[2]: duplicate optimizer sgd with clip 0")
    assert refused({"train.optimizers": [{"name": "sgd", "clip": 0}, {"name": "sgd", "clip": 3}]}) == (
        "train.optimizers[1].clip: only winsorized clips; sgd needs clip 0")


def test_batch_size_at_most_n_train():
    accepted({"data.n_train": 100})  # batch 100 = n_train
    assert refused({"data.n_train": 100, "train.batch_size": 101, "difficulty.batch_size": 50}) == (
        "train.batch_size: 101 exceeds data.n_train = 100")
    accepted({"data.n_train": 0, "train.batch_size": 6000})  # 0: every example, no bound here


def test_milestones_before_the_last_step():
    accepted({"train.lr_milestones": [5, 9999]})
    assert refused({"train.lr_milestones": [5, 10000]}) == (
        "train.lr_milestones: every milestone must be < train.steps = 10000")


def test_batchnorm_models_have_no_clipping_winsorized_and_need_images():
    wins = {"train.optimizers": [{"name": "sgd", "clip": 0}, {"name": "winsorized", "clip": 2}]}
    accepted(wins)  # the mlp
    accepted({"model.name": "cnn", "train.optimizers": [{"name": "sgd", "clip": 0},
                                                         {"name": "winsorized", "clip": 0}]})  # clip 0 is SGD
    for model in ("cnn", "resnet18"):  # the models with BatchNorm
        assert refused({**wins, "model.name": model}) == (
            "train.optimizers: winsorized needs per-example gradients, which BatchNorm in training mode "
            "(resnet18, cnn) does not have; use an mlp")
        assert refused({"model.name": model, "data.dataset": "synthetic"}) == (
            f"model.name: {model} needs an image dataset, not synthetic")
    accepted({"data.dataset": "synthetic"})  # the mlp


# ---------------------------------------------------------------------------- _difficulty_checks

def test_difficulty_batch_at_most_n_train():
    accepted({"data.n_train": 100, "difficulty.batch_size": 100})
    assert refused({"data.n_train": 100, "difficulty.batch_size": 101}) == (
        "difficulty.batch_size: 101 exceeds data.n_train = 100")
    accepted({"data.n_train": 0, "difficulty.batch_size": 9000})


def test_pools_of_at_most_half_of_n_train():
    accepted({"difficulty.pool_size": 2500})  # two pools of 2,500 = 5,000
    assert refused({"difficulty.pool_size": 2501}) == (
        "difficulty.pool_size: 2501 examples from each of two pools exceed data.n_train = 5000")
    accepted({"data.n_train": 0, "difficulty.pool_size": 9000})


def test_pool_leaves_a_batch_on_each_side_of_the_split():
    """split_ratio 5: a pool of P keeps P − P // 6 examples, which must be at least one batch (100)."""
    accepted({"difficulty.pool_size": 120})  # 120 − 20 = 100
    accepted({"difficulty.pool_size": 119})  # 119 − 19 = 100
    assert refused({"difficulty.pool_size": 118}) == (  # 118 − 19 = 99
        "difficulty.pool_size: 118 leaves e-train / h-train smaller than train.batch_size = 100")
    accepted({"difficulty.pool_size": 0})  # no pools
    one = {"difficulty.split_ratio": 1, "train.batch_size": 7, "difficulty.batch_size": 7}  # halves
    accepted({**one, "difficulty.pool_size": 13})  # 13 − 6 = 7
    assert refused({**one, "difficulty.pool_size": 12}).startswith("difficulty.pool_size: 12 leaves")  # 12 − 6


def test_el2n_epoch_within_the_epochs_train_steps_cover():
    """5,000 examples in batches of 100: 50 steps an epoch, 10,000 steps are 200 epochs."""
    accepted({"difficulty.el2n_epoch": 200})
    assert refused({"difficulty.el2n_epoch": 201}) == (
        "difficulty.el2n_epoch: 201 is beyond the 200 epochs that train.steps = 10000 covers")
    # 5,050 examples are 50 full batches an epoch (the last partial one is not a step)
    accepted({"data.n_train": 5050, "difficulty.el2n_epoch": 200})
    assert refused({"data.n_train": 5050, "train.steps": 9999, "difficulty.el2n_epoch": 200}) == (
        "difficulty.el2n_epoch: 200 is beyond the 199 epochs that train.steps = 9999 covers")
    # one batch an epoch: each step is an epoch
    accepted({"data.n_train": 100, "train.steps": 20, "difficulty.el2n_epoch": 20})
    assert refused({"data.n_train": 100, "train.steps": 20, "difficulty.el2n_epoch": 21}).startswith(
        "difficulty.el2n_epoch: 21 is beyond the 20 epochs")
    accepted({"data.n_train": 0, "train.steps": 20, "difficulty.el2n_epoch": 500})  # unknown n: not checked


# ---------------------------------------------------------------------------- _mc_checks

def test_whole_noise_levels_are_written_plainly_everywhere_a_level_is_named():
    """1.0 and 1 would name different runs and label files in DVC: only the plain one is taken."""
    accepted({"corrupt.noise": [0, 0.5, 1], "mc.noise": [1], "replicates.cells": [
        {"name": "rm3", "clip": 0, "noise": 0}]})
    assert refused({"corrupt.noise": [0, 0.5, 1.0]}) == (
        "corrupt.noise[2]: write 1.0 as 1 (run names and label files spell each noise level one way)")
    assert refused({"corrupt.noise": [0.0, 0.5]}).startswith("corrupt.noise[0]: write 0.0 as 0 ")
    assert refused({"corrupt.noise": [0, 1], "mc.noise": [1.0]}).startswith("mc.noise[0]: write 1.0 as 1 ")
    assert refused({"replicates.cells": [{"name": "rm3", "clip": 0, "noise": 0.0}]}).startswith(
        "replicates.cells[0].noise: write 0.0 as 0 ")
    names = [r["run"] for r in config.run_grid(with_({"corrupt.noise": [0, 0.5, 1], "mc.noise": [],
                                                      "replicates.cells": []}), subsets=False)]
    assert [n for n in names if n.endswith("seed0") and n.startswith("sgd_c0_")] == [
        "sgd_c0_noise0_seed0", "sgd_c0_noise0.5_seed0", "sgd_c0_noise1_seed0"]


def test_mc_noise_levels_must_be_corrupted():
    accepted({"mc.noise": [0, 0.5]})
    assert refused({"mc.noise": [0, 0.3, 0.4]}) == (
        "mc.noise[1]: 0.3 is not one of corrupt.noise (no label table for it)")


def test_mc_n_train_between_a_batch_and_n_train():
    accepted({"mc.noise": [0], "mc.n_train": 5000})
    assert refused({"mc.noise": [0], "mc.n_train": 5001}) == "mc.n_train: 5001 exceeds data.n_train = 5000"
    accepted({"mc.noise": [0], "mc.n_train": 100})
    assert refused({"mc.noise": [0], "mc.n_train": 99}) == "mc.n_train: 99 is less than train.batch_size = 100"
    accepted({"mc.noise": [0], "mc.n_train": 0})  # 0: all of data.n_train
    accepted({"data.n_train": 0, "mc.noise": [0], "mc.n_train": 9000})


def test_mc_steps_reach_the_el2n_epoch():
    """el2n_epoch 10; the mc run's epoch is n // batch steps of its n examples."""
    accepted({"mc.noise": [0], "mc.steps": 500})  # 5,000 / 100 = 50 steps an epoch: 500 steps = 10 epochs
    assert refused({"mc.noise": [0], "mc.steps": 499}) == (
        "mc.steps: 499 steps end before difficulty.el2n_epoch = 10, where every run records EL2N")
    accepted({"mc.noise": [0], "data.n_train": 5050, "mc.steps": 500})  # 50 full batches an epoch
    accepted({"mc.noise": [0], "mc.n_train": 100, "mc.steps": 10})  # one batch an epoch
    assert refused({"mc.noise": [0], "mc.n_train": 100, "mc.steps": 9}).startswith("mc.steps: 9 steps end")
    accepted({"mc.noise": [0], "mc.n_train": 1000, "mc.steps": 100})  # mc.n_train, not data.n_train, counts
    accepted({"mc.noise": [], "mc.steps": 1})  # no mc runs
    accepted({"mc.noise": [0], "data.n_train": 0, "mc.steps": 1})  # unknown n: not checked


def test_mc_batchnorm_model_needs_images():
    synthetic = {"data.dataset": "synthetic", "mc.noise": [0]}
    assert refused(synthetic) == "mc.model.name: cnn needs an image dataset, not synthetic"
    accepted({**synthetic, "mc.model": {**DEFAULT["mc"]["model"], "name": "mlp"}})
    accepted({**synthetic, "mc.noise": []})  # no mc runs
    accepted({"mc.noise": [0]})  # fashion_mnist


# ---------------------------------------------------------------------------- _replicate_checks

def cells(*cells, seeds=(1,)):
    return {"replicates.cells": [dict(zip(("name", "clip", "noise"), c)) for c in cells],
            "replicates.seeds": list(seeds)}


def test_replicate_cells_at_corrupted_noise_levels_with_valid_variants():
    accepted(cells(("winsorized", 2, 0.5), ("rm3", 0, 0)))
    assert refused(cells(("rm3", 0, 0), ("rm3", 0, 0.3))) == "replicates.cells[1].noise: 0.3 is not one of corrupt.noise"
    assert refused(cells(("rm3", 0, 0), ("winsorized", 50, 0))) == (
        "replicates.cells[1].clip: 50 must be < batch_size/2 = 50")
    assert refused(cells(("rm3", 0, 0), ("rm3", 0, 0.5), ("rm3", 0, 0.5))) == (
        "replicates.cells[2]: duplicate cell rm3 with clip 0 at noise 0.5")


def test_a_replicate_of_a_grid_run_is_refused_naming_the_first_shared_seed():
    accepted({**cells(("sgd", 0, 0.5), seeds=(3, 1)), "train.seeds": [0]})  # new seeds of a grid optimizer
    accepted({**cells(("rm3", 0, 0.5), seeds=(0, 1)), "train.seeds": [0, 1]})  # not a grid optimizer
    assert refused({**cells(("rm3", 0, 0), ("sgd", 0, 0.5), seeds=(3, 1, 0)), "train.seeds": [0, 1]}) == (
        "replicates.cells[1]: sgd with clip 0 at noise 0.5 seed 1 is already in the train grid "
        "(the run would be made twice)")


def test_replicates_of_batchnorm_models_have_no_clipping_winsorized():
    accepted(cells(("winsorized", 2, 0)))  # the mlp
    accepted({**cells(("winsorized", 0, 0)), "model.name": "cnn"})
    assert refused({**cells(("rm3", 0, 0), ("winsorized", 2, 0)), "model.name": "resnet18"}) == (
        "replicates.cells: winsorized needs per-example gradients, which BatchNorm in training mode "
        "(resnet18, cnn) does not have; use an mlp")


# ---------------------------------------------------------------------------- schema messages

def invalid(params) -> str:
    with pytest.raises(config.ParamsError) as err:
        config.validate(params)
    return str(err.value)


def test_key_paths():
    assert config._key([]) == "<top level>"
    assert config._key(["train"]) == "train"
    assert config._key(["train", "optimizers", 0, "clip"]) == "train.optimizers[0].clip"
    assert config._key([2, "a"]) == "[2].a"


def test_schema_messages_one_line_naming_the_key():
    top = ", ".join(sorted(SCHEMA["properties"]))
    assert invalid({"zeta": 1, "trian": {}}) == f"trian: unknown key (allowed: {top})"  # the first, sorted
    train = ", ".join(sorted(SCHEMA["properties"]["train"]["properties"]))
    assert invalid({"train": {"lrr": 0.1}}) == f"train.lrr: unknown key (allowed: {train})"
    assert invalid({"train": {"steps": 60.0}}) == (
        "train.steps: 60.0 must be a whole number written without a decimal point")
    assert invalid({"train": {"steps": "many"}}) == "train.steps: 'many' is not of type 'integer'"
    assert invalid({"train": {"steps": True}}) == "train.steps: True is not of type 'integer'"
    assert invalid({"train": {"lr": "fast"}}) == "train.lr: 'fast' is not of type 'number'"
    datasets = SCHEMA["properties"]["data"]["properties"]["dataset"]["enum"]
    assert len(datasets) > 1
    assert invalid({"data": {"dataset": "imagenet"}}) == (
        f"data.dataset: 'imagenet' is not one of {', '.join(datasets)}")
    assert invalid([1]) == "<top level>: the params file must be a mapping of sections"


def test_validate_fills_defaults_and_runs_the_cross_checks():
    p = config.validate({"train": {"steps": 500}})  # 10 epochs of 50 steps: el2n_epoch 10 is the last
    assert p["train"]["steps"] == 500 and p["train"]["batch_size"] == 100 and p["data"]["n_train"] == 5000
    assert invalid({"train": {"steps": 499}}) == (
        "difficulty.el2n_epoch: 10 is beyond the 9 epochs that train.steps = 499 covers")


def test_fill_defaults_recursively_into_objects_and_array_items():
    sch = {"type": "object", "properties": {
        "a": {"type": "integer", "default": 1},
        "b": {"type": "object", "default": {}, "properties": {"c": {"type": "integer", "default": 2}}},
        "d": {"type": "array", "default": [], "items": {"type": "object", "properties": {"e": {"default": 3}}}},
        "f": {"type": "string"}}}
    node = {"a": 7, "d": [{}, {"e": 5}]}
    assert config.fill_defaults(node, sch) is node
    assert node == {"a": 7, "b": {"c": 2}, "d": [{"e": 3}, {"e": 5}]}
    assert config.fill_defaults({}, sch) == {"a": 1, "b": {"c": 2}, "d": []}
    assert sch["properties"]["b"]["default"] == {}  # the default was copied, not filled in place
    assert config.fill_defaults(5, sch) == 5 and config.fill_defaults([{}], sch) == [{}]
    assert config.fill_defaults({"x": 1}, {"type": "array", "items": sch}) == {"x": 1}
    assert config.fill_defaults(5, {"type": "array", "items": sch}) == 5  # a scalar where a list belongs
    assert config.fill_defaults([{}], {"type": "array"}) == [{}]  # no items schema: nothing to fill


# ---------------------------------------------------------------------------- reading the file

def read(tmp_path, text):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


def unreadable(path) -> str:
    with pytest.raises(config.ParamsError) as err:
        config.read_yaml(path)
    return str(err.value)


def test_read_yaml_numbers_as_yaml_1_2_reads_them(tmp_path):
    path = read(tmp_path, "lr: 1e-3\nsteps: 60\nx: 1.5e-3\ny: .5\nz: -.inf\nt: 1:30.5\nw: 1_0.5\n")
    got = config.read_yaml(path)
    assert got == {"lr": 0.001, "steps": 60, "x": 0.0015, "y": 0.5, "z": float("-inf"), "t": "1:30.5", "w": 10.5}
    assert type(got["steps"]) is int and type(got["lr"]) is float
    deep = config.read_yaml(read(tmp_path, "a:\n  b: [1, {c: 2}]\nx: &s [*s]\n"))  # aliases as PyYAML reads them
    assert deep["a"] == {"b": [1, {"c": 2}]} and deep["x"][0] is deep["x"]


def test_read_yaml_errors_name_the_file_and_line(tmp_path):
    assert unreadable(tmp_path / "none.yaml") == f"{tmp_path / 'none.yaml'}: params file not found"
    path = read(tmp_path, "train:\n  lr: 0.1\n  steps: 5\n  lr: 0.2\n")
    assert unreadable(path) == f"{path}:4: key 'lr' given twice"
    path = read(tmp_path, "train: {lr: 0.1}\ndata: {}\ntrain: {}\n")
    assert unreadable(path) == f"{path}:3: key 'train' given twice"
    path = read(tmp_path, "a: 1\nb: c: d\n")
    assert unreadable(path) == f"{path}:2: not valid YAML (mapping values are not allowed here)"
    path = read(tmp_path, "a: 1\nb: [1")  # the problem, not the context ("while parsing a flow sequence")
    assert unreadable(path) == f"{path}:2: not valid YAML (expected ',' or ']', but got '<stream end>')"
    path = read(tmp_path, "a: \x00\n")  # no mark: the file alone, and the error's first line
    assert unreadable(path) == (
        f"{path}: not valid YAML (unacceptable character #x0000: special characters are not allowed)")


def test_load_params_refuses_an_empty_file_and_load_or_exit_exits_2(tmp_path, capsys):
    empty = read(tmp_path, "")
    with pytest.raises(config.ParamsError, match=r"p\.yaml: the params file is empty$"):
        config.load_params(empty)
    with pytest.raises(SystemExit) as err:
        config.load_or_exit(empty)
    assert err.value.code == 2 == config.EXIT_BAD_PARAMS
    assert capsys.readouterr().err == f"params error: {empty}: the params file is empty\n"
    good = read(tmp_path, "train:\n  steps: 500\n")
    assert config.load_or_exit(good)["train"]["steps"] == 500 and capsys.readouterr().err == ""


# ---------------------------------------------------------------------------- the run grid

def test_run_grid_every_field_of_every_run():
    p = with_({"corrupt.noise": [0, 0.5], "train.seeds": [0, 1],
               "train.optimizers": [{"name": "sgd", "clip": 0}, {"name": "winsorized", "clip": 2}],
               "replicates.cells": [{"name": "rm3", "clip": 0, "noise": 0.5}], "replicates.seeds": [7],
               "difficulty.subsets": ["e-train"], "mc.noise": [0.5], "mc.seeds": [3]})
    full = dict(subset="full")
    assert config.run_grid(p) == [
        dict(run="sgd_c0_noise0_seed0", noise=0, optimizer="sgd", clip=0, seed=0, **full),
        dict(run="sgd_c0_noise0_seed1", noise=0, optimizer="sgd", clip=0, seed=1, **full),
        dict(run="winsorized_c2_noise0_seed0", noise=0, optimizer="winsorized", clip=2, seed=0, **full),
        dict(run="winsorized_c2_noise0_seed1", noise=0, optimizer="winsorized", clip=2, seed=1, **full),
        dict(run="sgd_c0_noise0.5_seed0", noise=0.5, optimizer="sgd", clip=0, seed=0, **full),
        dict(run="sgd_c0_noise0.5_seed1", noise=0.5, optimizer="sgd", clip=0, seed=1, **full),
        dict(run="winsorized_c2_noise0.5_seed0", noise=0.5, optimizer="winsorized", clip=2, seed=0, **full),
        dict(run="winsorized_c2_noise0.5_seed1", noise=0.5, optimizer="winsorized", clip=2, seed=1, **full),
        dict(run="rm3_c0_noise0.5_seed7", noise=0.5, optimizer="rm3", clip=0, seed=7, **full),
        dict(run="sgd_c0_e-train_seed0", noise=0.0, optimizer="sgd", clip=0, seed=0, subset="e-train"),
        dict(run="sgd_c0_e-train_seed1", noise=0.0, optimizer="sgd", clip=0, seed=1, subset="e-train"),
        dict(run="mc_sgd_c0_noise0.5_seed3", noise=0.5, optimizer="sgd", clip=0, seed=3, conditions="mc", **full),
    ]
    assert [type(r["noise"]) for r in config.run_grid(p)][9:11] == [float, float]
    assert config.run_grid(p, subsets=False) == [r for r in config.run_grid(p) if r["subset"] == "full"]


def test_steps_of_a_subset_run():
    p = with_({"difficulty.subset_steps": 50})
    assert config.steps_of(p, "e-train") == 50 and config.steps_of(p, "full") == 10000 and config.steps_of(p) == 10000
    assert config.steps_of(DEFAULT, "h-train") == 10000  # 0: train.steps
    spec = {"run": "sgd_c0_e-train_seed0", "subset": "e-train"}
    assert config.params_for(p, spec)["train"] == {**p["train"], "steps": 50}
    assert config.params_for(p, {"run": "sgd_c0_noise0_seed0"})["train"]["steps"] == 10000


def test_mc_params_every_changed_key():
    p = with_({"train.weight_decay": 0.1, "train.lr_schedule": "step", "train.lr_milestones": [10],
               "train.optimizers": [{"name": "winsorized", "clip": 2}], "train.shares.optimizers": ["winsorized"],
               "mc.n_train": 1000})
    q = config.mc_params(p)
    assert q["train"] == {**p["train"], "lr": 0.04, "momentum": 0.9, "steps": 1000, "base": "sgd", "weight_decay": 0.0,
                          "lr_schedule": "constant", "lr_milestones": [], "optimizers": [{"name": "sgd", "clip": 0}],
                          "shares": {**p["train"]["shares"], "optimizers": []},
                          "coherence": {**p["train"]["coherence"], "label_part": False}}
    assert q["data"] == {**p["data"], "n_train": 1000} and q["model"] == p["mc"]["model"]
    assert {k: v for k, v in q.items() if k not in ("train", "data", "model")} == {
        k: v for k, v in p.items() if k not in ("train", "data", "model")}
    config.check_run(q, {"name": "sgd", "clip": 0})
    # one run's check leaves the replicates out: rm3 at seed 0 is a replicate beside a grid of sgd
    grid = with_({"train.seeds": [0], "replicates.cells": [{"name": "rm3", "clip": 0, "noise": 0.5}],
                  "replicates.seeds": [0]})
    accepted({k: grid[k.split(".")[0]][k.split(".")[1]] for k in ("train.seeds", "replicates.cells",
                                                                   "replicates.seeds")})
    config.check_run(config.params_for(grid, {"run": "rm3_c0_noise0.5_seed0", "subset": "full"}),
                     {"name": "rm3", "clip": 0})
    with pytest.raises(config.ParamsError, match=r"^train.optimizers\[0\].clip: 50 must be < batch_size/2 = 50"):
        config.check_run(q, {"name": "winsorized", "clip": 50})


def test_stage_params_reads_each_dotted_key():
    p = with_({"train.lr": 0.3, "difficulty.el2n_epoch": 7})
    got = config.stage_params(p, "train")
    assert list(got) == config.STAGE_KEYS["train"]
    assert got["train.lr"] == 0.3 and got["difficulty.el2n_epoch"] == 7
    # the model section as mlp reads it: the keys of the torchvision / import models left out
    assert got["model"] == {k: v for k, v in p["model"].items() if k not in ("arch", "path", "kwargs")}
    assert config.stage_params(p, "corrupt") == {"corrupt.seed": 0}


# ---------------------------------------------------------------------------- stages/validate.py

@pytest.fixture
def validate_stage(tmp_path, monkeypatch):
    """stages/validate.py run in-process as its own script (runpy), with cli.start's hook and
    logger restored afterwards."""
    import logging
    import runpy
    import sys

    from cglib import cli
    from conftest import ROOT

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(cli, "_logger", None)
    script = str(ROOT / "stages" / "validate.py")

    def run(*args, run_name="__main__"):
        monkeypatch.setattr(sys, "argv", [script, *map(str, args)])
        return runpy.run_path(script, run_name=run_name)
    yield run
    logging.getLogger("validate").handlers.clear()


def test_validate_stage_writes_its_marker_on_valid_params(tmp_path, validate_stage, capsys):
    params = read(tmp_path, "study: mine\n")
    validate_stage("--params", params, "--out", tmp_path / "ok" / "params.ok", "--log", tmp_path / "v.log")
    assert (tmp_path / "ok" / "params.ok").read_text() == "params valid\n"
    assert capsys.readouterr().err == f"{params}: valid (study mine)\n"
    assert (tmp_path / "v.log").read_text() == f"{params}: valid (study mine)\n"


def test_validate_stage_exits_2_on_bad_params_or_without_out(tmp_path, validate_stage, capsys):
    bad = read(tmp_path, "trian: {}\n")
    with pytest.raises(SystemExit) as err:
        validate_stage("--params", bad, "--out", tmp_path / "params.ok")
    assert err.value.code == 2 and capsys.readouterr().err.startswith("params error: trian: unknown key")
    with pytest.raises(SystemExit) as err:
        validate_stage("--params", read(tmp_path, "study: mine\n"))
    assert err.value.code == 2 and "the following arguments are required: --out" in capsys.readouterr().err
    assert not (tmp_path / "params.ok").exists()


def test_validate_stage_does_nothing_when_imported(tmp_path, validate_stage, capsys):
    module = validate_stage("--params", read(tmp_path, "study: mine\n"), "--out", tmp_path / "params.ok",
                            run_name="validate")
    assert callable(module["main"]) and not (tmp_path / "params.ok").exists()
    assert capsys.readouterr().err == ""


def test_stage_keys_are_the_params_dvc_yaml_tracks():
    """dvc.yaml spells each stage's params itself; the replicate runs track the train stage's."""
    import yaml

    from conftest import ROOT

    dvc = {name: stage["params"] for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items()
           if "params" in stage}
    assert dvc.pop("train_replicate") == dvc["train"]
    assert dvc == config.STAGE_KEYS


def test_optimizer_names_are_the_variants_the_schema_accepts():
    names = SCHEMA["properties"]["train"]["properties"]["optimizers"]["items"]["properties"]["name"]["enum"]
    assert config.OPTIMIZER_NAMES == tuple(names) == ("sgd", "winsorized", "m3", "rm3", "ra3")


def test_check_run_checks_one_run_against_its_own_train_section():
    p = with_({"train.batch_size": 9, "difficulty.batch_size": 9})
    config.check_run(p, {"name": "m3", "clip": 0})  # 9 = 3 · 3 (the schema's batch of 100 is not)
    config.check_run(p, {"name": "winsorized", "clip": 4})
    with pytest.raises(config.ParamsError, match=r"^train.optimizers\[0\].clip: 5 must be < batch_size/2 = 4.5$"):
        config.check_run(p, {"name": "winsorized", "clip": 5})
