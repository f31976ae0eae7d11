rule prepare:
    input:
        ancient(VALIDATED),  # order only: its timestamp must not re-run the study
    output:
        PREPARED,
    log:
        "results/logs/prepare.log",
    params:
        values=stage_values("prepare"),
    resources:
        runtime=slurm("prepare", "runtime"),
        mem_mb=slurm("prepare", "mem_mb"),
        cpus_per_task=slurm("prepare", "cpus_per_task"),
    shell:
        "python stages/prepare.py --params {PARAMS_FILE} --out {output} --log {log}"
