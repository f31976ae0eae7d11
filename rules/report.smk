# The study page and its figures. Each figure is also marked for `snakemake --report`, in a
# category per experiment, with its caption from report/captions/.
rule report:
    input:
        params=ancient(PARAMS_FILE),
        metrics=f"{OUT}/metrics.parquet",
        runs=f"{OUT}/runs.parquet",
        difficulty=DIFFICULTY,
        seeds=f"{OUT}/difficulty_seeds.csv",
    output:
        [report_output(name) for name in cgtables.REPORT_OUTPUTS],
        scorecard=f"{OUT}/{cgcli.SCORECARD}",  # dvc.yaml's metrics (not a figure: no report entry)
    log:
        f"{OUT}/logs/report.log",
    conda:
        SOFTWARE
    params:  # the page shows the whole params file: any value change redraws it
        values=json.dumps(P, sort_keys=True),
        out=lambda w, output: os.path.dirname(output.scorecard),  # the study's folder
    resources:
        runtime=slurm("report", "runtime"),
        mem_mb=slurm("report", "mem_mb"),
        cpus_per_task=slurm("report", "cpus_per_task"),
    shell:
        "python stages/report.py --params {input.params} --results {params.out} --out {params.out} --log {log}"
