"""Study parameters: load, validate, fill defaults, expand the run grid.

Every stage and the Snakefile call `load_params` first. A bad file is a `ParamsError` whose
message is one line naming the key; stages turn it into exit code 2 before doing any work.
The run grid (noise × optimizer × seed, plus the E6 subset runs) is computed here once, so the Snakefile, the stages
and the tests agree on run names; dvc.yaml spells the same names with its `${...}` syntax.
"""
from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import jsonschema
import yaml

from cglib import model_sources, sources

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "params.schema.yaml"
EXIT_BAD_PARAMS = 2
OPTIMIZER_NAMES = ("sgd", "winsorized", "m3", "rm3", "ra3")  # gradient variants
BATCHNORM_MODELS = ("cnn", "resnet18")  # image models with BatchNorm: no per-example gradients in training


class ParamsError(ValueError):
    """Invalid study parameters; str(err) is one line starting with the offending key."""


def schema() -> dict:
    with open(SCHEMA_PATH) as fh:
        return yaml.safe_load(fh)


# ---------------------------------------------------------------------------- validation

def _key(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _one_line(err: jsonschema.ValidationError) -> str:
    key = _key(err.absolute_path)
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        where = f"{key}." if err.absolute_path else ""
        return f"{where}{extra[0]}: unknown key (allowed: {', '.join(sorted(err.schema['properties']))})"
    if err.validator == "type" and err.validator_value == "integer" and isinstance(err.instance, float):
        return f"{key}: {err.instance!r} must be a whole number written without a decimal point"
    if err.validator == "enum":
        return f"{key}: {err.instance!r} is not one of {', '.join(map(str, err.validator_value))}"
    if err.validator == "not" and "enum" in err.validator_value:
        return f"{key}: {err.instance!r} is reserved (not one of {', '.join(err.validator_value['enum'])})"
    return f"{key}: {err.message}"


def fill_defaults(node, sch: dict):
    """Insert schema defaults for missing keys, recursively (jsonschema only validates)."""
    if sch.get("type") == "object" and isinstance(node, dict):
        for name, sub in sch.get("properties", {}).items():
            if name not in node and "default" in sub:
                node[name] = copy.deepcopy(sub["default"])
            if name in node:
                fill_defaults(node[name], sub)
    elif sch.get("type") == "array" and isinstance(node, list) and "items" in sch:
        for item in node:
            fill_defaults(item, sch["items"])
    return node


def _check_optimizer(key: str, opt: dict, t: dict) -> None:
    """A gradient variant's clip and the batch it needs (train.optimizers and replicates.cells)."""
    batch = t["batch_size"]
    if opt["name"] == "winsorized" and t["winsorize_reading"] == "percentile":
        if opt["clip"] > 50:
            raise ParamsError(f"{key}.clip: {opt['clip']} must be <= 50 (percent; "
                              "train.winsorize_reading is percentile)")
    elif opt["name"] == "winsorized" and 2 * opt["clip"] >= batch:
        raise ParamsError(f"{key}.clip: {opt['clip']} must be < batch_size/2 = {batch / 2:g}")
    if opt["name"] != "winsorized" and opt["clip"] != 0:
        raise ParamsError(f"{key}.clip: only winsorized clips; {opt['name']} needs clip 0")
    if opt["name"] == "m3" and batch % 3:
        raise ParamsError(f"train.batch_size: {batch} must be divisible by 3 for m3")


def _cross_checks(p: dict) -> None:
    """Constraints JSON schema cannot express (they relate two keys)."""
    t, data = p["train"], p["data"]
    batch = t["batch_size"]
    seen = set()
    for i, opt in enumerate(t["optimizers"]):
        key = f"train.optimizers[{i}]"
        label = (opt["name"], opt["clip"])
        if label in seen:
            raise ParamsError(f"{key}: duplicate optimizer {opt['name']} with clip {opt['clip']}")
        seen.add(label)
        _check_optimizer(key, opt, t)
    if data["n_train"] and batch > data["n_train"]:
        raise ParamsError(f"train.batch_size: {batch} exceeds data.n_train = {data['n_train']}")
    if any(m >= t["steps"] for m in t["lr_milestones"]):
        raise ParamsError(f"train.lr_milestones: every milestone must be < train.steps = {t['steps']}")
    if p["model"]["name"] in BATCHNORM_MODELS and any(o["name"] == "winsorized" and o["clip"] for o in t["optimizers"]):
        raise ParamsError("train.optimizers: winsorized needs per-example gradients, which BatchNorm in "
                          "training mode (resnet18, cnn) does not have; use an mlp")
    _data_checks(data)
    _needs_images("model.name", p["model"]["name"], data)
    _noise_spellings(p)
    _difficulty_checks(p)
    _mc_checks(p)
    _replicate_checks(p)
    try:  # a torchvision arch or an imported model: built on the meta device (cglib.model_sources)
        model_sources.check_study(p)
    except model_sources.ModelError as err:
        raise ParamsError(str(err)) from None


def _needs_images(key: str, model: str, data: dict) -> None:
    """The image models (convolutions over (C, H, W)) refuse feature vectors: synthetic data, and
    an .npz file whose x_train is float (N, d) (read from its header; an unreadable file is left
    to the prepare stage, which names what is wrong with it)."""
    if model not in BATCHNORM_MODELS:
        return
    if data["dataset"] == "synthetic":
        raise ParamsError(f"{key}: {model} needs an image dataset, not synthetic")
    if data["dataset"] == "npz":
        if sources.npz_holds_features(data["path"]):
            raise ParamsError(f"{key}: {model} needs an image dataset, and data.path {data['path']} holds "
                              "float features (N, d)")


def _data_checks(data: dict) -> None:
    if data["dataset"] == "npz" and not data["path"]:
        raise ParamsError("data.path: dataset npz needs the path of a .npz file (x_train, y_train, x_test, y_test)")
    if data["dataset"] == "imagefolder" and data["image_size"] > data["resize"]:
        raise ParamsError(f"data.image_size: {data['image_size']} exceeds data.resize = {data['resize']} "
                          "(the centre crop is cut from the resized image)")


def _noise_spellings(p: dict) -> None:
    """One spelling per noise level: run names and label files carry the level as written (DVC
    interpolates the value as it reads it, 1.0 → "1.0", 1 → "1"), so a whole level written as a
    decimal would name other files than the same level written plainly. The plain one is kept."""
    levels = [(f"corrupt.noise[{i}]", v) for i, v in enumerate(p["corrupt"]["noise"])]
    levels += [(f"replicates.cells[{i}].noise", c["noise"]) for i, c in enumerate(p["replicates"]["cells"])]
    levels += [(f"mc.noise[{i}]", v) for i, v in enumerate(p["mc"]["noise"])]
    for key, v in levels:
        if isinstance(v, float) and v.is_integer():
            raise ParamsError(f"{key}: write {v!r} as {int(v)} (run names and label files spell each noise "
                              f"level one way)")


def _replicate_checks(p: dict) -> None:
    """Extra runs: each cell at a noise level the study corrupts, a valid variant, no run twice."""
    rep, t = p["replicates"], p["train"]
    seen = set()
    for i, cell in enumerate(rep["cells"]):
        key = f"replicates.cells[{i}]"
        if cell["noise"] not in p["corrupt"]["noise"]:
            raise ParamsError(f"{key}.noise: {cell['noise']} is not one of corrupt.noise")
        _check_optimizer(key, cell, t)
        label = (cell["name"], cell["clip"], cell["noise"])
        if label in seen:
            raise ParamsError(f"{key}: duplicate cell {cell['name']} with clip {cell['clip']} at noise {cell['noise']}")
        seen.add(label)
        twice = [s for s in rep["seeds"] if s in t["seeds"]]
        if {"name": cell["name"], "clip": cell["clip"]} in t["optimizers"] and twice:
            raise ParamsError(f"{key}: {cell['name']} with clip {cell['clip']} at noise {cell['noise']} seed "
                              f"{twice[0]} is already in the train grid (the run would be made twice)")
    if p["model"]["name"] in BATCHNORM_MODELS and any(c["name"] == "winsorized" and c["clip"] for c in rep["cells"]):
        raise ParamsError("replicates.cells: winsorized needs per-example gradients, which BatchNorm in "
                          "training mode (resnet18, cnn) does not have; use an mlp")


def _mc_checks(p: dict) -> None:
    mc = p["mc"]
    for i, noise in enumerate(mc["noise"]):
        if noise not in p["corrupt"]["noise"]:
            raise ParamsError(f"mc.noise[{i}]: {noise} is not one of corrupt.noise (no label table for it)")
    n, batch = p["data"]["n_train"], p["train"]["batch_size"]
    if n and mc["n_train"] > n:
        raise ParamsError(f"mc.n_train: {mc['n_train']} exceeds data.n_train = {n}")
    if mc["n_train"] and mc["n_train"] < batch:
        raise ParamsError(f"mc.n_train: {mc['n_train']} is less than train.batch_size = {batch}")
    n = mc["n_train"] or n  # the examples an mc run trains on
    if mc["noise"] and n and p["difficulty"]["el2n_epoch"] > mc["steps"] // max(1, n // batch):
        raise ParamsError(f"mc.steps: {mc['steps']} steps end before difficulty.el2n_epoch = "
                          f"{p['difficulty']['el2n_epoch']}, where every run records EL2N")
    if mc["noise"]:
        _needs_images("mc.model.name", mc["model"]["name"], p["data"])


def _difficulty_checks(p: dict) -> None:
    d, n = p["difficulty"], p["data"]["n_train"]
    if n and d["batch_size"] > n:
        raise ParamsError(f"difficulty.batch_size: {d['batch_size']} exceeds data.n_train = {n}")
    if n and d["pool_size"] > n // 2:
        raise ParamsError(f"difficulty.pool_size: {d['pool_size']} examples from each of two pools "
                          f"exceed data.n_train = {n}")
    if n and d["pool_size"] and d["pool_size"] - d["pool_size"] // (d["split_ratio"] + 1) < p["train"]["batch_size"]:
        raise ParamsError(f"difficulty.pool_size: {d['pool_size']} leaves e-train / h-train smaller "
                          f"than train.batch_size = {p['train']['batch_size']}")
    epochs = p["train"]["steps"] // max(1, n // p["train"]["batch_size"]) if n else None
    if epochs is not None and d["el2n_epoch"] > epochs:
        raise ParamsError(f"difficulty.el2n_epoch: {d['el2n_epoch']} is beyond the {epochs} epochs "
                          f"that train.steps = {p['train']['steps']} covers")


# JSON Schema counts 200.0 as an integer; the stages (range(), run names, DVC's ${...}) do not.
_STRICT_INTEGERS = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
    "integer", lambda _, v: isinstance(v, int) and not isinstance(v, bool))
_Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=_STRICT_INTEGERS)


def validate(params: dict) -> dict:
    """Validated copy of `params` with every default filled in; raises ParamsError."""
    if not isinstance(params, dict):
        raise ParamsError("<top level>: the params file must be a mapping of sections")
    validator = _Validator(schema())
    errors = sorted(validator.iter_errors(params), key=lambda e: (len(e.absolute_path), _key(e.absolute_path)))
    if errors:
        raise ParamsError(_one_line(jsonschema.exceptions.best_match(errors)))
    full = fill_defaults(copy.deepcopy(params), schema())
    _cross_checks(full)
    return full


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader read as DVC's YAML 1.2 reader reads params: `1e-3` is a number
    (YAML 1.1 wants `1.0e-3`), and a key given twice is an error (PyYAML would keep the last)."""


_Loader.yaml_implicit_resolvers = {k: [r for r in v if r[0] != "tag:yaml.org,2002:float"]
                                   for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def _no_duplicates(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise ParamsError(f"{mark.name}:{mark.line + 1}: key {key!r} given twice")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def read_yaml(path: str | Path):
    """A params file as the stages, Snakemake and DVC must all read it; ParamsError naming the
    file and line on a syntax error or a duplicated key."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        with open(path) as fh:
            return yaml.load(fh, Loader=_Loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ParamsError(f"{where}: not valid YAML ({getattr(err, 'problem', None) or str(err).splitlines()[0]})") from None


def load_params(path: str | Path) -> dict:
    raw = read_yaml(path)
    if raw is None:  # an empty file would silently mean "the schema's default study"
        raise ParamsError(f"{path}: the params file is empty")
    return validate(raw)


def load_or_exit(path: str | Path) -> dict:
    """For stage scripts: one line on stderr and exit code 2 on bad params."""
    try:
        return load_params(path)
    except ParamsError as err:
        print(f"params error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_PARAMS) from None


# ---------------------------------------------------------------------------- the run grid

def run_name(optimizer: str, clip, noise, seed) -> str:
    """Run id; str() of the raw YAML values, exactly as DVC interpolates them in dvc.yaml."""
    return f"{optimizer}_c{clip}_noise{noise}_seed{seed}"


def subset_run_name(subset: str, seed) -> str:
    """Run id of a cross-generalization run (E6): plain SGD on e-train or h-train."""
    return f"sgd_c0_{subset}_seed{seed}"


def run_grid(params: dict, subsets: bool = True) -> list[dict]:
    """One dict per training run: noise × optimizer × seed, the replicates' extra seeds, then
    (E6) subset × seed, then the
    E7 runs in MC's conditions (mc.noise × mc.seeds), in a stable order. `subsets=False` leaves
    out the E6 runs (the train stage's own grid is noise × optimizer × seed plus mc)."""
    runs = []
    for noise in params["corrupt"]["noise"]:
        for opt in params["train"]["optimizers"]:
            for seed in params["train"]["seeds"]:
                runs.append(dict(run=run_name(opt["name"], opt["clip"], noise, seed), noise=noise,
                                 optimizer=opt["name"], clip=opt["clip"], seed=seed, subset="full"))
    rep = params["replicates"]
    for cell in rep["cells"]:  # the order of dvc.yaml's matrix: cell, then seed
        for seed in rep["seeds"]:
            runs.append(dict(run=run_name(cell["name"], cell["clip"], cell["noise"], seed), noise=cell["noise"],
                             optimizer=cell["name"], clip=cell["clip"], seed=seed, subset="full"))
    if subsets:
        for subset in params["difficulty"]["subsets"]:
            for seed in params["train"]["seeds"]:
                runs.append(dict(run=subset_run_name(subset, seed), noise=0.0, optimizer="sgd", clip=0,
                                 seed=seed, subset=subset))
    for noise in params["mc"]["noise"]:
        for seed in params["mc"]["seeds"]:
            runs.append(dict(run=mc_run_name(noise, seed), noise=noise, optimizer="sgd", clip=0, seed=seed,
                             subset="full", conditions="mc"))
    return runs


def mc_run_name(noise, seed) -> str:
    """Run id of an E7 run in MC's own conditions (the mc section: a BatchNorm CNN, SGD)."""
    return f"mc_sgd_c0_noise{noise}_seed{seed}"


def mc_params(params: dict) -> dict:
    """The params an mc run trains with: the study's train section, with the mc section's model,
    learning rate, momentum and steps; plain SGD at a constant rate without weight decay (MC §5
    turned it off), no loss-share tracking (E2 is the main model's) and MC's m-coherence alone
    (m_coherence_label, train.coherence.label_part, is the main model's extra); data.n_train is the
    mc.n_train examples it trains on (so the run's checkpoint fingerprint and the cross-field
    rules of check_run see them)."""
    mc, t = params["mc"], params["train"]
    train = {**t, "lr": mc["lr"], "momentum": mc["momentum"], "steps": mc["steps"], "base": "sgd", "weight_decay": 0.0,
             "lr_schedule": "constant", "lr_milestones": [], "optimizers": [{"name": "sgd", "clip": 0}],
             "shares": {**t["shares"], "optimizers": []},
             "coherence": {**t["coherence"], "label_part": False}}
    data = {**params["data"], "n_train": mc["n_train"] or params["data"]["n_train"]}
    return {**params, "model": mc["model"], "train": train, "data": data}


def params_for(params: dict, spec: dict) -> dict:
    """The params one run of the grid trains with (mc runs and E6 runs differ from the study's)."""
    if spec.get("conditions") == "mc":
        return mc_params(params)
    return {**params, "train": {**params["train"], "steps": steps_of(params, spec.get("subset", "full"))}}


def check_run(params: dict, optimizer: dict) -> None:
    """The params file's cross-field rules (clip < B/2, B % 3 for m3, ...) for one run with
    `optimizer` and `params` (from params_for); raises ParamsError. Rules about the whole grid
    (replicates name optimizers of train.optimizers) do not apply to a single run."""
    one = {"train": {**params["train"], "optimizers": [optimizer]},
           "replicates": {"cells": [], "seeds": []}}
    validate({**params, **one})


def steps_of(params: dict, subset: str = "full") -> int:
    """Optimizer steps of a run: train.steps, or difficulty.subset_steps for an E6 run."""
    if subset != "full" and params["difficulty"]["subset_steps"]:
        return params["difficulty"]["subset_steps"]
    return params["train"]["steps"]


# Keys of each stage's params that, when changed, must re-run that stage (the grid lists are
# not among them: adding a noise level must not retrain the others). dvc.yaml lists the same
# keys; tests/test_engines.py checks that it does.
STAGE_KEYS = {
    "prepare": ["data"],
    "corrupt": ["corrupt.seed"],
    "train": ["model", "train.base", "train.lr", "train.rolling_warmup", "train.winsorize_reading",
              "train.bn_priming", "train.bn_prime_steps", "train.momentum", "train.weight_decay",
              "train.lr_schedule", "train.lr_milestones", "train.lr_gamma", "train.batch_size",
              "train.steps", "train.eval_per_decade", "train.eval_train_sample", "train.coherence",
              "train.shares", "train.amp", "train.channels_last", "train.tf32", "difficulty.el2n_epoch"],
    "train_subset": ["model", "train.base", "train.lr", "train.bn_priming", "train.bn_prime_steps",
                     "train.momentum", "train.weight_decay",
                     "train.lr_schedule", "train.lr_milestones", "train.lr_gamma", "train.batch_size",
                     "train.steps", "train.eval_per_decade", "train.eval_train_sample", "train.coherence",
                     "train.shares", "train.amp", "train.channels_last", "train.tf32", "difficulty.el2n_epoch",
                     "difficulty.subset_steps"],
    "train_mc": ["mc.model", "mc.lr", "mc.momentum", "mc.steps", "mc.n_train", "train.bn_priming",
                 "train.bn_prime_steps", "train.batch_size", "train.eval_per_decade",
                 "train.eval_train_sample", "train.coherence", "train.amp", "train.channels_last", "train.tf32",
                 "difficulty.el2n_epoch"],
    "easyhard": ["model", "difficulty.threshold", "difficulty.lr", "difficulty.batch_size",
                 "difficulty.max_steps", "train.tf32"],
    "difficulty": ["difficulty.seeds", "difficulty.pools", "difficulty.pool_size",
                   "difficulty.split_ratio", "difficulty.split_seed"],
    "aggregate": ["study"],
    "report": ["study", "findings"],
}


def stage_params(params: dict, stage: str) -> dict:
    """The values behind STAGE_KEYS[stage], for Snakemake's `params:` (rerun on change). The data
    section goes without the keys its dataset does not read (data.path of npz, data.resize and
    data.image_size of imagefolder): a study of another dataset keeps its values, and its
    prepared data, when they come or change. The model sections likewise (model.arch, .path and
    .kwargs are read by the torchvision and import models only)."""
    out = {}
    for dotted in STAGE_KEYS[stage]:
        node = params
        for part in dotted.split("."):
            node = node[part]
        used = {"data": sources.used, "model": model_sources.used, "mc.model": model_sources.used}.get(dotted)
        out[dotted] = used(node) if used else node
    return out
