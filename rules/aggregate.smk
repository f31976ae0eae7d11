rule aggregate:
    input:
        params=ancient(PARAMS_FILE),
        runs=run_outputs(),
    output:
        aggregate_outputs(),
    log:
        "results/logs/aggregate.log",
    conda:
        SOFTWARE
    params:
        values=stage_values("aggregate"),
    resources:
        runtime=slurm("aggregate", "runtime"),
        mem_mb=slurm("aggregate", "mem_mb"),
        cpus_per_task=slurm("aggregate", "cpus_per_task"),
    shell:
        "python stages/aggregate.py --params {input.params} --runs results/runs --out results --log {log}"
