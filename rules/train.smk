rule train:
    input:
        data=PREPARED,
        labels="data/corrupt/noise={noise}.parquet",
    output:
        metrics=RUN_DIR + "/metrics.parquet",
        run=RUN_DIR + "/run.json",
    log:
        "results/logs/train/{optimizer}_c{clip}_noise{noise}_seed{seed}.log",
    params:
        values=stage_values("train"),
        out=RUN_DIR,
    threads: train_threads()
    shell:
        "python stages/train.py --params {PARAMS_FILE} --data {input.data} --labels {input.labels}"
        " --noise {wildcards.noise} --optimizer {wildcards.optimizer} --clip {wildcards.clip}"
        " --seed {wildcards.seed} --out {params.out} --log {log}"
