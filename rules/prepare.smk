rule prepare:
    input:
        ancient(VALIDATED),  # order only: its timestamp must not re-run the study
    output:
        PREPARED,
    log:
        "results/logs/prepare.log",
    params:
        values=stage_values("prepare"),
    shell:
        "python stages/prepare.py --params {PARAMS_FILE} --out {output} --log {log}"
