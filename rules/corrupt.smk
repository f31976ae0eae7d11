rule corrupt:
    input:
        PREPARED,
    output:
        "data/corrupt/noise={noise}.parquet",
    log:
        "results/logs/corrupt/noise={noise}.log",
    params:
        values=stage_values("corrupt"),
    resources:
        runtime=slurm("corrupt", "runtime"),
        mem_mb=slurm("corrupt", "mem_mb"),
        cpus_per_task=slurm("corrupt", "cpus_per_task"),
    shell:
        "python stages/corrupt.py --params {PARAMS_FILE} --data {input} --noise {wildcards.noise}"
        " --out {output} --log {log}"
