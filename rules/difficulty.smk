rule difficulty:
    input:
        params=ancient(PARAMS_FILE),
        easyhard=easyhard_outputs(),
    output:
        DIFFICULTY,
        SPLITS,
        "results/difficulty_seeds.csv",
    log:
        "results/logs/difficulty.log",
    conda:
        SOFTWARE
    params:
        values=stage_values("difficulty"),
    resources:
        runtime=slurm("difficulty", "runtime"),
        mem_mb=slurm("difficulty", "mem_mb"),
        cpus_per_task=slurm("difficulty", "cpus_per_task"),
    shell:
        "python stages/difficulty.py --params {input.params} --easyhard results/easyhard --out results --log {log}"
