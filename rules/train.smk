rule train:
    input:
        params=ancient(PARAMS_FILE),
        data=PREPARED,
        labels=LABELS,
        difficulty=DIFFICULTY,
    output:
        metrics=f"{RUN_DIR}/metrics.parquet",
        examples=f"{RUN_DIR}/examples.parquet",
        run=f"{RUN_DIR}/run.json",
    log:
        f"{OUT}/logs/train/{{optimizer}}_c{{clip}}_noise{{noise}}_seed{{seed}}.log",
    conda:
        SOFTWARE
    params:
        values=stage_values("train"),
        out=RUN_DIR,
    threads: train_threads()
    resources:
        gpu=gpu_resource(),
        runtime=slurm("train", "runtime"),
        mem_mb=slurm("train", "mem_mb"),
        cpus_per_task=slurm("train", "cpus_per_task"),
    shell:
        "python stages/train.py --params {input.params} --data {input.data} --labels {input.labels}"
        " --difficulty {input.difficulty} --noise {wildcards.noise} --optimizer {wildcards.optimizer}"
        " --clip {wildcards.clip} --seed {wildcards.seed} --out {params.out} --log {log}"


rule train_subset:  # E6: plain SGD on e-train or h-train, clean labels
    input:
        params=ancient(PARAMS_FILE),
        data=PREPARED,
        difficulty=DIFFICULTY,
        splits=SPLITS,
    output:
        metrics=f"{SUBSET_RUN_DIR}/metrics.parquet",
        examples=f"{SUBSET_RUN_DIR}/examples.parquet",
        run=f"{SUBSET_RUN_DIR}/run.json",
    log:
        f"{OUT}/logs/train/sgd_c0_{{subset}}_seed{{seed}}.log",
    conda:
        SOFTWARE
    params:
        values=stage_values("train_subset"),
        out=SUBSET_RUN_DIR,
    threads: train_threads()
    resources:
        gpu=gpu_resource(),
        runtime=slurm("train_subset", "runtime"),
        mem_mb=slurm("train_subset", "mem_mb"),
        cpus_per_task=slurm("train_subset", "cpus_per_task"),
    shell:
        "python stages/train.py --params {input.params} --data {input.data} --difficulty {input.difficulty}"
        " --splits {input.splits} --subset {wildcards.subset} --optimizer sgd --clip 0"
        " --seed {wildcards.seed} --out {params.out} --log {log}"


rule train_mc:  # E7 in MC's conditions: the mc section's BatchNorm CNN, plain SGD, real vs random labels
    input:
        params=ancient(PARAMS_FILE),
        data=PREPARED,
        labels=LABELS,
    output:
        metrics=f"{MC_RUN_DIR}/metrics.parquet",
        examples=f"{MC_RUN_DIR}/examples.parquet",
        run=f"{MC_RUN_DIR}/run.json",
    log:
        f"{OUT}/logs/train/mc_sgd_c0_noise{{noise}}_seed{{seed}}.log",
    conda:
        SOFTWARE
    params:
        values=stage_values("train_mc"),
        out=MC_RUN_DIR,
    threads: train_threads()
    resources:
        gpu=gpu_resource(),
        runtime=slurm("train_mc", "runtime"),
        mem_mb=slurm("train_mc", "mem_mb"),
        cpus_per_task=slurm("train_mc", "cpus_per_task"),
    shell:
        "python stages/train.py --params {input.params} --data {input.data} --labels {input.labels} --mc"
        " --noise {wildcards.noise} --optimizer sgd --clip 0 --seed {wildcards.seed} --out {params.out} --log {log}"
