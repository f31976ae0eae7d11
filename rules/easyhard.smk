rule easyhard:
    input:
        params=ancient(PARAMS_FILE),
        data=PREPARED,
    output:
        f"{OUT}/easyhard/seed={{dseed}}.parquet",
    log:
        f"{OUT}/logs/easyhard/seed={{dseed}}.log",
    conda:
        SOFTWARE
    params:
        values=stage_values("easyhard"),
    threads: train_threads()
    resources:
        gpu=gpu_resource(),
        runtime=slurm("easyhard", "runtime"),
        mem_mb=slurm("easyhard", "mem_mb"),
        cpus_per_task=slurm("easyhard", "cpus_per_task"),
    shell:
        "python stages/easyhard.py --params {input.params} --data {input.data} --seed {wildcards.dseed}"
        " --out {output} --log {log}"
