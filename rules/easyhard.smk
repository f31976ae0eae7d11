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
    resources:
        gpu=gpu_resource(),
        runtime=slurm("easyhard", "runtime"),
        mem_mb=slurm("easyhard", "mem_mb"),
        cpus_per_task=slurm("easyhard", "cpus_per_task"),
    shell:
        "python stages/easyhard.py --params {PARAMS_FILE} --data {input} --seed {wildcards.dseed}"
        " --out {output} --log {log}"
