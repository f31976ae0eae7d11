"""The CUDA path, checked without a GPU: device plumbing, GPU options, card claiming, and the
GPU resources Snakemake plans.

How the device plumbing is checked. `fake_cuda()` runs real CPU arithmetic behind tensors that
say they live on cuda:0. A `FakeCudaTensor` is a wrapper subclass whose C++ device is meta, so
torch's own code never takes it for a CPU tensor: `.to("cpu")` must copy. A TorchDispatchMode
sees every op. A factory op or a `.to()` aimed at CUDA makes a fake CUDA tensor. An op that
mixes a fake CUDA tensor with a CPU tensor of one or more dimensions raises DeviceMismatch, as
real CUDA does (CPU scalars are allowed, as on CUDA). Host-to-device copies are counted.
torch.cuda's process calls are patched: is_available, device_count, set_device, RNG state and
the device name. The whole training loop then runs (a step of every gradient variant, the
robust aggregators, every probe, evaluation, checkpoint and resume) with real numbers, which
must match a CPU run.

Why not FakeTensorMode(device="cuda"). On this torch it builds fake CUDA tensors and runs
forward passes, but a backward pass needs a CUDA context ("hasPrimaryContext expects a valid
device index"), and data-dependent ops (.item(), masks, nonzero) raise. So no training step and
no probe could run under it.

What this cannot check. CUDA kernels themselves: numerics, TF32, and bf16 casting (autocast
follows the C++ device, so here it is entered but casts nothing). Forward-mode AD: functorch's
jvp does not take wrapper subclasses, so the loss-share probe falls back to its masked-backward
method here, as it does for any model without forward-mode derivatives. Also torch.compile on
CUDA, memory, speed and asynchronous copies. `make gpu-check` covers those on a GPU machine.
"""
import contextlib
import json
import os
import subprocess
import time
from unittest import mock

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from cglib import config, gpu
from conftest import PY, ROOT, run_stage, tiny_params, tool, venv_env, write_params

CUDA = torch.device("cuda", 0)


# ---------------------------------------------------------------------------- the fake device

class DeviceMismatch(RuntimeError):
    pass


class FakeCudaTensor(torch.Tensor):
    """CPU data (`elem`) behind a tensor whose `.device` is cuda:0 (its C++ device is meta)."""

    @staticmethod
    def __new__(cls, elem):
        r = torch.Tensor._make_wrapper_subclass(cls, elem.size(), strides=elem.stride(),
                                                storage_offset=elem.storage_offset(), dtype=elem.dtype,
                                                layout=elem.layout, device="meta",
                                                requires_grad=elem.requires_grad)
        r.elem = elem.detach()
        return r

    @property
    def device(self):
        return CUDA

    @property
    def is_cuda(self):
        return True

    def __repr__(self):
        return f"FakeCudaTensor({self.elem!r})"

    def __reduce_ex__(self, protocol):  # torch.save: as a CUDA tensor loaded with map_location="cpu"
        return self.elem.__reduce_ex__(protocol)

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise RuntimeError(f"{func} on a fake CUDA tensor outside fake_cuda()")


def _forward_ad() -> bool:
    import torch.autograd.forward_ad as fwAD
    from torch._C._functorch import TransformType, peek_interpreter_stack

    top = peek_interpreter_stack()
    return fwAD._current_level >= 0 or (top is not None and top.key() == TransformType.Jvp)


class FakeCuda(TorchDispatchMode):
    COPIES = (torch.ops.aten.copy_.default, torch.ops.aten._to_copy.default)

    def __init__(self):
        super().__init__()
        self.h2d = 0  # host → device copies

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if _forward_ad():  # the probe's "auto" method then falls back to masked backward passes
            raise NotImplementedError(f"{func}: forward-mode AD is not supported on the fake CUDA device")
        kwargs = dict(kwargs or {})
        flat, _ = tree_flatten((args, kwargs))
        fakes = [t for t in flat if isinstance(t, FakeCudaTensor)]
        plain = [t for t in flat if isinstance(t, torch.Tensor) and not isinstance(t, FakeCudaTensor)]
        dev = kwargs.get("device")
        to_cuda = dev is not None and torch.device(dev).type in ("cuda", "meta")
        to_cpu = dev is not None and torch.device(dev).type == "cpu"
        if dev is not None:
            kwargs["device"] = torch.device("cpu")
        gen = kwargs.get("generator")
        if to_cuda and gen is not None and gen.device.type != "cuda":
            raise DeviceMismatch(f"{func}: a CPU generator draws a CUDA tensor")
        if fakes and func not in self.COPIES:
            for t in plain:
                if t.dim() > 0:
                    raise DeviceMismatch(f"{func}: a CPU tensor of shape {tuple(t.shape)} meets CUDA tensors")
        if func is torch.ops.aten._to_copy.default and to_cuda and plain:
            self.h2d += 1
        out = func(*tree_map(lambda t: t.elem if isinstance(t, FakeCudaTensor) else t, args),
                   **tree_map(lambda t: t.elem if isinstance(t, FakeCudaTensor) else t, kwargs))
        if to_cpu or not (fakes or to_cuda):
            return out
        same = {id(t.elem): t for t in fakes} | {id(t): t for t in plain}  # in-place ops return their input

        def wrap(t):
            if isinstance(t, torch.Tensor) and not isinstance(t, FakeCudaTensor):
                return same[id(t)] if id(t) in same else FakeCudaTensor(t)
            return t
        return tree_map(wrap, out)


@contextlib.contextmanager
def fake_cuda(cards: int = 1):
    """Everything inside runs "on cuda:0"; torch's global flags are put back afterwards."""
    saved = dict(det=torch.are_deterministic_algorithms_enabled(),
                 warn=torch.is_deterministic_algorithms_warn_only_enabled(),
                 bench=torch.backends.cudnn.benchmark, cudnn_det=torch.backends.cudnn.deterministic,
                 matmul=torch.backends.cuda.matmul.fp32_precision, conv=torch.backends.cudnn.conv.fp32_precision,
                 overwrite=torch.__future__.get_overwrite_module_params_on_conversion(),
                 cublas=os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    mode = FakeCuda()
    patches = [("is_available", lambda: True), ("device_count", lambda: cards), ("set_device", lambda d: None),
               ("get_device_name", lambda d=None: "Fake GPU"), ("is_bf16_supported", lambda *a, **k: True),
               ("get_rng_state", lambda device="cuda": torch.zeros(16, dtype=torch.uint8)),
               ("set_rng_state", lambda state, device="cuda": None),
               ("_lazy_init", lambda: None)]  # torch's C++ calls it before a .to("cuda")
    try:
        with contextlib.ExitStack() as stack:
            for name, fn in patches:
                stack.enter_context(mock.patch(f"torch.cuda.{name}", fn))
            # Module.to() must build new Parameters around the fake tensors, not set .data
            torch.__future__.set_overwrite_module_params_on_conversion(True)
            stack.enter_context(mode)
            yield mode
    finally:
        torch.use_deterministic_algorithms(saved["det"], warn_only=saved["warn"])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved["bench"], saved["cudnn_det"]
        torch.backends.cuda.matmul.fp32_precision = saved["matmul"]
        torch.backends.cudnn.conv.fp32_precision = saved["conv"]
        torch.__future__.set_overwrite_module_params_on_conversion(saved["overwrite"])
        if saved["cublas"] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def test_the_fake_device_catches_a_cpu_tensor():
    with fake_cuda():
        model = torch.nn.Linear(3, 2).to("cuda:0")
        x = torch.randn(4, 3).to("cuda:0")
        assert isinstance(model.weight, FakeCudaTensor) and model.weight.device == CUDA
        F.cross_entropy(model(x), torch.zeros(4, dtype=torch.long, device=x.device)).backward()
        assert model.weight.grad.device == CUDA
        with pytest.raises(DeviceMismatch, match="CPU tensor of shape"):
            F.cross_entropy(model(x), torch.zeros(4, dtype=torch.long))  # labels left on the CPU
        with pytest.raises(DeviceMismatch):
            x[torch.arange(2)]  # indices on the CPU: a host→device copy and a sync on every call
        assert x.cpu().numpy().shape == (4, 3) and not isinstance(x.cpu(), FakeCudaTensor)


# ---------------------------------------------------------------------------- training runs

def _params(optimizer="sgd", clip=0, cnn=False, **train):
    raw = tiny_params(optimizers=[{"name": optimizer, "clip": clip}], steps=20, batch_size=15,
                      eval_per_decade=3, checkpoint_every=5,
                      coherence={"train_sample": 30, "test_sample": 20, "chunk_size": 7},
                      shares={"steps": 4, "nulls": 2, "optimizers": [optimizer], "chunk_size": 16}, **train)
    raw["data"]["n_train"] = 90
    p = config.validate(raw)
    if cnn:  # the schema keeps the cnn off synthetic data; the loop does not care
        p["model"] = {"name": "cnn", "channels": [4, 6]}
    return p


def _data(cnn=False):
    g = torch.Generator().manual_seed(0)
    shape = (1, 8, 8) if cnn else (10,)
    x_train, x_test = torch.randn(90, *shape, generator=g), torch.randn(40, *shape, generator=g)
    return {"x_train": x_train, "y_train": torch.randint(0, 3, (90,), generator=g), "x_test": x_test,
            "y_test": torch.randint(0, 3, (40,), generator=g), "input_shape": shape, "num_classes": 3}


def _train(p, cnn=False, device="cpu", checkpoint=None, log=None, optimizer=None):
    """One run through cglib.train.train_run: probes on (E2, E7, E8), difficulty (E5), an extra
    test set (E6), a third of the labels corrupt. Inputs arrive on the CPU, as a stage would
    hand over labels, masks and difficulty from its tables."""
    from cglib.train import train_run

    data = _data(cnn)
    corrupt = torch.arange(90) % 3 == 0
    labels = torch.where(corrupt, (data["y_train"] + 1) % 3, data["y_train"])
    tests = {"e-test": (data["x_train"][:10], data["y_train"][:10])}
    if device != "cpu":
        data = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in data.items()}
        tests = {k: (x.to(device), y.to(device)) for k, (x, y) in tests.items()}
    opt = optimizer or p["train"]["optimizers"][0]
    spec = dict(run="r", optimizer=opt["name"], clip=opt["clip"], noise=0.33, seed=0, subset="full")
    out = train_run(p, data, labels, corrupt, spec, checkpoint=checkpoint, log=log or (lambda *a: None),
                    progress=False, difficulty=torch.arange(90) % 4, tests=tests)
    return out, pd.DataFrame(out["rows"])


RUNS = [("sgd", 0, False), ("winsorized", 2, False), ("m3", 0, False), ("rm3", 0, False), ("ra3", 0, False),
        ("sgd", 0, True)]


@pytest.mark.parametrize("optimizer,clip,cnn", RUNS, ids=[f"{o}{'-cnn' if c else ''}" for o, _, c in RUNS])
def test_training_on_cuda_keeps_every_tensor_on_the_device(optimizer, clip, cnn, monkeypatch):
    """A run on the fake cuda:0 meets no CPU tensor (data, labels, masks, batch indices, probe
    samples, gradient history, BatchNorm priming) and gives the CPU run's numbers: E1 / E5 to
    the bit, E2 / E7 to rounding (the loss shares take the backward method here, see the
    module's docstring). Host→device copies are the setup's and one batch order per epoch."""
    from cglib import robust

    monkeypatch.setattr(robust, "_compile_mode", "0")  # CUDA's default ("auto" compiles for the CPU only)
    p = _params(optimizer, clip, cnn)
    if cnn:
        p["train"]["momentum"] = 0.9  # optimizer state on the device too
    cpu, cpu_rows = _train(p, cnn)
    with pytest.warns(UserWarning, match="forward-mode AD unavailable"), fake_cuda() as mode:
        out, rows = _train(p, cnn, "cuda:0")
    assert out["device"] == {"type": "cuda", "name": "Fake GPU", "amp": "none", "channels_last": False,
                             "tf32": False}
    assert cpu["device"] == {"type": "cpu", "amp": "none", "channels_last": False, "tf32": False}
    key = ["experiment", "step", "split", "metric", "layer", "null"]
    both = cpu_rows.merge(rows, on=[k for k in key if k in rows], suffixes=("_cpu", "_cuda"))
    assert len(both) == len(rows) == len(cpu_rows)
    exact = both["experiment"].isin(["E1", "E5"])
    assert (both.loc[exact, "value_cpu"] == both.loc[exact, "value_cuda"]).all()
    assert both["value_cuda"].to_numpy() == pytest.approx(both["value_cpu"].to_numpy(), rel=1e-5, abs=1e-7)
    pd.testing.assert_frame_equal(out["scores"], cpu["scores"], rtol=1e-6)
    from cglib.models import build_model
    # once per run: the test's 6 inputs, the model's tensors, labels, corrupt mask and
    # difficulty (3), the coherence samples (2), GraNd (1), the loss-share designations (1 + 2
    # nulls); then one batch order per epoch, of training and of BatchNorm priming's 40 steps
    setup = 6 + len(build_model(p["model"], _data(cnn)["input_shape"], 3).state_dict()) + 3 + 2 + 1 + 3
    epochs = 20 * 15 // 90 + 1 + cnn * -(-40 * 15 // 90)
    assert mode.h2d <= setup + epochs, f"{mode.h2d} host→device copies in a {epochs}-epoch run"


def test_a_killed_cuda_run_resumes_on_the_device(tmp_path):
    """Checkpoint on the fake device, crash, resume: model, momentum, RM3 history, probe state
    come back to the device, and the run ends with the unbroken run's numbers."""
    p = _params("rm3", momentum=0.9)

    class Killed(Exception):
        pass

    def kill_at_step_20(line):
        if line.split()[:1] == ["20"]:  # the eval table's row of the last step: checkpoint 15 is written
            raise Killed

    with pytest.warns(UserWarning), fake_cuda():
        _, whole = _train(p, device="cuda:0")
    ckpt = tmp_path / "run.pt"
    with pytest.warns(UserWarning), fake_cuda(), pytest.raises(Killed):
        _train(p, device="cuda:0", checkpoint=ckpt, log=kill_at_step_20)
    assert torch.load(ckpt, weights_only=False)["step"] == 15
    logs = []
    with pytest.warns(UserWarning), fake_cuda():
        _, resumed = _train(p, device="cuda:0", checkpoint=ckpt, log=logs.append)
    assert any("resumed from" in line for line in logs)
    pd.testing.assert_frame_equal(resumed, whole)


def test_a_cpu_index_left_in_the_loop_fails_the_check(monkeypatch):
    """The check has teeth: an evaluation sample drawn on the CPU and left there fails it."""
    import cglib.train

    monkeypatch.setattr(cglib.train, "fixed_sample", lambda n, size, seed, device="cpu": torch.arange(n))
    with pytest.raises(DeviceMismatch), fake_cuda():
        _train(_params(), device="cuda:0")


# ---------------------------------------------------------------------------- GPU options

def test_gpu_options_take_effect_on_cuda_only(monkeypatch):
    """amp, channels_last, tf32 act on CUDA (bf16 autocast around the training forward passes
    only; a channels-last conv net; TF32 flags), are recorded as they took effect, and change
    nothing on the CPU: there the rows are those of a run without them."""
    import cglib.train

    on = dict(amp="bf16", channels_last=True, tf32=True)
    entered, models = [], []
    real_autocast, real_build = torch.autocast, cglib.train.build_model

    def autocast(device_type, dtype=None, **kw):
        entered.append((device_type, dtype))
        return real_autocast(device_type, dtype=dtype, **kw)

    monkeypatch.setattr(torch, "autocast", autocast)
    monkeypatch.setattr(cglib.train, "build_model", lambda *a: models.append(real_build(*a)) or models[-1])
    p = _params("sgd", cnn=True, **on)
    with pytest.warns(UserWarning), fake_cuda():
        out, _ = _train(p, cnn=True, device="cuda:0")
        assert torch.backends.cuda.matmul.fp32_precision == torch.backends.cudnn.conv.fp32_precision == "tf32"
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    assert out["device"] == {"type": "cuda", "name": "Fake GPU", "amp": "bf16", "channels_last": True, "tf32": True}
    assert entered == [("cuda", torch.bfloat16)] * 20  # one forward pass per step; no evaluation, no probe
    conv = next(m for m in models[-1].modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)

    entered.clear()  # a winsorized run stays fp32 (per-example order statistics)
    with pytest.warns(UserWarning), fake_cuda():
        out, _ = _train(_params("winsorized", 2, amp="bf16"), device="cuda:0")
    assert out["device"]["amp"] == "none" and entered == []

    off, off_rows = _train(_params("sgd", cnn=True), cnn=True)
    cpu, cpu_rows = _train(p, cnn=True)
    assert cpu["device"] == off["device"] == {"type": "cpu", "amp": "none", "channels_last": False, "tf32": False}
    pd.testing.assert_frame_equal(cpu_rows, off_rows)
    assert entered == [] and not torch.are_deterministic_algorithms_enabled()


def test_params_spell_the_device_and_gpu_options():
    base = tiny_params()
    for device in ("auto", "cpu", "cuda", "cuda:1"):
        assert config.validate({**base, "train": {**base["train"], "device": device}})["train"]["amp"] == "none"
    for key, bad in (("device", "gpu"), ("device", "cuda:x"), ("amp", "fp16"), ("tf32", "yes")):
        with pytest.raises(config.ParamsError, match=f"^train.{key}: "):
            config.validate({**base, "train": {**base["train"], key: bad}})


def test_run_json_records_the_device(tmp_path):
    p = tiny_params(steps=20, amp="bf16")
    params = write_params(tmp_path / "p.yaml", p)
    run_stage("prepare", "--params", params, "--out", tmp_path / "d.pt", check=True)
    run_stage("corrupt", "--params", params, "--data", tmp_path / "d.pt", "--noise", "0.5",
              "--out", tmp_path / "c.parquet", check=True)
    proc = run_stage("train", "--params", params, "--data", tmp_path / "d.pt", "--labels", tmp_path / "c.parquet",
                     "--noise", "0.5", "--optimizer", "sgd", "--seed", "0", "--out", tmp_path / "r", check=True)
    meta = json.loads((tmp_path / "r" / "run.json").read_text())
    assert meta["device"] == {"type": "cpu", "amp": "none", "channels_last": False, "tf32": False}
    assert "device cpu: amp none" in proc.stderr  # asked for bf16: the log says what took effect


# ---------------------------------------------------------------------------- cards

def test_pick_device_claims_a_card(tmp_path, monkeypatch):
    from cglib.models import pick_device

    chosen = []
    monkeypatch.setenv("CGLIB_GPU_LOCKS", str(tmp_path))
    monkeypatch.setattr(gpu, "_held", {})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        pick_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert pick_device("auto") == torch.device("cuda", 0) and chosen == [0]
    assert pick_device("cuda") == torch.device("cuda", 0)  # the same process keeps its card
    assert (tmp_path / "card-0.lock").read_text().strip() == str(os.getpid())
    with pytest.raises(RuntimeError, match="sees 2 CUDA device"):
        pick_device("cuda:2")
    for card in gpu._held.values():
        card.release()


def test_concurrent_claims_take_different_cards(tmp_path, monkeypatch):
    """Two claims on a 2-card machine get cards 0 and 1; a third waits and, past its wait,
    fails with one clear line; when a card is released the next claim gets it. Lock files are
    named by the physical card (CUDA_VISIBLE_DEVICES), not by CUDA's index."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    a = gpu.claim(2, directory=tmp_path)
    b = gpu.claim(2, directory=tmp_path)
    assert {a.index, b.index} == {0, 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card-2.lock", "card-5.lock"]
    said = []
    t0 = time.monotonic()
    with pytest.raises(gpu.CardsBusy, match=r"all 2 card\(s\) held by other jobs for 0.3 s"):
        gpu.claim(2, wait=0.3, poll=0.05, directory=tmp_path, log=said.append)
    assert time.monotonic() - t0 >= 0.3 and len(said) == 1 and "waiting" in said[0]
    b.release()
    c = gpu.claim(2, wait=0.3, directory=tmp_path)
    assert c.index == b.index
    with pytest.raises(gpu.CardsBusy, match="card 0 held"):
        gpu.claim(2, want=0, wait=0, directory=tmp_path)
    a.release()
    c.release()


JOB = """
import os, sys, time, torch
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 2
torch.cuda.set_device = lambda i: None
from cglib.models import pick_device
print(pick_device("cuda"), flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.05)
"""


def test_concurrent_jobs_land_on_different_cards(tmp_path):
    """Three training processes on a (mocked) 2-card machine: the first two get cuda:0 and
    cuda:1, the third waits; the first is SIGKILLed (its lock goes with it) and the third then
    trains on its card. A job that may not wait fails with one line."""
    env = dict(os.environ, CGLIB_GPU_LOCKS=str(tmp_path / "locks"))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    start = lambda stop, **extra: subprocess.Popen(  # noqa: E731
        [PY, "-c", JOB, str(tmp_path / stop)], env={**env, **extra}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    first = start("stop1")
    got = [first.stdout.readline().strip()]
    second = start("stop2")
    got.append(second.stdout.readline().strip())
    assert sorted(got) == ["cuda:0", "cuda:1"]
    third = start("stop3")
    busy = start("stop4", CGLIB_GPU_WAIT="0.5")
    _, err = busy.communicate(timeout=60)
    assert busy.returncode != 0 and "held by other jobs for 0.5 s" in err.strip().splitlines()[-1]
    time.sleep(0.5)
    assert third.poll() is None  # still waiting for a card
    first.kill()
    first.wait()
    waited = third.stdout.readline()
    assert "all 2 card(s) held by other jobs" in waited and "waiting" in waited
    assert third.stdout.readline().strip() == got[0]
    for name in ("stop2", "stop3"):
        (tmp_path / name).touch()
    assert second.wait(timeout=60) == 0 and third.wait(timeout=60) == 0


# ---------------------------------------------------------------------------- planning

def test_gpu_slots(monkeypatch):
    monkeypatch.setattr(gpu, "nvidia_cards_visible", lambda: False)
    assert [gpu.gpu_slots(d) for d in ("cpu", "auto", "cuda", "cuda:3")] == [0, 0, 1, 1]
    monkeypatch.setattr(gpu, "nvidia_cards_visible", lambda: True)
    assert gpu.gpu_slots("auto") == 1 and gpu.gpu_slots("cpu") == 0


def test_hidden_cards_are_not_visible(monkeypatch, tmp_path):
    (tmp_path / "0000:00:1e.0").mkdir()  # the driver's entry for one card
    monkeypatch.setattr(gpu, "NVIDIA_GPUS", tmp_path)
    for name in ("SLURM_JOB_ID", "SLURM_GPUS", "SLURM_JOB_GPUS", "SLURM_GPUS_ON_NODE", "SLURM_STEP_GPUS",
                 "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    assert gpu.nvidia_cards_visible()
    for hidden in ("", "-1"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert not gpu.nvidia_cards_visible()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("SLURM_JOB_ID", "7")  # a SLURM job without a GPU: the node's card is not its own
    assert not gpu.nvidia_cards_visible()
    monkeypatch.setenv("SLURM_JOB_GPUS", "0")
    assert gpu.nvidia_cards_visible()


def _dry_run(workdir, device):
    p = config.read_yaml(ROOT / "studies" / "smoke.yaml")
    p["train"]["device"] = device
    (workdir / "study.yaml").write_text(json.dumps(p))  # JSON is YAML
    out = subprocess.run([tool("snakemake"), "-n", "--profile", "profiles/gpu",
                          "--configfile", "study.yaml"], cwd=workdir, capture_output=True, text=True,
                         timeout=300, env=venv_env())
    assert out.returncode == 0, out.stderr[-2000:]
    jobs = {}
    for block in out.stdout.split("\nrule ")[1:]:
        rule = block.split(":", 1)[0]
        res = next((line for line in block.splitlines() if line.strip().startswith("resources:")), "")
        jobs.setdefault(rule, set()).add(next((r.strip() for r in res.split(",") if r.strip().startswith("gpu=")), None))
    return jobs


TRAINING_RULES = {"train", "train_subset", "train_mc", "easyhard"}


@pytest.mark.parametrize("device,gpus", [("cuda", "gpu=1"), ("cpu", "gpu=0")])
def test_training_jobs_declare_a_gpu_when_the_device_is_cuda(workdir, device, gpus):
    """Planned on this GPU-less machine: with train.device cuda every training job asks for one
    card (profiles/gpu caps them at the number of cards); the other stages never do."""
    jobs = _dry_run(workdir, device)
    assert TRAINING_RULES <= set(jobs)
    for rule, declared in jobs.items():
        assert declared == ({gpus} if rule in TRAINING_RULES else {None}), rule


def test_gpu_check_without_cuda_is_one_line():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: make gpu-check runs for real")
    proc = subprocess.run([PY, str(ROOT / "scripts" / "gpu_check.py")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "no CUDA device" in proc.stderr
