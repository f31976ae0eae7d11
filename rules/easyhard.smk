rule easyhard:
    input:
        PREPARED,
    output:
        "results/easyhard/seed={dseed}.parquet",
    log:
        "results/logs/easyhard/seed={dseed}.log",
    params:
        values=stage_values("easyhard"),
    threads: train_threads()
    shell:
        "python stages/easyhard.py --params {PARAMS_FILE} --data {input} --seed {wildcards.dseed}"
        " --out {output} --log {log}"
