# coherent-gradients: the whole study from one params file.
#   snakemake --cores all                                  # params.yaml
#   snakemake --cores all --configfile studies/smoke.yaml  # another study, no code change
# Data flow: prepare → corrupt (per noise) → easyhard (per seed) → difficulty →
#            train (noise × optimizer × seed; replicates; E6: subset × seed; E7 in MC's
#            conditions) → aggregate → report (results/report.html).
from snakemake.utils import min_version

min_version("9.0")


# No `configfile:` directive: Snakemake's own reader would fail on a bad params.yaml with neither
# file nor line (exit 1); rules/common.smk reads it as every stage does (one line, exit 2).


##### helpers: params validation, the run grid, output lists #####
include: "rules/common.smk"


report: "report/workflow.rst"  # `snakemake --report results/snakemake-report.html`


##### target rule #####
localrules: validate  # a second's check: on a cluster it runs where Snakemake runs, not as a job


rule all:
    input:
        VALIDATED,  # a target, not an input of prepare: see rules/validate.smk
        aggregate_outputs(),
        report_outputs(),


##### stages: one rule file each, all calling stages/<name>.py #####
include: "rules/validate.smk"
include: "rules/prepare.smk"
include: "rules/corrupt.smk"
include: "rules/easyhard.smk"
include: "rules/difficulty.smk"
include: "rules/train.smk"
include: "rules/aggregate.smk"
include: "rules/report.smk"
