rule aggregate:
    input:
        run_outputs(),
    output:
        aggregate_outputs(),
    log:
        "results/logs/aggregate.log",
    params:
        values=stage_values("aggregate"),
    resources:
        runtime=slurm("aggregate", "runtime"),
        mem_mb=slurm("aggregate", "mem_mb"),
        cpus_per_task=slurm("aggregate", "cpus_per_task"),
    shell:
        "python stages/aggregate.py --params {PARAMS_FILE} --runs results/runs --out results --log {log}"
