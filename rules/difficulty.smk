rule difficulty:
    input:
        params=ancient(PARAMS_FILE),
        easyhard=easyhard_outputs(),
    output:
        DIFFICULTY,
        SPLITS,
        f"{OUT}/difficulty_seeds.csv",
    log:
        f"{OUT}/logs/difficulty.log",
    conda:
        SOFTWARE
    params:
        values=stage_values("difficulty"),
        out=lambda w, output: os.path.dirname(output[0]),  # the study's folder
        easyhard=lambda w, input: os.path.dirname(input.easyhard[0]),
    resources:
        runtime=slurm("difficulty", "runtime"),
        mem_mb=slurm("difficulty", "mem_mb"),
        cpus_per_task=slurm("difficulty", "cpus_per_task"),
    shell:
        "python stages/difficulty.py --params {input.params} --easyhard {params.easyhard} --out {params.out} --log {log}"
