rule difficulty:
    input:
        easyhard_outputs(),
    output:
        DIFFICULTY,
        SPLITS,
        "results/difficulty_seeds.csv",
    log:
        "results/logs/difficulty.log",
    params:
        values=stage_values("difficulty"),
    resources:
        runtime=slurm("difficulty", "runtime"),
        mem_mb=slurm("difficulty", "mem_mb"),
        cpus_per_task=slurm("difficulty", "cpus_per_task"),
    shell:
        "python stages/difficulty.py --params {PARAMS_FILE} --easyhard results/easyhard --out results --log {log}"
