#!/usr/bin/env python3
"""Stand-ins for the SLURM commands snakemake-executor-plugin-slurm calls, so its submission and
status path runs on a machine without SLURM (tests/test_slurm.py).

Each command is a symlink to this file (sbatch, srun, sacct, squeue, scancel, sinfo, scontrol,
sacctmgr); it acts on its own name. State lives under $FAKE_SLURM_DIR:
  sbatch.jsonl         one line per sbatch call: its arguments, parsed options, the job id
  submitted/<id>.sh    the job script as sbatch got it
  jobs/<id>.json       the job's name and state (PENDING, RUNNING, COMPLETED, FAILED, TIMEOUT,
                       OUT_OF_MEMORY, CANCELLED); once it ended, its exit code, its largest
                       process's peak memory (MB), and start and end times
sbatch writes the job script (or its --wrap command), starts it in the background in -D's
folder with its output in --output, prints the job id (--parsable form) and returns at once.
A job over its --time is killed (TIMEOUT); one whose largest process outgrew --mem is marked
OUT_OF_MEMORY when it ends, as a cgroup would have stopped it. srun runs its command in place.
"""
import fcntl
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

ACCOUNT = "cg-test"
PARTITIONS = ["cpu*", "gpu"]  # sinfo -o %P: the default partition is starred
# sbatch options that take a separate value (`-t 10`); `--x=y` forms are split on "="
VALUED = {"-A", "--account", "-p", "--partition", "-t", "--time", "-J", "--job-name", "-o", "--output",
          "-e", "--error", "--comment", "-D", "--chdir", "--mem", "--mem-per-cpu", "-c", "--cpus-per-task",
          "-n", "--ntasks", "-N", "--nodes", "-C", "--constraint", "--clusters", "-M", "--qos", "--gres",
          "--gpus", "-G", "--array", "-a", "--exclude", "-x", "--reservation", "--wrap"}
FAILED_STATES = ("FAILED", "TIMEOUT", "OUT_OF_MEMORY", "CANCELLED")


def state_dir() -> Path:
    path = Path(os.environ.get("FAKE_SLURM_DIR") or Path(os.environ.get("TMPDIR", "/tmp")) / "fake-slurm")
    for sub in ("jobs", "submitted"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def jobs() -> list[dict]:
    out = []
    for path in sorted(state_dir().glob("jobs/*.json"), key=lambda p: int(p.stem)):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):  # being replaced this instant: the next query sees it
            pass
    return out


def parse_options(args: list[str]) -> tuple[dict, list[str]]:
    """sbatch's options (last one wins) and the script with its arguments."""
    opts, i = {}, 0
    while i < len(args) and args[i].startswith("-"):
        arg = args[i]
        if "=" in arg and arg.startswith("--"):
            key, value = arg.split("=", 1)
        elif arg in VALUED:
            key, value = arg, args[i + 1]
            i += 1
        elif arg[:2] in VALUED and len(arg) > 2:  # -t10, -n1
            key, value = arg[:2], arg[2:]
        else:
            key, value = arg, True
        opts[key] = value
        i += 1
    return opts, args[i:]


def minutes(limit: str) -> float:
    """SLURM's --time forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    days, _, clock = str(limit).rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if days:
        h, m, s = (parts + [0, 0])[:3]
    elif len(parts) == 3:
        h, m, s = parts
    else:
        h, m, s = 0, *(parts + [0])[:2]
    return int(days or 0) * 1440 + h * 60 + m + s / 60


def megabytes(mem: str) -> float:
    units = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 ** 2}
    return float(mem[:-1]) * units[mem[-1].upper()] if mem[-1].isalpha() else float(mem)


def sbatch(args: list[str]) -> int:
    opts, script_args = parse_options(args)
    if "--array" in opts or "-a" in opts:
        sys.stderr.write("sbatch (stand-in): array jobs are not supported\n")
        return 1
    root = state_dir()
    workdir = opts.get("-D") or opts.get("--chdir") or os.getcwd()
    with open(root / "lock", "w") as lock:  # one id counter and log for concurrent submissions
        fcntl.flock(lock, fcntl.LOCK_EX)
        counter = root / "last_id"
        jobid = int(counter.read_text()) + 1 if counter.exists() else 1001
        counter.write_text(str(jobid))
        record = {"jobid": jobid, "args": args, "options": opts, "workdir": workdir, "cwd": os.getcwd(),
                  "submitted": time.time()}
        with open(root / "sbatch.jsonl", "a") as log:
            log.write(json.dumps(record) + "\n")
    write_json(root / "submitted" / f"{jobid}.json", record)
    if "--wrap" in opts:
        script = f"#!/bin/sh\n{opts['--wrap']}\n"
    elif script_args and script_args[0] != "/dev/stdin":
        script = Path(script_args[0]).read_text()
    else:
        script = sys.stdin.read()
    (root / "submitted" / f"{jobid}.sh").write_text(script)
    name = opts.get("--job-name") or opts.get("-J") or "sbatch"
    write_json(root / "jobs" / f"{jobid}.json", {"jobid": jobid, "name": name, "state": "PENDING"})
    subprocess.Popen([sys.executable, os.path.realpath(__file__), "_run", str(jobid)],
                     start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, close_fds=True)
    print(jobid if "--parsable" in opts else f"Submitted batch job {jobid}")
    return 0


def run_job(jobid: str) -> int:
    """The detached side of sbatch: the job as slurmd would run it, then its final state."""
    root = state_dir()
    record = json.loads((root / "submitted" / f"{jobid}.json").read_text())
    opts, workdir = record["options"], record["workdir"]
    state_file = root / "jobs" / f"{jobid}.json"
    name = opts.get("--job-name") or opts.get("-J") or "sbatch"
    output = (opts.get("--output") or opts.get("-o") or f"slurm-{jobid}.out")
    output = Path(workdir, output.replace("%j", jobid).replace("%x", name))
    output.parent.mkdir(parents=True, exist_ok=True)
    cpus = opts.get("--cpus-per-task") or opts.get("-c") or "1"
    env = dict(os.environ, SLURM_JOB_ID=jobid, SLURM_JOBID=jobid, SLURM_JOB_NAME=name,
               SLURM_CPUS_PER_TASK=str(cpus), SLURM_SUBMIT_DIR=record["cwd"], SLURM_NTASKS="1",
               SLURM_JOB_PARTITION=(opts.get("-p") or opts.get("--partition") or "cpu"))
    if opts.get("--gpus"):
        env["SLURM_GPUS"] = str(opts["--gpus"]).rsplit(":", 1)[-1]
    limit = opts.get("-t") or opts.get("--time")
    start = time.time()
    with open(output, "ab") as log:
        proc = subprocess.Popen(["/bin/sh", str(root / "submitted" / f"{jobid}.sh")], cwd=workdir, env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        write_json(state_file, {"jobid": int(jobid), "name": name, "state": "RUNNING", "pid": os.getpid()})
        try:
            code = proc.wait(timeout=minutes(limit) * 60 if limit else None)
            state = "COMPLETED" if code == 0 else "FAILED"
        except subprocess.TimeoutExpired:
            proc.kill()
            code, state = proc.wait(), "TIMEOUT"
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # largest process, KiB → MiB
    mem = opts.get("--mem")
    if state == "COMPLETED" and mem and peak_mb > megabytes(str(mem)):
        state = "OUT_OF_MEMORY"
    current = json.loads(state_file.read_text())
    if current["state"] != "CANCELLED":
        write_json(state_file, {"jobid": int(jobid), "name": name, "state": state, "exit_code": code,
                                "peak_mb": round(peak_mb, 1), "start": start, "end": time.time()})
    return 0


def option(args: list[str], *names: str) -> str | None:
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def sacct(args: list[str]) -> int:
    if any(a.startswith("Account") for a in args):  # the plugin guessing an account
        print(ACCOUNT)
        return 0
    job = option(args, "-j", "--jobs")
    if job:  # -j <id>.<step> --format=Reason, or -j <id> -o nodelist: why a job failed
        rows = [j for j in jobs() if str(j["jobid"]) == job.split(".")[0]]
        if rows and "." in job and job.endswith(".0"):
            print("NonZeroExitCode" if rows[0]["state"] in FAILED_STATES else "None")
        elif rows and "." not in job:
            print("localhost")
        return 0
    name = option(args, "--name")
    for j in jobs():
        if name is None or j["name"] == name:
            print(f"{j['jobid']}|{j['state']}")
    return 0


def squeue(args: list[str]) -> int:
    name = option(args, "--name", "-n")
    for j in jobs():
        if name is None or j["name"] == name:
            print(f"{j['jobid']}|{j['state']}")
    return 0


def scancel(args: list[str]) -> int:
    root = state_dir()
    for jobid in (a for a in args if a.isdigit()):
        path = root / "jobs" / f"{jobid}.json"
        if not path.exists():
            continue
        job = json.loads(path.read_text())
        if job["state"] in ("PENDING", "RUNNING"):
            if job.get("pid"):
                try:
                    os.killpg(job["pid"], signal.SIGTERM)
                except ProcessLookupError:
                    pass
            job["state"] = "CANCELLED"
            write_json(path, job)
    return 0


def srun(args: list[str]) -> int:
    """Inside a job: drop srun's own options (all `--x=y` or `-n1` forms) and run the command."""
    while args and args[0].startswith("-"):
        args = args[1:]
    os.execvp(args[0], args)


def sinfo(args: list[str]) -> int:
    print("PARTITION")
    print("\n".join(PARTITIONS))
    return 0


def scontrol(args: list[str]) -> int:
    if args[:2] == ["show", "config"]:
        print("MaxArraySize            = 1001\nMinJobAge               = 300 sec")
        return 0
    sys.stderr.write(f"scontrol (stand-in): {' '.join(args)} is not supported\n")
    return 1


def sacctmgr(args: list[str]) -> int:
    print(ACCOUNT)
    return 0


COMMANDS = {f.__name__: f for f in (sbatch, srun, sacct, squeue, scancel, sinfo, scontrol, sacctmgr)}

if __name__ == "__main__":
    if sys.argv[1:2] == ["_run"]:
        sys.exit(run_job(sys.argv[2]))
    sys.exit(COMMANDS[os.path.basename(sys.argv[0])](sys.argv[1:]))
