# The study page and its figures. Each figure is also marked for `snakemake --report`, in a
# category per experiment, with its caption from report/captions/.
rule report:
    input:
        params=ancient(PARAMS_FILE),
        metrics="results/metrics.parquet",
        runs="results/runs.parquet",
        difficulty=DIFFICULTY,
        seeds="results/difficulty_seeds.csv",
    output:
        [report_output(name) for name in cgtables.REPORT_OUTPUTS],
        f"results/{cgcli.SCORECARD}",  # dvc.yaml's metrics (not a figure: no report entry)
    log:
        "results/logs/report.log",
    conda:
        SOFTWARE
    params:  # the page shows the whole params file: any value change redraws it
        values=json.dumps(P, sort_keys=True),
    resources:
        runtime=slurm("report", "runtime"),
        mem_mb=slurm("report", "mem_mb"),
        cpus_per_task=slurm("report", "cpus_per_task"),
    shell:
        "python stages/report.py --params {input.params} --results results --out results --log {log}"
