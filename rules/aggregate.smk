rule aggregate:
    input:
        run_outputs(),
    output:
        aggregate_outputs(),
    log:
        "results/logs/aggregate.log",
    params:
        values=stage_values("aggregate"),
    shell:
        "python stages/aggregate.py --params {PARAMS_FILE} --runs results/runs --out results --log {log}"
