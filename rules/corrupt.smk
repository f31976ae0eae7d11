rule corrupt:
    input:
        params=ancient(PARAMS_FILE),
        data=PREPARED,
    output:
        LABELS,
    log:
        f"{OUT}/logs/corrupt/noise={{noise}}.log",
    conda:
        SOFTWARE
    params:
        values=stage_values("corrupt"),
    resources:
        runtime=slurm("corrupt", "runtime"),
        mem_mb=slurm("corrupt", "mem_mb"),
        cpus_per_task=slurm("corrupt", "cpus_per_task"),
    shell:
        "python stages/corrupt.py --params {input.params} --data {input.data} --noise {wildcards.noise}"
        " --out {output} --log {log}"
