"""Models a researcher brings: any `torchvision.models` classifier by name (model.name
torchvision, model.arch, model.kwargs) and a function of their own by import path (model.name
import, model.path "package.module:function", called as function(input_shape, num_classes,
**kwargs)).

cglib.models.build_model dispatches here. Validation comes in two parts: `check_params` reads
the params alone (no torch: the Snakefile plans without it), `check_model` builds the model on
the meta device (no weights in memory, nothing downloads) with the study's input shape, runs it
once in each mode and refuses what the experiments cannot take: an input shape the arch cannot
take, outputs that are not (batch, classes) logits, and layers that mix the examples of a batch
where per-example gradients are taken. The train stage runs the same check on the data it loaded
(where validation could not: the data not there yet, a model that cannot be built on meta).
Every refusal is a `ModelError`: one line starting with the params key.
"""
from __future__ import annotations

import contextlib
import difflib
import importlib
import json
import os
import re
import sys
import warnings

from cglib import sources

SOURCES = ("torchvision", "import")
# keys only some model names read: left out of the others' model section where it decides a
# rerun (config.stage_params) or a checkpoint's fingerprint, so the built-in models' stay as they were
OWN_KEYS = {"arch": ("torchvision",), "path": ("import",), "kwargs": SOURCES}
BUILT_IN_KEYS = ("hidden", "channels", "pool")  # what mlp / cnn read; nothing of the sources
NO_DOWNLOAD = ("weights", "pretrained")  # torchvision's ways of asking for trained weights
PATH_FORM = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
FEW_ARCHS = ("resnet18", "squeezenet1_1", "mobilenet_v3_small")  # named when nothing is close


class ModelError(ValueError):
    """A model the study cannot use; str(err) is one line starting with the params key."""


def _line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


# ---------------------------------------------------------------------------- params alone

def used(m: dict) -> dict:
    """The model section without the keys its name does not read (see OWN_KEYS)."""
    if m["name"] in SOURCES:
        return {k: v for k, v in m.items() if k not in BUILT_IN_KEYS and m["name"] in OWN_KEYS.get(k, SOURCES)}
    return {k: v for k, v in m.items() if k not in OWN_KEYS}


def check_params(key: str, m: dict) -> None:
    """What the params alone say is wrong with model section `m` (found at `key`)."""
    name, kwargs = m["name"], m.get("kwargs") or {}
    for field, owners in OWN_KEYS.items():
        if name not in owners and m.get(field) not in (None, "", {}):
            raise ModelError(f"{key}.{field}: only name {' or '.join(owners)} reads it, not {name}")
    if name == "torchvision" and not m.get("arch"):
        raise ModelError(f"{key}.arch: name torchvision needs a torchvision.models constructor, e.g. resnet18")
    if name == "import" and not PATH_FORM.match(m.get("path") or ""):
        raise ModelError(f"{key}.path: {m.get('path')!r} is not package.module:function")
    taken = ("num_classes", "input_shape") if name == "import" else ("num_classes",)
    for k in taken:  # the pipeline passes them from the data; a second value would contradict it
        if k in kwargs:
            raise ModelError(f"{key}.kwargs.{k}: comes from the data; remove it")
    if name == "torchvision":
        for k in NO_DOWNLOAD:
            if kwargs.get(k) not in (None, False):
                raise ModelError(f"{key}.kwargs.{k}: must be null: models train from scratch and nothing "
                                 f"is downloaded")


def label(m: dict) -> str:
    """Readable, distinct name in tables and figures: torchvision-<arch> (never the built-in
    resnet18's name) or <module>.<function> of an import path, then the kwargs if any."""
    if m["name"] == "torchvision":
        base = f"torchvision-{m['arch']}"
    else:
        module, _, function = m["path"].partition(":")
        base = f"{module.rsplit('.', 1)[-1]}.{function}"
    kwargs = m.get("kwargs") or {}
    return base + "".join(f"-{k}={json.dumps(v, separators=(',', ':')) if isinstance(v, (list, dict)) else v}"
                          for k, v in sorted(kwargs.items()))


def describe(m: dict) -> str:
    return f"torchvision {m['arch']}" if m["name"] == "torchvision" else m["path"]


def study_input(data: dict) -> tuple[tuple, int] | None:
    """(input shape, classes) of a data section without loading it; None when its files are not
    there yet (the train stage checks on the loaded data then). Image folders: the shape is
    image_size, and only the class folders are listed (never the images)."""
    if data["dataset"] == "synthetic":
        s = data["synthetic"]
        return (s["dim"],), s["classes"]
    if data["dataset"] == "imagefolder":
        try:
            classes = sources.folder_classes(sources.raw_root("imagefolder", data["raw_dir"]))
        except (sources.DataError, OSError):
            return None
        return (3, data["image_size"], data["image_size"]), len(classes)
    full = sources.full_shape(data)
    return (tuple(full[0]), full[3]) if full else None


# ---------------------------------------------------------------------------- building

def torchvision_archs() -> list[str]:
    from torchvision import models

    return models.list_models(module=models)  # the classifiers (not detection, video, ...)


def _torchvision_builder(key: str, arch: str):
    from torchvision import models

    archs = torchvision_archs()
    if arch not in archs:
        close = difflib.get_close_matches(arch, archs, n=3, cutoff=0.5) or FEW_ARCHS
        raise ModelError(f"{key}.arch: {arch!r} is not a torchvision.models classifier (e.g. {', '.join(close)}; "
                         f"all: torchvision.models.list_models())")
    return models.get_model_builder(arch)


def _gray_to_rgb(module, args):
    """torchvision's archs take 3 channels: a 1-channel image is repeated, as
    transforms.Grayscale(3) does (a pre-hook keeps the parameter names torchvision's)."""
    x = args[0]
    if x.dim() == 4 and x.shape[1] == 1:
        return (x.expand(-1, 3, -1, -1), *args[1:])
    return None


def torchvision_model(m: dict, input_shape: tuple, num_classes: int, key: str = "model"):
    builder = _torchvision_builder(key, m["arch"])
    kwargs = m.get("kwargs") or {}
    try:  # weights None: trained from scratch, nothing downloads (check_params refuses others)
        net = builder(**{**kwargs, "weights": None, "num_classes": num_classes})
    except Exception as err:
        if _meta_limit(err):
            raise
        field = "kwargs" if kwargs else "arch"
        raise ModelError(f"{key}.{field}: torchvision {m['arch']} with kwargs {kwargs} fails: {_line(err)}") from None
    if len(input_shape) == 3 and input_shape[0] == 1:
        net.register_forward_pre_hook(_gray_to_rgb)
    return net


def import_function(key: str, path: str):
    """The callable at "package.module:function", imported from the folder the pipeline runs in
    (put on sys.path, last: an installed package of the same name wins) or the environment."""
    module_name, _, attr = path.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    importlib.invalidate_caches()  # a module written since the last import is found
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            raise ModelError(f"{key}.path: no module {err.name!r} in {os.getcwd()} or the environment (put your "
                             f"package next to the Snakefile, or pip install it)") from None
        raise ModelError(f"{key}.path: importing {module_name} fails: {_line(err)}") from None
    except Exception as err:  # the module itself fails: its own error, one line
        raise ModelError(f"{key}.path: importing {module_name} fails: {_line(err)}") from None
    if not hasattr(module, attr):
        raise ModelError(f"{key}.path: module {module_name} ({getattr(module, '__file__', '?')}) has no "
                         f"attribute {attr!r}")
    function = getattr(module, attr)
    if not callable(function):
        raise ModelError(f"{key}.path: {path} is a {type(function).__name__}, not callable")
    return function


def imported_model(m: dict, input_shape: tuple, num_classes: int, key: str = "model"):
    from torch import nn

    function = import_function(key, m["path"])
    try:
        net = function(tuple(input_shape), num_classes, **(m.get("kwargs") or {}))
    except Exception as err:
        if _meta_limit(err):
            raise
        raise ModelError(f"{key}.path: {m['path']}{tuple(input_shape)}, {num_classes} classes, kwargs "
                         f"{m.get('kwargs') or {}} fails: {_line(err)}") from None
    if not isinstance(net, nn.Module):
        raise ModelError(f"{key}.path: {m['path']} returned a {type(net).__name__}, not a torch.nn.Module")
    return net


def build(m: dict, input_shape: tuple, num_classes: int, key: str = "model"):
    """The model of section `m` (name torchvision or import) for inputs of `input_shape`."""
    if m["name"] == "torchvision":
        return torchvision_model(m, input_shape, num_classes, key)
    return imported_model(m, input_shape, num_classes, key)


# ---------------------------------------------------------------------------- checking

def _meta_limit(err: BaseException) -> bool:
    """An error of the meta device itself (an op reading values, e.g. .item() or .tolist()), not
    of the model: such a model is checked on the CPU at the train stage instead."""
    import torch

    on_meta = torch.get_default_device().type == "meta"
    return on_meta and (isinstance(err, NotImplementedError) or "meta" in str(err).lower())


def mixing_layers(model, training: bool) -> list[tuple[str, str]]:
    """(name, type) of the layers that mix the examples of a batch: BatchNorm in training mode,
    and in eval mode the BatchNorm without running statistics (it still uses the batch's)."""
    from torch.nn.modules.batchnorm import _BatchNorm

    return [(name or "<root>", type(mod).__name__) for name, mod in model.named_modules()
            if isinstance(mod, _BatchNorm) and (training or mod.running_mean is None)]


def _forward(key: str, m: dict, net, input_shape: tuple, num_classes: int, device) -> None:
    """One pass in each mode on 2 examples (BatchNorm in training mode needs more than one);
    the loop needs a (batch, classes) tensor from both."""
    import torch

    field = "arch" if m["name"] == "torchvision" else "path"
    x = torch.zeros((2, *input_shape), device=device)
    for mode in ("training", "eval"):
        net.train(mode == "training")
        try:
            with torch.no_grad():
                out = net(x)
        except Exception as err:
            if _meta_limit(err):
                raise
            raise ModelError(f"{key}.{field}: {describe(m)} cannot take inputs of shape {tuple(input_shape)}: "
                             f"{_line(err)}") from None
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelError(f"{key}.{field}: {describe(m)} returns {got} in {mode} mode on inputs of shape "
                             f"{tuple(input_shape)}; the pipeline needs (batch, {num_classes}) logits")


def _refuse_mixing(key: str, m: dict, net, winsorized_at: str | None) -> None:
    field = "arch" if m["name"] == "torchvision" else "path"
    still = mixing_layers(net, training=False)
    if still:  # E8's GraNd takes per-example gradients in every run, E7 and E2 where asked
        name, kind = still[0]
        raise ModelError(f"{key}.{field}: {describe(m)}'s layer '{name}' ({kind}) uses batch statistics even in "
                         "eval mode (no running statistics), so the per-example gradients of E8 (GraNd), E7 and "
                         "E2 would mix examples; give it track_running_stats=True")
    mixing = mixing_layers(net, training=True)
    if winsorized_at and mixing:
        name, kind = mixing[0]
        raise ModelError(f"{winsorized_at}: winsorized (E3) needs per-example gradients in training mode, which "
                         f"{describe(m)}'s layer '{name}' ({kind}) mixes across the batch; use sgd, m3, rm3 or "
                         "ra3 with it, or a model without BatchNorm")


_CHECKED: set = set()  # checks passed in this process (a stage validates its params more than once)


def check_model(key: str, m: dict, input_shape: tuple, num_classes: int, winsorized_at: str | None = None,
                cpu_fallback: bool = False) -> None:
    """Build the model on the meta device and refuse what the study cannot run (module
    docstring). `winsorized_at`: the params key of a winsorized optimizer with clip > 0, if any
    (training-mode per-example gradients). A model the meta device cannot build or run is left
    to the train stage, which passes cpu_fallback=True and checks it on the CPU."""
    import torch

    done = json.dumps([key, m, list(input_shape), num_classes, winsorized_at], sort_keys=True, default=str)
    if done in _CHECKED:
        return
    if m["name"] == "torchvision" and len(input_shape) != 3:  # cheaper than any build
        raise ModelError(f"{key}.arch: {m['arch']} needs images (C, H, W), and the data are feature vectors "
                         f"of shape {tuple(input_shape)}")
    try:
        net = _built_and_run(key, m, input_shape, num_classes, torch.device("meta"))
    except ModelError:
        raise
    except Exception:  # a limit of the meta device (_meta_limit): every other failure is a ModelError
        if not cpu_fallback:
            return
        net = _built_and_run(key, m, input_shape, num_classes, torch.device("cpu"))
    _refuse_mixing(key, m, net, winsorized_at)
    _CHECKED.add(done)


def _built_and_run(key: str, m: dict, input_shape: tuple, num_classes: int, device):
    import torch

    with torch.device(device), _quiet():
        net = build(m, input_shape, num_classes, key)
        _forward(key, m, net, input_shape, num_classes, device)
    return net


@contextlib.contextmanager
def _quiet():
    """torchvision's FutureWarnings about its own init (googlenet, inception) would repeat on
    every validation; the train stage's real build still shows them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def forward_cost(m: dict, input_shape: tuple, num_classes: int) -> tuple[float, int] | None:
    """(multiply-adds of one example's forward pass, weights), counted on the meta device by
    torch's FlopCounterMode (every matmul and convolution, attention included); None when the
    model cannot be built or run there."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with torch.device("meta"), _quiet():
            net = build(m, input_shape, num_classes).eval()
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                net(torch.zeros((1, *input_shape)))
    except Exception:
        return None
    return counter.get_total_flops() / 2, sum(p.numel() for p in net.parameters())


# ---------------------------------------------------------------------------- a study's models

def winsorized_at(p: dict) -> str | None:
    """The params key of a winsorized optimizer with clip > 0 (per-example gradients in training
    mode), in the train grid or the replicates; None without one."""
    if any(o["name"] == "winsorized" and o["clip"] for o in p["train"]["optimizers"]):
        return "train.optimizers"
    if any(c["name"] == "winsorized" and c["clip"] for c in p["replicates"]["cells"]):
        return "replicates.cells"
    return None


def check_study(p: dict) -> None:
    """config's checks of the study's models: model, and mc.model when there are mc runs (plain
    SGD). The arch's name and the import are checked even before the data are there."""
    sections = [("model", p["model"], winsorized_at(p))]
    if p["mc"]["noise"]:
        sections.append(("mc.model", p["mc"]["model"], None))
    for key, m, winsorized in sections:
        check_params(key, m)
        if m["name"] not in SOURCES:
            continue
        if m["name"] == "torchvision":
            _torchvision_builder(key, m["arch"])
        else:
            import_function(key, m["path"])
        data = study_input(p["data"])
        if data is not None:
            check_model(key, m, *data, winsorized_at=winsorized)
