rule prepare:
    input:
        params=ancient(PARAMS_FILE),
    output:
        PREPARED,
    log:
        f"{OUT}/logs/prepare.log",
    conda:
        SOFTWARE
    params:
        values=stage_values("prepare"),
    resources:
        runtime=slurm("prepare", "runtime"),
        mem_mb=slurm("prepare", "mem_mb"),
        cpus_per_task=slurm("prepare", "cpus_per_task"),
    shell:
        "python stages/prepare.py --params {input.params} --out {output} --log {log}"
