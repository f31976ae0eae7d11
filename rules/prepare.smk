rule prepare:
    output:
        PREPARED,
    log:
        "results/logs/prepare.log",
    params:
        values=stage_values("prepare"),
    shell:
        "python stages/prepare.py --params {PARAMS_FILE} --out {output} --log {log}"
