"""Models a researcher brings (cglib.model_sources), in-process: a torchvision arch by name and a
function by import path, built, checked from the params alone and on the meta device, labelled
and priced. The stages' refusals and training runs are in test_model_sources_stage.py."""
import copy
import sys

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from cglib import config, model_sources as ms, tables
from cglib.models import build_model
from conftest import ROOT, tiny_params

TV = {"name": "torchvision", "arch": "squeezenet1_1", "kwargs": {}}

USER_MODULE = '''
import torch
from torch import nn

CALLS = []


def build(input_shape, num_classes, width=8):
    CALLS.append((input_shape, num_classes, width))
    return nn.Sequential(nn.Conv2d(input_shape[0], width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(width, num_classes))


def other(input_shape, num_classes, width=8):
    return nn.Sequential(nn.Flatten(), nn.Linear(1, num_classes))


def mlp(input_shape, num_classes, hidden=32):
    n = 1
    for s in input_shape:
        n *= s
    return nn.Sequential(nn.Flatten(), nn.Linear(n, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def not_a_module(input_shape, num_classes):
    return "net"


NOT_CALLABLE = 3


def raises(input_shape, num_classes):
    raise ValueError("width must be even")


def three_outputs(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(3))


def batch_stats(input_shape, num_classes):  # BatchNorm that uses the batch's statistics even in eval mode
    return nn.Sequential(nn.Conv2d(input_shape[0], 4, 3), nn.BatchNorm2d(4, track_running_stats=False),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))


def meta_shy(input_shape, num_classes):  # reads a value while building: not on the meta device
    width = int(torch.tensor(4).item())
    return nn.Sequential(nn.Conv2d(input_shape[0], width, 3), nn.BatchNorm2d(width), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(width, num_classes))
'''


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    """A package of the study's folder, named after the test (no two tests share a module)."""
    name = "mym_" + "".join(c if c.isalnum() else "_" for c in tmp_path.name)
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / name / "tiny.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield name
    for mod in [m for m in sys.modules if m.split(".")[0] == name]:
        del sys.modules[mod]


def imported(package, function, **kwargs):
    return {"name": "import", "path": f"{package}.tiny:{function}", "kwargs": kwargs}


def params_with(model, **train):
    p = tiny_params(**train)
    p["model"] = model
    return p


def refused(p) -> str:
    with pytest.raises(config.ParamsError) as err:
        config.validate(p)
    assert "\n" not in str(err.value)
    return str(err.value)


# ---------------------------------------------------------------------------- building

def test_torchvision_arch_gets_num_classes_from_the_data_and_its_kwargs():
    torch.manual_seed(0)
    m = {"name": "torchvision", "arch": "mobilenet_v3_small", "kwargs": {"width_mult": 0.25}}
    net = build_model(m, (3, 32, 32), 7).eval()
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    n = sum(p.numel() for p in net.parameters())
    same = torchvision.models.mobilenet_v3_small(width_mult=0.25, num_classes=7)
    assert n == sum(p.numel() for p in same.parameters())  # kwargs reach the constructor
    assert n < sum(p.numel() for p in torchvision.models.mobilenet_v3_small(num_classes=7).parameters())
    assert not net._forward_pre_hooks  # three channels: nothing repeated


def test_nothing_downloads(monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("a download was asked for")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    build_model({**TV, "kwargs": {"weights": None}}, (3, 32, 32), 4)  # null is fine, and means none


def test_one_channel_images_are_repeated_to_the_three_the_archs_take():
    torch.manual_seed(0)
    net = build_model(TV, (1, 32, 32), 5).eval()
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(net(x), net(x.repeat(1, 3, 1, 1)))  # the hook passes 3 channels through
    assert net.features[0].in_channels == 3 and list(net.state_dict()) == list(
        torchvision.models.squeezenet1_1(num_classes=5).state_dict())  # torchvision's names kept


def test_import_path_calls_that_function_with_shape_classes_and_kwargs(user_package):
    net = build_model(imported(user_package, "build", width=5), (1, 8, 8), 3)
    module = sys.modules[f"{user_package}.tiny"]
    assert module.CALLS == [((1, 8, 8), 3, 5)]
    assert net[0].out_channels == 5 and net(torch.randn(2, 1, 8, 8)).shape == (2, 3)


@pytest.mark.parametrize("path,says", [
    ("{p}.nothere:build", "model.path: no module '{p}.nothere' in {cwd} or the environment (put your package "
                          "next to the Snakefile, or pip install it)"),
    ("{p}.tiny:buidl", "model.path: module {p}.tiny ({cwd}/{p}/tiny.py) has no attribute 'buidl'"),
    ("{p}.tiny:NOT_CALLABLE", "model.path: {p}.tiny:NOT_CALLABLE is a int, not callable"),
    ("{p}.tiny:not_a_module", "model.path: {p}.tiny:not_a_module returned a str, not a torch.nn.Module"),
    ("{p}.tiny:raises", "model.path: {p}.tiny:raises(1, 8, 8), 3 classes, kwargs {{}} fails: ValueError: width "
                        "must be even"),
])
def test_import_path_errors_name_model_path(user_package, tmp_path, path, says):
    m = {"name": "import", "path": path.format(p=user_package), "kwargs": {}}
    with pytest.raises(ms.ModelError) as err:
        ms.build(m, (1, 8, 8), 3)
    assert str(err.value) == says.format(p=user_package, cwd=tmp_path)
    p = params_with(m)  # validation says the same: images (1, 8, 8) of 3 classes in an npz file
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "own.npz", x_train=rng.integers(0, 256, (30, 8, 8), dtype=np.uint8), y_train=np.arange(30) % 3,
             x_test=rng.integers(0, 256, (6, 8, 8), dtype=np.uint8), y_test=np.arange(6) % 3)
    p["data"] = {"dataset": "npz", "path": "own.npz", "n_train": 30}
    p["train"]["batch_size"] = 10
    assert refused(p) == says.format(p=user_package, cwd=tmp_path)


# ---------------------------------------------------------------------------- params alone

@pytest.mark.parametrize("model,says", [
    ({**TV, "kwargs": {"num_classes": 10}}, "model.kwargs.num_classes: comes from the data; remove it"),
    ({**TV, "kwargs": {"weights": "DEFAULT"}}, "model.kwargs.weights: must be null: models train from scratch"),
    ({**TV, "kwargs": {"pretrained": True}}, "model.kwargs.pretrained: must be null"),
    ({"name": "import", "path": "m.n:f", "kwargs": {"input_shape": [1]}}, "model.kwargs.input_shape: comes from"),
    ({"name": "import", "path": "mymodels/net.py"}, "model.path: 'mymodels/net.py' is not package.module:function"),
    ({"name": "import"}, "model.path: '' is not package.module:function"),
    ({"name": "torchvision"}, "model.arch: name torchvision needs a torchvision.models constructor"),
    ({"name": "mlp", "arch": "resnet50"}, "model.arch: only name torchvision reads it, not mlp"),
    ({"name": "cnn", "kwargs": {"width": 2}}, "model.kwargs: only name torchvision or import reads it, not cnn"),
    ({"name": "torchvision", "arch": "resnet18", "path": "a:b"}, "model.path: only name import reads it"),
    ({"name": "torchvision", "arch": "resnet5O"}, "model.arch: 'resnet5O' is not a torchvision.models classifier "
                                                  "(e.g. resnet50, "),
    ({"name": "torchvision", "arch": "fasterrcnn_resnet50_fpn"}, "model.arch: 'fasterrcnn_resnet50_fpn' is not a "
                                                                "torchvision.models classifier"),
])
def test_params_refusals_name_the_key(model, says):
    p = params_with(model)
    p["data"].update(dataset="npz", path="not-there-yet.npz")  # refused before any data are read
    assert refused(p).startswith(says)
    p["model"] = {"name": "mlp"}
    p["corrupt"]["noise"] = [0, 1]
    p["mc"] = {"noise": [1], "model": model}
    assert refused(p).startswith("mc." + says)  # mc.model, with its own key


def test_unknown_arch_with_nothing_close_names_a_few_valid_ones():
    assert refused(params_with({"name": "torchvision", "arch": "zzzz"})) == (
        "model.arch: 'zzzz' is not a torchvision.models classifier (e.g. resnet18, squeezenet1_1, "
        "mobilenet_v3_small; all: torchvision.models.list_models())")


# ---------------------------------------------------------------------------- on the meta device

def test_shapes_an_arch_cannot_take_are_refused_at_validation():
    assert refused(params_with({"name": "torchvision", "arch": "resnet18"})) == (  # synthetic: (10,)
        "model.arch: resnet18 needs images (C, H, W), and the data are feature vectors of shape (10,)")
    fashion = params_with({"name": "torchvision", "arch": "alexnet"})
    fashion["data"] = {"dataset": "fashion_mnist", "n_train": 200, "n_test": 100}
    assert refused(fashion).startswith("model.arch: torchvision alexnet cannot take inputs of shape (1, 28, 28): "
                                       "RuntimeError: ")
    fashion["model"] = {"name": "torchvision", "arch": "googlenet"}  # aux outputs in training mode
    assert refused(fashion) == ("model.arch: torchvision googlenet returns GoogLeNetOutputs in training mode on "
                                "inputs of shape (1, 28, 28); the pipeline needs (batch, 10) logits")
    fashion["model"]["kwargs"] = {"aux_logits": False, "init_weights": False}
    assert config.validate(fashion)["model"]["arch"] == "googlenet"


def test_an_imported_model_must_give_one_logit_per_class(user_package):
    assert refused(params_with(imported(user_package, "three_outputs"))) == (
        f"model.path: {user_package}.tiny:three_outputs returns (2, 3) in training mode on inputs of shape (10,); "
        "the pipeline needs (batch, 4) logits")
    assert config.validate(params_with(imported(user_package, "mlp", hidden=6)))["model"]["kwargs"] == {"hidden": 6}


def test_batchnorm_is_found_by_mode():
    resnet = torchvision.models.resnet18(num_classes=3)
    assert ms.mixing_layers(resnet, training=True)[:2] == [("bn1", "BatchNorm2d"), ("layer1.0.bn1", "BatchNorm2d")]
    assert ms.mixing_layers(resnet, training=False) == []  # running statistics: examples apart in eval mode
    assert ms.mixing_layers(torchvision.models.squeezenet1_1(), training=True) == []
    loose = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2, track_running_stats=False))
    assert ms.mixing_layers(loose, training=False) == [("1", "BatchNorm1d")]


def test_winsorized_sgd_is_refused_on_batchnorm_and_runs_without(user_package):
    winsorized = dict(optimizers=[{"name": "sgd", "clip": 0}, {"name": "winsorized", "clip": 2}])
    p = params_with({"name": "torchvision", "arch": "resnet18"}, **winsorized)
    p["data"] = {"dataset": "cifar10", "n_train": 200, "n_test": 100}
    assert refused(p) == (
        "train.optimizers: winsorized (E3) needs per-example gradients in training mode, which torchvision "
        "resnet18's layer 'bn1' (BatchNorm2d) mixes across the batch; use sgd, m3, rm3 or ra3 with it, or a model "
        "without BatchNorm")
    assert config.validate({**p, "model": TV})["model"] == {**TV, "path": "", "hidden": [512], "channels": [16, 32],
                                                            "pool": "avg"}
    sgd = copy.deepcopy(p)
    sgd["train"]["optimizers"] = [{"name": "sgd", "clip": 0}]
    config.validate(sgd)  # BatchNorm is fine without per-example gradients in training mode
    sgd["replicates"] = {"cells": [{"name": "winsorized", "clip": 1, "noise": 0.5}], "seeds": [5]}
    assert refused(sgd).startswith("replicates.cells: winsorized (E3) needs per-example gradients")
    p["model"] = imported(user_package, "batch_stats")  # refused whatever the optimizer: E8 runs in every run
    assert refused(sgd | {"model": p["model"], "replicates": {}}) == (
        f"model.path: {user_package}.tiny:batch_stats's layer '1' (BatchNorm2d) uses batch statistics even in eval "
        "mode (no running statistics), so the per-example gradients of E8 (GraNd), E7 and E2 would mix examples; "
        "give it track_running_stats=True")


def test_what_the_meta_device_cannot_build_is_left_to_the_train_stage(user_package):
    m = imported(user_package, "meta_shy")
    ms.check_model("model", m, (1, 8, 8), 3, "train.optimizers")  # validation: not judged here
    with pytest.raises(ms.ModelError, match=r"^train\.optimizers: winsorized \(E3\) .* layer '1' \(BatchNorm2d\)"):
        ms.check_model("model", m, (1, 8, 8), 3, "train.optimizers", cpu_fallback=True)
    ms.check_model("model", m, (1, 8, 8), 3, None, cpu_fallback=True)
    with pytest.raises(ms.ModelError, match=r"^model\.path: .* cannot take inputs of shape \(1, 2, 2\)"):
        ms.check_model("model", m, (1, 2, 2), 3, None, cpu_fallback=True)  # a 3×3 conv on 2×2, on the CPU
    assert ms.forward_cost(m, (1, 8, 8), 3) is None  # priced by the default then


# ---------------------------------------------------------------------------- keys, labels, costs

def test_built_in_sections_keep_their_stage_values_and_fingerprint_keys():
    p = config.load_params(ROOT / "params.yaml")
    assert config.stage_params(p, "train")["model"] == {"name": "mlp", "hidden": [256], "channels": [16, 32],
                                                        "pool": "avg"}  # as before model.arch/path/kwargs
    assert set(config.stage_params(p, "train_mc")["mc.model"]) == {"name", "hidden", "channels", "pool"}
    full = {"name": "torchvision", "arch": "resnet50", "path": "", "kwargs": {"a": 1}, "hidden": [512],
            "channels": [1], "pool": "avg"}
    assert ms.used(full) == {"name": "torchvision", "arch": "resnet50", "kwargs": {"a": 1}}
    assert ms.used({**full, "name": "import", "path": "a:b"}) == {"name": "import", "path": "a:b", "kwargs": {"a": 1}}


def test_labels_are_readable_and_distinct():
    labels = [tables.model_label(m) for m in (
        {"name": "resnet18"}, {"name": "torchvision", "arch": "resnet18", "kwargs": {}},
        {"name": "torchvision", "arch": "mobilenet_v3_small", "kwargs": {"width_mult": 0.5, "dropout": 0.1}},
        {"name": "import", "path": "mymodels.net:build", "kwargs": {}},
        {"name": "import", "path": "mymodels.net:build", "kwargs": {"widths": [8, 16]}},
        {"name": "import", "path": "other:build", "kwargs": {}})]
    assert labels == ["resnet18", "torchvision-resnet18", "torchvision-mobilenet_v3_small-dropout=0.1-width_mult=0.5",
                      "net.build", "net.build-widths=[8,16]", "other.build"]


def test_forward_cost_counts_multiply_adds_and_weights(user_package):
    assert ms.forward_cost(imported(user_package, "mlp", hidden=32), (1, 28, 28), 10) == (
        784 * 32 + 32 * 10, 784 * 32 + 32 + 32 * 10 + 10)
    macs, weights = ms.forward_cost({"name": "torchvision", "arch": "resnet18", "kwargs": {}}, (3, 32, 32), 10)
    assert weights == sum(p.numel() for p in torchvision.models.resnet18(num_classes=10).parameters())
    assert 30e6 < macs < 45e6  # ImageNet stem: 1.8 G at 224², scaled by (32 / 224)² plus the head


def test_study_input_without_reading_the_data(tmp_path):
    p = config.validate(tiny_params())
    assert ms.study_input(p["data"]) == ((10,), 4)
    assert ms.study_input({**p["data"], "dataset": "fashion_mnist"}) == ((1, 28, 28), 10)
    assert ms.study_input({**p["data"], "dataset": "npz", "path": str(tmp_path / "none.npz")}) is None
    folder = {**p["data"], "dataset": "imagefolder", "raw_dir": str(tmp_path), "image_size": 40}
    assert ms.study_input(folder) is None
    for split in ("train", "val"):
        for c in ("ant", "bee"):
            (tmp_path / split / c).mkdir(parents=True)
    assert ms.study_input(folder) == ((3, 40, 40), 2)


def test_winsorized_at_names_where_the_clip_is():
    p = config.validate(tiny_params())
    assert ms.winsorized_at(p) is None
    p["replicates"]["cells"] = [{"name": "winsorized", "clip": 0, "noise": 0}]  # clip 0 is SGD
    assert ms.winsorized_at(p) is None
    p["replicates"]["cells"][0]["clip"] = 1
    assert ms.winsorized_at(p) == "replicates.cells"
    p["train"]["optimizers"].append({"name": "winsorized", "clip": 2})
    assert ms.winsorized_at(p) == "train.optimizers"
