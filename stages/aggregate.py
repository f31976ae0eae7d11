"""Stage aggregate: every run of the study → results/{metrics,runs}.parquet, summary.json, plots/."""
import json
from pathlib import Path

import pandas as pd

from cglib import cli, config, plots, tables


def main(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--runs", default="results/runs", help="folder holding one folder per run")
    p.add_argument("--out", default="results", help="folder for the aggregated tables")
    args, params, log = cli.start(p, argv)
    grid = config.run_grid(params)
    frames, runs = [], []
    for spec in grid:  # the grid, not a glob: stale runs of other studies stay out
        folder = Path(args.runs) / spec["run"]
        if not (folder / "metrics.parquet").is_file():
            cli.fail(f"{folder}/metrics.parquet: missing; run the train stage for {spec['run']}")
        df = pd.read_parquet(folder / "metrics.parquet")
        meta = json.loads((folder / "run.json").read_text())
        frames.append(df)
        runs.append(tables.run_row(params, spec, meta["status"], meta["steps_done"], tables.final_values(df)))
    metrics = pd.concat(frames, ignore_index=True).astype(tables.METRIC_COLUMNS)
    runs_df = pd.DataFrame(runs)
    out = Path(args.out)
    tables.write_parquet(metrics, out / "metrics.parquet")
    tables.write_parquet(runs_df, out / "runs.parquet")
    tables.write_json(tables.summary(params, runs_df, metrics), out / "summary.json")
    for name, wide in tables.plot_tables(metrics).items():
        tables.write_text(wide.to_csv(index=False, float_format="%.6g"), out / "plots" / f"{name}.csv")
    plots.learning_curves(metrics, out / "plots" / "learning_curves.png")
    plots.coherence_curves(metrics, out / "plots" / "m_coherence.png")
    plots.share_curves(metrics, out / "plots" / "loss_shares.png")

    log(f"{len(grid)} runs, {len(metrics)} metric rows → {out}/metrics.parquet")
    cols = ["run", "status", "train_accuracy", "pristine_accuracy", "corrupt_accuracy", "test_accuracy"]
    log(runs_df.reindex(columns=cols).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
