rule validate:
    input:
        PARAMS_FILE,
    output:
        VALIDATED,
    log:
        "results/logs/validate.log",
    shell:
        "python stages/validate.py --params {PARAMS_FILE} --out {output} --log {log}"
