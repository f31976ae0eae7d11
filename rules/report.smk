# The study page and its figures. Each figure is also marked for `snakemake --report`, in a
# category per experiment, with its caption from report/captions/.
REPORT_CATEGORY = {
    "learning_curves": "E1 learning curves (CG Fig. 1)",
    "loss_shares": "E2 loss-reduction shares (CG Figs. 2-3)",
    "winsorization": "E3 winsorized SGD (CG §3)",
    "robust_optimizers": "E4 RM3, RA3, M3 (W&S §3)",
    "accuracy_by_difficulty": "E5 accuracy by difficulty (W&S Fig. 5)",
    "easy_hard": "E6 easy / hard (W&S §4.4)",
    "m_coherence": "E7 m-coherence (MC)",
    "m_coherence_layers": "E7 m-coherence (MC)",
    "difficulty_scores": "E8 difficulty scores",
}


def report_output(name):
    """results/<name>, marked for Snakemake's report when it is a page, a table or a PNG."""
    path = f"results/{name}"
    stem, ext = os.path.splitext(os.path.basename(name))
    if ext == ".svg":
        return path
    category = REPORT_CATEGORY.get(stem, "Report")
    return report(path, caption=f"../report/captions/{stem}.rst", category=category)


rule report:
    input:
        metrics="results/metrics.parquet",
        runs="results/runs.parquet",
        difficulty=DIFFICULTY,
        seeds="results/difficulty_seeds.csv",
    output:
        [report_output(name) for name in cgtables.REPORT_OUTPUTS],
    log:
        "results/logs/report.log",
    params:  # the page shows the whole params file: any value change redraws it (the file's path
        # is no input: studies/x.yaml under Snakemake and params.yaml under DVC are the same study)
        values=json.dumps(P, sort_keys=True),
    shell:
        "python stages/report.py --params {PARAMS_FILE} --results results --out results --log {log}"
