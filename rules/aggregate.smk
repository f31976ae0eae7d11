rule aggregate:
    input:
        params=ancient(PARAMS_FILE),
        runs=run_outputs(),
    output:
        aggregate_outputs(),
    log:
        f"{OUT}/logs/aggregate.log",
    conda:
        SOFTWARE
    params:
        values=stage_values("aggregate"),
        out=lambda w, output: os.path.dirname(output[0]),  # the study's folder
    resources:
        runtime=slurm("aggregate", "runtime"),
        mem_mb=slurm("aggregate", "mem_mb"),
        cpus_per_task=slurm("aggregate", "cpus_per_task"),
    shell:
        "python stages/aggregate.py --params {input.params} --runs {params.out}/runs --out {params.out} --log {log}"
