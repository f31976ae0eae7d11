# Helpers shared by the rule files. The rule files hold only rules.
import json
import os
import sys

from snakemake.utils import validate

from cglib import config as cgconfig
from cglib import tables as cgtables

# The study's params file: params.yaml, or `--configfile studies/x.yaml`, which replaces it as a
# whole (the stages read one file, so the Snakefile must see exactly that file too).
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
PREPARED = f"data/prepared/{P['data']['dataset']}.pt"
RUN_DIR = "results/runs/{optimizer}_c{clip}_noise{noise}_seed{seed}"
SUBSET_RUN_DIR = "results/runs/sgd_c0_{subset}_seed{seed}"
MC_RUN_DIR = "results/runs/mc_sgd_c0_noise{noise}_seed{seed}"
DIFFICULTY = "results/difficulty.parquet"
VALIDATED = "results/params.ok"  # the validate stage's marker: first in the DAG
SPLITS = "results/difficulty_splits.parquet"


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
    return [f"results/runs/{r['run']}/{name}" for r in GRID
            for name in ("metrics.parquet", "examples.parquet", "run.json")]


def easyhard_outputs():
    return [f"results/easyhard/seed={s}.parquet" for s in P["difficulty"]["seeds"]]


def aggregate_outputs():
    return [f"results/{name}" for name in cgtables.AGGREGATE_OUTPUTS]


def report_outputs():
    return [f"results/{name}" for name in cgtables.REPORT_OUTPUTS]


def train_threads():
    return P["train"]["threads"] or 1


def check_intact(paths):
    """A damaged intermediate (a truncated run table, say) stops the workflow here, before any
    job starts: Snakemake deletes a job's old outputs when it starts it, so a downstream job
    failing on the damaged file would lose the good aggregate tables too."""
    for path in paths:
        why = cgtables.damage(path)
        if why:
            sys.stderr.write(f"error: {path}: damaged ({why}); nothing was run or deleted. "
                             f"Delete it and rerun: rm {path} && snakemake --cores all\n")
            sys.exit(1)


check_intact([PREPARED, DIFFICULTY, SPLITS, *easyhard_outputs(), *run_outputs(),
              *(f"data/corrupt/noise={n}.parquet" for n in P["corrupt"]["noise"])])
