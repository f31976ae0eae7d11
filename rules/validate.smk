# Snakemake validates the whole params file on every invocation (rules/common.smk); this rule
# only makes the same marker as DVC's first stage, so both engines describe the same files.
rule validate:
    output:
        VALIDATED,
    log:
        "results/logs/validate.log",
    resources:
        runtime=slurm("validate", "runtime"),
        mem_mb=slurm("validate", "mem_mb"),
        cpus_per_task=slurm("validate", "cpus_per_task"),
    shell:
        "python stages/validate.py --params {PARAMS_FILE} --out {output} --log {log}"
