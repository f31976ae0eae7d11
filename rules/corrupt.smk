rule corrupt:
    input:
        PREPARED,
    output:
        "data/corrupt/noise={noise}.parquet",
    log:
        "results/logs/corrupt/noise={noise}.log",
    params:
        values=stage_values("corrupt"),
    shell:
        "python stages/corrupt.py --params {PARAMS_FILE} --data {input} --noise {wildcards.noise}"
        " --out {output} --log {log}"
