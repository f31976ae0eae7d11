"""cglib.gpu in-process, without a GPU: which cards are visible, lock files and their names,
claiming with and without waiting, the process's card, and the CUDA setup flags."""
import os
import tempfile
import threading
import time
import types
from pathlib import Path

import pytest
import torch

from cglib import gpu

SLURM_GPU_VARS = ("SLURM_GPUS", "SLURM_JOB_GPUS", "SLURM_GPUS_ON_NODE", "SLURM_STEP_GPUS")


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("SLURM_JOB_ID", *SLURM_GPU_VARS, "CUDA_VISIBLE_DEVICES", "CGLIB_GPU_LOCKS", "CGLIB_GPU_WAIT"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_cards_visible_spellings_of_none_and_slurm_gpus(clean_env, tmp_path):
    cards = tmp_path / "gpus"
    clean_env.setattr(gpu, "NVIDIA_GPUS", cards)
    assert not gpu.nvidia_cards_visible()  # no driver folder
    cards.mkdir()
    assert not gpu.nvidia_cards_visible()  # a driver that lists no card
    (cards / "0000:00:1e.0").mkdir()
    assert gpu.nvidia_cards_visible()
    for hidden in ("none", "NoDevFiles", " -1 "):
        clean_env.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert not gpu.nvidia_cards_visible(), hidden
    clean_env.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert gpu.nvidia_cards_visible()
    clean_env.setenv("SLURM_JOB_ID", "7")
    assert not gpu.nvidia_cards_visible()
    for name in SLURM_GPU_VARS:
        clean_env.setenv(name, "1")
        assert gpu.nvidia_cards_visible(), name
        clean_env.delenv(name)


def test_gpu_slots_of_each_device(monkeypatch):
    monkeypatch.setattr(gpu, "nvidia_cards_visible", lambda: True)
    assert [gpu.gpu_slots(d) for d in ("cpu", "auto", "cuda", "cuda:1")] == [0, 1, 1, 1]
    monkeypatch.setattr(gpu, "nvidia_cards_visible", lambda: False)
    assert [gpu.gpu_slots(d) for d in ("cpu", "auto", "cuda", "cuda:1")] == [0, 0, 1, 1]


def test_lock_dir(clean_env, tmp_path):
    assert gpu.lock_dir() == Path(tempfile.gettempdir()) / f"cglib-gpu-locks-{os.getuid()}"
    for off in ("off", "OFF", "none", "0"):
        clean_env.setenv("CGLIB_GPU_LOCKS", off)
        assert gpu.lock_dir() is None, off
    clean_env.setenv("CGLIB_GPU_LOCKS", str(tmp_path))
    assert gpu.lock_dir() == tmp_path


def test_card_keys(clean_env):
    assert gpu.card_keys(3) == ["0", "1", "2"]
    clean_env.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    assert gpu.card_keys(2) == ["4", "5"]
    clean_env.setenv("CUDA_VISIBLE_DEVICES", "GPU-ab:c/d, 7")
    assert gpu.card_keys(2) == ["GPU-ab_c_d", "7"]
    clean_env.setenv("CUDA_VISIBLE_DEVICES", "3")  # fewer entries than cards: CUDA's own indices
    assert gpu.card_keys(2) == ["0", "1"]
    clean_env.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu.card_keys(1) == ["0"]


def test_claim_a_wanted_card_and_release(tmp_path):
    lock = gpu.claim(3, want=2, directory=tmp_path / "locks")
    assert lock.index == 2 and lock.path == tmp_path / "locks" / "card-2.lock"
    assert lock.path.read_text() == f"{os.getpid()}\n"
    with pytest.raises(gpu.CardsBusy, match=r"^card 2 held by other jobs for 0 s \(locks in "):
        gpu.claim(3, want=2, wait=0, directory=tmp_path / "locks")
    t0 = time.monotonic()
    with pytest.raises(gpu.CardsBusy, match=r"^card 2 held by other jobs for 0.01 s"):
        gpu.claim(3, want=2, wait=0.01, directory=tmp_path / "locks")  # one poll (0.5 s) and out
    assert time.monotonic() - t0 >= 0.4
    first = gpu.claim(3, directory=tmp_path / "locks")
    assert first.index == 0  # the first free one
    lock.release()
    lock.release()  # a second release is a no-op
    again = gpu.claim(3, want=2, wait=0, directory=tmp_path / "locks")
    assert again.index == 2
    again.release()
    first.release()


def test_claim_waits_until_a_card_is_freed(tmp_path):
    held = gpu.claim(1, directory=tmp_path)
    said = []
    timer = threading.Timer(0.3, held.release)
    timer.start()
    t0 = time.monotonic()
    got = gpu.claim(1, poll=0.05, directory=tmp_path, log=said.append)  # no wait limit
    assert time.monotonic() - t0 >= 0.25 and got.index == 0
    assert said == [f"all 1 card(s) held by other jobs (locks in {tmp_path}): waiting for one to finish"]
    got.release()
    timer.join()


def test_card_for_process(clean_env, tmp_path):
    clean_env.setattr(gpu, "_held", {})
    clean_env.setenv("CGLIB_GPU_LOCKS", "off")
    assert gpu.card_for_process(2) == 0 and gpu.card_for_process(2, 1) == 1 and gpu._held == {}
    clean_env.setenv("CGLIB_GPU_LOCKS", str(tmp_path))
    assert gpu.card_for_process(2, 1) == 1
    assert gpu.card_for_process(2) == 1 and gpu.card_for_process(2, 1) == 1  # kept
    assert gpu.card_for_process(2, 0) == 0  # another card asked for: claimed too
    held = gpu._held
    assert sorted(held) == [0, 1]
    clean_env.setattr(gpu, "_held", {})  # as another process: cards 0 and 1 are held
    clean_env.setenv("CGLIB_GPU_WAIT", "0")
    with pytest.raises(gpu.CardsBusy, match="card 1 held by other jobs for 0 s"):
        gpu.card_for_process(2, 1)
    for card in held.values():
        card.release()


@pytest.fixture
def flags(monkeypatch):
    """torch's CUDA setup flags as plain namespaces (the real ones untouched), the
    deterministic-algorithm calls recorded, CUBLAS_WORKSPACE_CONFIG unset."""
    calls = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda on, warn_only=False: calls.append((on, warn_only)))
    ns = types.SimpleNamespace
    monkeypatch.setattr(torch.backends, "cuda", ns(matmul=ns(fp32_precision="none")))
    monkeypatch.setattr(torch.backends, "cudnn", ns(benchmark=True, deterministic=False, conv=ns(fp32_precision="none")))
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    return calls


def test_configure_does_nothing_on_the_cpu(flags):
    for device in ("cpu", torch.device("cpu")):
        gpu.configure({"tf32": True}, device)
    assert flags == [] and torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    assert torch.backends.cuda.matmul.fp32_precision == "none" and "CUBLAS_WORKSPACE_CONFIG" not in os.environ


@pytest.mark.parametrize("device", ["cuda:0", torch.device("cuda", 1), "cuda"])
def test_configure_on_cuda(flags, device):
    gpu.configure({"tf32": True}, device)
    assert flags == [(True, True)] and not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert torch.backends.cuda.matmul.fp32_precision == torch.backends.cudnn.conv.fp32_precision == "tf32"
    gpu.configure({"tf32": False}, device)
    assert torch.backends.cuda.matmul.fp32_precision == torch.backends.cudnn.conv.fp32_precision == "ieee"
    gpu.configure({}, device)
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    assert not hasattr(torch.backends.cudnn, "allow_tf32")


def test_configure_with_the_older_tf32_flags(flags, monkeypatch):
    """A torch without fp32_precision: the allow_tf32 flags instead."""
    ns = types.SimpleNamespace
    monkeypatch.setattr(torch.backends, "cuda", ns(matmul=ns(allow_tf32=None)))
    monkeypatch.setattr(torch.backends, "cudnn", ns(benchmark=True, deterministic=False, allow_tf32=None))
    gpu.configure({"tf32": True}, "cuda:0")
    assert torch.backends.cuda.matmul.allow_tf32 is True and torch.backends.cudnn.allow_tf32 is True
    gpu.configure({"tf32": False}, "cuda:0")
    assert torch.backends.cuda.matmul.allow_tf32 is False and torch.backends.cudnn.allow_tf32 is False
    assert not hasattr(torch.backends.cuda.matmul, "fp32_precision")
