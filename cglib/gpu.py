"""GPUs: which jobs need a card, which card a job takes, and how a CUDA process is set up.

Planning (`gpu_slots`, called by rules/common.smk for `resources: gpu=`). It imports no torch, so
a no-op Snakemake rerun stays quick. "cuda" and "cuda:N" always need a card, so a GPU study can
be planned on a login node that has none. "auto" needs one only when this machine shows an
NVIDIA card, and "cpu" never does.

Running (`claim`, used by cglib.models.pick_device). A job that trains on CUDA takes an
exclusive `flock` on one card's lock file, the first free of the visible cards. Concurrent jobs
therefore land on different cards, whether Snakemake, `dvc queue` or a shell loop started them.
`profiles/gpu` only caps how many run at once. The lock lasts as long as the process, and the
kernel drops it when the process ends, even after SIGKILL, so a lock file is never stale.
Lock files are named by the physical card (the CUDA_VISIBLE_DEVICES entry when it is set): two
SLURM jobs that each see their own card as cuda:0 do not block each other. CGLIB_GPU_LOCKS
sets the lock folder (default: <tmp>/cglib-gpu-locks-<uid>). `off` turns claiming off, and
every job then uses cuda:0 (or the N of cuda:N).
CGLIB_GPU_WAIT is how many seconds a job waits for a free card before it fails (default: no
limit).

Process setup (`configure`). It applies only on CUDA, so CPU results stay byte-identical:
deterministic cuDNN and cuBLAS, a warning for any op that has no deterministic CUDA kernel, and
TF32 on or off as train.tf32 says.
"""
from __future__ import annotations

import fcntl
import os
import re
import tempfile
import threading
import time
from pathlib import Path

NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")  # one entry per card the driver sees


class CardsBusy(RuntimeError):
    """Every card this job may use is held by another job, for longer than it may wait."""


# ---------------------------------------------------------------------------- planning

def nvidia_cards_visible() -> bool:
    """A cheap guess of whether CUDA will find a card here: the NVIDIA driver lists a GPU
    (/proc/driver/nvidia/gpus), and CUDA_VISIBLE_DEVICES does not hide them all. It reads files
    only: no torch import and no nvidia-smi process."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return False
    # inside a SLURM job that was given no GPU, a card the node has is not this job's (the
    # plugin would otherwise run the job step with srun --gpus=1 it has no allocation for)
    if os.environ.get("SLURM_JOB_ID") and not any(
            os.environ.get(k) for k in ("SLURM_GPUS", "SLURM_JOB_GPUS", "SLURM_GPUS_ON_NODE", "SLURM_STEP_GPUS")):
        return False
    return NVIDIA_GPUS.is_dir() and any(NVIDIA_GPUS.iterdir())


def gpu_slots(device: str) -> int:
    """Cards one job of a training stage needs with train.device = `device` (0 or 1; the
    params schema has checked its spelling)."""
    if device.startswith("cuda"):
        return 1
    return int(device == "auto" and nvidia_cards_visible())


# ---------------------------------------------------------------------------- claiming a card

def lock_dir() -> Path | None:
    value = os.environ.get("CGLIB_GPU_LOCKS", "")
    if value.lower() in ("off", "none", "0"):
        return None
    return Path(value) if value else Path(tempfile.gettempdir()) / f"cglib-gpu-locks-{os.getuid()}"


def card_keys(count: int) -> list[str]:
    """Physical names of the `count` visible cards, in CUDA's order: the CUDA_VISIBLE_DEVICES
    entries (indices or UUIDs) when set, else 0 … count-1."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    keys = [v.strip() for v in visible.split(",") if v.strip()] if visible else []
    if len(keys) < count:
        keys = [str(i) for i in range(count)]
    return [re.sub(r"[^A-Za-z0-9_.-]", "_", k) for k in keys[:count]]


class CardLock:
    """An exclusive lock on one card (`index` among the visible ones); `release()` or the end of
    the process frees it."""

    def __init__(self, index: int, path: Path, fd: int):
        self.index, self.path, self._fd = index, path, fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)  # who holds it, for a person looking at the folder
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def claim(count: int, want: int | None = None, wait: float | None = None, directory: Path | None = None,
          poll: float = 0.5, log=print) -> CardLock:
    """Lock a card: `want` (an index) or the first free of the `count` visible cards. While all
    of them are held, wait (saying so once); past `wait` seconds, raise CardsBusy."""
    directory = directory or lock_dir()
    directory.mkdir(parents=True, exist_ok=True)
    keys = card_keys(count)
    candidates = [want] if want is not None else list(range(count))
    deadline = None if wait is None else time.monotonic() + wait
    said = False
    while True:
        for i in candidates:
            path = directory / f"card-{keys[i]}.lock"
            fd = _try_lock(path)
            if fd is not None:
                return CardLock(i, path, fd)
        which = f"card {want}" if want is not None else f"all {count} card(s)"
        if deadline is not None and time.monotonic() >= deadline:
            raise CardsBusy(f"{which} held by other jobs for {wait:g} s (locks in {directory}; "
                            "CGLIB_GPU_WAIT sets the wait, CGLIB_GPU_LOCKS=off turns locking off)")
        if not said:
            log(f"{which} held by other jobs (locks in {directory}): waiting for one to finish")
            said = True
        time.sleep(poll)


_held: dict[int, CardLock] = {}  # this process's card, kept until the process ends
_held_lock = threading.Lock()


def card_for_process(count: int, want: int | None = None, log=print) -> int:
    """The card this process trains on, claimed once and then kept: a second call (another
    stage function in the same process) returns the same card."""
    with _held_lock:
        if _held and (want is None or want in _held):
            return next(iter(_held)) if want is None else want
        if lock_dir() is None:
            return want or 0
        wait = os.environ.get("CGLIB_GPU_WAIT")
        card = claim(count, want, float(wait) if wait else None, log=log)
        _held[card.index] = card
        return card.index


# ---------------------------------------------------------------------------- process setup

def before_cuda() -> None:
    """Set the environment cuBLAS reads when it starts, before the first CUDA op. Without it,
    cuBLAS may split a matmul differently from run to run (PyTorch's reproducibility notes)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def configure(train_params: dict, device) -> None:
    """Set up torch for a run on `device`. It does nothing on the CPU, where PyTorch's defaults
    are already deterministic."""
    import torch

    if getattr(device, "type", str(device).split(":")[0]) != "cuda":
        return
    before_cuda()
    torch.backends.cudnn.benchmark = False  # autotuning picks kernels by timing: not reproducible
    torch.backends.cudnn.deterministic = True
    # ops without a deterministic CUDA kernel warn (in the job's stderr) instead of failing
    torch.use_deterministic_algorithms(True, warn_only=True)
    precision = "tf32" if train_params.get("tf32") else "ieee"
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch ≥ 2.9; do not mix the APIs
        torch.backends.cuda.matmul.fp32_precision = precision
        torch.backends.cudnn.conv.fp32_precision = precision
    else:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
