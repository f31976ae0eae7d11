# Helpers shared by the rule files. The rule files hold only rules.
import functools
import json
import math
import os
import sys

from snakemake.utils import validate

from cglib import config as cgconfig
from cglib import data as cgdata
from cglib import model_sources as cgmodel_sources
from cglib import gpu as cggpu
from cglib import sources as cgsources
from cglib import cli as cgcli
from cglib import tables as cgtables

# The study's params file: params.yaml, or `--configfile studies/x.yaml`, which replaces it as a
# whole (the stages read one file, so the Snakefile must see exactly that file too). Every rule
# takes it as an ancient input: its stage reads it, but an edit re-runs only the stages whose own
# values changed (their `params: values=`), not everything after it. Another file name is
# another input, so switching files re-runs the study even where the contents agree.
PARAMS_FILE = "params.yaml"
if workflow.overwrite_configfiles:
    PARAMS_FILE = os.path.relpath(workflow.overwrite_configfiles[-1])
try:  # one line naming the key, exit code 2, before any job is scheduled
    P = cgconfig.load_params(PARAMS_FILE)
except cgconfig.ParamsError as err:
    sys.stderr.write(f"params error: {err}\n")
    sys.exit(cgconfig.EXIT_BAD_PARAMS)
config.clear()  # the file as the stages read it (YAML 1.2 numbers, no duplicate keys), defaults filled
config.update(P)
validate(config, "../schemas/params.schema.yaml")  # Snakemake's own check too

GRID = cgconfig.run_grid(P)
# Every output of the study lives under its own folder, so a study of another name (another
# params file) never overwrites this one. The prepared data are shared between studies with
# equal data sections by the prepare stage itself (stages/prepare.py: a store under data/prepared/).
OUT = str(cgcli.study_dir(P))
PREPARED = f"{OUT}/prepared.pt"
if not os.path.exists(PREPARED):  # raw files are read only to prepare: say so now, not at that job
    _missing = cgdata.missing_raw(P["data"]["dataset"], P["data"]["raw_dir"], P["data"]["path"])
    if _missing:  # a plan is still useful (a login node, a dry run); the prepare job stops a real run
        sys.stderr.write(f"warning: {_missing} (the prepare job fails until then)\n")
LABELS = f"{OUT}/corrupt/noise={{noise}}.parquet"
RUN_DIR = f"{OUT}/runs/{{optimizer}}_c{{clip}}_noise{{noise}}_seed{{seed}}"
SUBSET_RUN_DIR = f"{OUT}/runs/sgd_c0_{{subset}}_seed{{seed}}"
MC_RUN_DIR = f"{OUT}/runs/mc_sgd_c0_noise{{noise}}_seed{{seed}}"
DIFFICULTY = f"{OUT}/difficulty.parquet"
VALIDATED = f"{OUT}/params.ok"  # the validate stage's marker: first in the DAG
SPLITS = f"{OUT}/difficulty_splits.parquet"
# every rule's software, for `--software-deployment-method conda` (relative to rules/)
SOFTWARE = "../envs/cglib.yaml"


wildcard_constraints:
    optimizer="[a-z0-9]+",
    clip=r"\d+",
    noise=r"[0-9.eE+-]+",
    seed=r"\d+",
    dseed=r"\d+",
    subset="[eh]-train",


def stage_values(stage):
    """JSON of the params a stage depends on: a change re-runs exactly the jobs it affects."""
    return json.dumps(cgconfig.stage_params(P, stage), sort_keys=True)


def run_outputs():
    return [f"{OUT}/runs/{r['run']}/{name}" for r in GRID
            for name in ("metrics.parquet", "examples.parquet", "run.json")]


def easyhard_outputs():
    return [f"{OUT}/easyhard/seed={s}.parquet" for s in P["difficulty"]["seeds"]]


def aggregate_outputs():
    return [f"{OUT}/{name}" for name in cgtables.AGGREGATE_OUTPUTS]


def report_outputs():
    return [f"{OUT}/{name}" for name in (*cgtables.REPORT_OUTPUTS, cgcli.SCORECARD)]


# The study page's figures are also marked for `snakemake --report`, in a category per
# experiment, with captions from report/captions/.
REPORT_CATEGORY = {
    "learning_curves": "E1 learning curves (CG Fig. 1)",
    "loss_shares": "E2 loss-reduction shares (CG Figs. 2-3)",
    "winsorization": "E3 winsorized SGD (CG §3)",
    "robust_optimizers": "E4 RM3, RA3, M3 (W&S §3)",
    "accuracy_by_difficulty": "E5 accuracy by difficulty (W&S Fig. 5)",
    "easy_hard": "E6 easy / hard (W&S §4.4)",
    "m_coherence": "E7 m-coherence (MC)",
    "m_coherence_layers": "E7 m-coherence (MC)",
    "difficulty_scores": "E8 difficulty scores",
}


def report_output(name):
    """results/<study>/<name>, marked for Snakemake's report when it is a page, a table or a PNG."""
    path = f"{OUT}/{name}"
    stem, ext = os.path.splitext(os.path.basename(name))
    if ext == ".svg":
        return path
    category = REPORT_CATEGORY.get(stem, "Report")
    return report(path, caption=f"../report/captions/{stem}.rst", category=category)


def train_threads():
    return P["train"]["threads"] or 1


@functools.cache  # the same for every job: the params and this machine
def gpu_resource():
    """Cards one training job takes (`resources: gpu=`): 1 when train.device resolves to CUDA,
    decided on the machine that plans the jobs ("cuda" always; "auto" when it shows an NVIDIA
    card, checked without importing torch). profiles/gpu caps the total at the number of cards;
    which card a job gets is settled when it starts (cglib.gpu.claim)."""
    return cggpu.gpu_slots(P["train"]["device"])


def check_intact(paths):
    """A damaged intermediate (a truncated run table, say) stops the workflow here, before any
    job starts: Snakemake deletes a job's old outputs when it starts it, so a downstream job
    failing on the damaged file would lose the good aggregate tables too."""
    for path in paths:
        why = cgtables.damage(path)
        if why:
            sys.stderr.write(f"error: {path}: damaged ({why}); nothing was run or deleted. "
                             f"Delete it and rebuild it: rm {path} && snakemake --cores all {path}\n")
            sys.exit(1)


check_intact([PREPARED, DIFFICULTY, SPLITS, *easyhard_outputs(), *run_outputs(),
              *(LABELS.format(noise=n) for n in P["corrupt"]["noise"])])


##### cluster resources (profiles/slurm): estimated from the study's params #####
# Work is counted in example-passes (one example through the model; a training step costs three
# per example, forward and backward) and priced at the model's multiply-adds. The estimate is
# doubled, has a 15-minute floor, and is multiplied by the attempt: a job killed for time or
# memory comes back with twice the request (profiles/slurm: retries). Local runs ignore them.
STEP_COST = {"sgd": 1, "m3": 1.6, "rm3": 1.3, "ra3": 1.2}  # × an SGD step's arithmetic (make bench)
MACS_PER_SECOND = {"cpu": 1e10, "gpu": 2e12}  # per CPU thread / per GPU, on the low side
STEP_OVERHEAD = {"cpu": 0.002, "gpu": 0.005}  # seconds of Python and kernel launches per SGD step
TRAINING_STAGES = ("easyhard", "train", "train_subset", "train_mc")


# A dataset's input shape, whole train and test sizes and classes come from cglib.sources (a
# table for the torchvision datasets, headers and file counts for npz and imagefolder, no torch);
# before a study's files are there the estimate takes CIFAR-10's (its prepare job fails first).
UNSEEN_DATA = ((3, 32, 32), 50_000, 10_000, 10)


@functools.cache
def data_shape():
    """Input shape, training and test examples, classes of the study's prepared data."""
    d = P["data"]
    if d["dataset"] == "synthetic":
        s = d["synthetic"]
        return (s["dim"],), s["n_train_total"], s["n_test_total"], s["classes"]
    shape, n_train, n_test, classes = cgsources.full_shape(d) or UNSEEN_DATA
    return shape, d["n_train"] or n_train, d["n_test"] or n_test, classes


def model_cost(model, shape, classes=10):
    """Multiply-adds of one example's forward pass, and the number of weights."""
    if model["name"] == "mlp":
        widths = [math.prod(shape), *model["hidden"], classes]
        macs = sum(a * b for a, b in zip(widths, widths[1:]))
        return macs, macs
    if model["name"] == "cnn":
        (c, h, w), macs, weights = shape, 0, 0
        for c_out in model["channels"]:  # 3×3 conv at full size, then a 2×2 max-pool
            macs, weights = macs + h * w * c * c_out * 9, weights + c * c_out * 9
            c, h, w = c_out, h // 2, w // 2
        head = c * classes * (1 if model.get("pool", "avg") == "avg" else h * w)
        return macs + head, weights + head
    if model["name"] in cgmodel_sources.SOURCES:
        # a torchvision arch or an imported model: counted, not guessed (one example's forward pass
        # on the meta device, cglib.model_sources.forward_cost); one the meta device cannot run is
        # priced as a ResNet-50 at this image size (4.1 G multiply-adds at 224×224, 25.6 M weights),
        # on the high side for the small models a CPU or one GPU trains
        return cgmodel_sources.forward_cost(model, shape, classes) or (
            4.1e9 * math.prod(shape[1:]) / 224**2, 25.6e6)
    return 0.56e9 * shape[1] * shape[2] / 1024, 11.2e6  # resnet18, 3×3 stem: 0.56 G at 32×32


def step_cost(optimizer, clip):
    """A step's arithmetic in SGD steps: winsorizing streams each example's gradient through
    c + 1 running maxima and minima per side (c = 2: ≈15 here, measured ≈10–11)."""
    return 5 * (clip + 1) if optimizer == "winsorized" else STEP_COST[optimizer]


def training_work(stage, optimizer, clip):
    """Example-passes, steps and model of one job of a training stage."""
    t, d = P["train"], P["difficulty"]
    _, n, n_test, _ = data_shape()
    if stage == "easyhard":  # the whole training set evaluated before every step until the threshold
        steps = min(d["max_steps"], 3 * n // d["batch_size"] + 1)  # 50 % comes within ~2 epochs
        return steps * (3 * d["batch_size"] + n), steps, P["model"]
    model, steps = P["model"], t["steps"]
    if stage == "train_subset":
        steps = d["subset_steps"] or t["steps"]
    if stage == "train_mc":
        model, steps, n = P["mc"]["model"], P["mc"]["steps"], P["mc"]["n_train"] or n
    evals = t["eval_per_decade"] * (len(str(steps)) + 1)  # eval_steps: per_decade a decade, the ends
    c, s = t["coherence"], t["shares"]
    work = steps * t["batch_size"] * (3 * step_cost(optimizer, clip) + 1)  # steps, E8's epoch records
    work += evals * (min(t["eval_train_sample"] or n, n) + n_test)  # E1
    work += evals * 4 * (min(c["train_sample"], n) + c["test_sample"])  # E7: ≈1.2 forward+backward passes
    if optimizer in s["optimizers"] and s["steps"]:
        work += (min(s["steps"], steps) + evals) * 4 * n  # E2: ≈2.4 passes (+1 for BatchNorm)
    return work, steps, model


@functools.cache  # each job's three resources ask for the same estimate
def slurm_resources(stage, optimizer="sgd", clip=0):
    """runtime (minutes), mem_mb and cpus_per_task of one job of `stage` (its first attempt); a
    training job is priced on a GPU when it asks for one (gpu_resource), else on CPU threads."""
    shape, n, n_test, classes = data_shape()
    data_mb = (n + n_test) * math.prod(shape) * 4 / 2**20  # float32 tensors in memory
    threads = P["train"]["threads"] or 4  # 0 = torch's default: every CPU the job is given
    if stage in TRAINING_STAGES:
        work, steps, model = training_work(stage, optimizer, clip)
        macs, weights = model_cost(model, shape, classes)
        gpus = gpu_resource()
        device = "gpu" if gpus else "cpu"
        speed = MACS_PER_SECOND[device] * (gpus or threads)
        overhead = steps * STEP_OVERHEAD[device] * step_cost(optimizer, clip)
        seconds = 120 + overhead + work * macs / speed
        # torch, Snakemake and torch.compile's workers ≈ 2 GB; CUDA's host side 2 more
        mem_mb = 2048 * (1 + bool(gpus)) + 2 * data_mb + 10 * 4 * weights / 2**20
        cpus = threads
    else:  # prepare, corrupt, difficulty, aggregate, report: seconds to minutes
        rows = n * (len(GRID) if stage in ("aggregate", "report") else 1)  # one per run and example
        seconds = 120 + rows / 2e4
        mem_mb = 1024 + 3 * data_mb + rows * 1e-3
        cpus = 1
    return {"runtime": max(15, 5 * math.ceil(2 * seconds / 300)),
            "mem_mb": 512 * math.ceil(mem_mb / 512), "cpus_per_task": cpus}


def slurm(stage, key):
    """One resource of a stage's jobs, for its `resources:` (runtime and mem_mb double with each
    attempt; the optimizer and clip wildcards price a train job's step)."""
    def value(wildcards, attempt):
        res = slurm_resources(stage, wildcards.get("optimizer", "sgd"), int(wildcards.get("clip", 0)))
        return res[key] * (attempt if key in ("runtime", "mem_mb") else 1)
    return value
