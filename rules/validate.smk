# Snakemake validates the whole params file on every invocation (rules/common.smk); this rule
# only makes the same marker as DVC's first stage, so both engines describe the same files. It is
# a target of `all`, not an (ancient) input of prepare: when a job that ancient inputs come from
# must re-run, Snakemake 9 skips the needrun check of every job below it, so a changed value
# would not re-run its stage (snakemake/snakemake#4166; tests/test_pipeline.py checks).
rule validate:
    input:
        params=PARAMS_FILE,  # an edit re-validates
    output:
        VALIDATED,
    log:
        f"{OUT}/logs/validate.log",
    conda:
        SOFTWARE
    shell:
        "python stages/validate.py --params {input.params} --out {output} --log {log}"
