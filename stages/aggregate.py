"""Stage aggregate: every run of the study → results/<study>/{metrics,runs,examples}.parquet,
summary.json (DVC metrics) and the small CSVs of plots/ (DVC plots). The figures and the page
are the report stage's."""
import json
from pathlib import Path

import pandas as pd

from cglib import cli, config, tables


def main(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--out", default=None, help="folder for the aggregated tables (default: results/<study>)")
    p.add_argument("--runs", default=None, help="folder holding one folder per run (default: <out>/runs)")
    p.add_argument("--difficulty", default=None, help="difficulty stage's table (default: <out>/difficulty.parquet)")
    p.add_argument("--difficulty-seeds", default=None,
                   help="where each easy/hard run made its split (difficulty stage; default: <out>/difficulty_seeds.csv)")
    args, params, log = cli.start(p, argv)
    out = Path(args.out or cli.study_dir(params))
    args.runs = args.runs or out / "runs"
    args.difficulty = args.difficulty or out / "difficulty.parquet"
    args.difficulty_seeds = args.difficulty_seeds or out / "difficulty_seeds.csv"
    grid = config.run_grid(params)
    frames, runs, examples = [], [], []

    for spec in grid:  # the grid, not a glob: stale runs of other studies stay out
        folder = Path(args.runs) / spec["run"]
        for name in ("metrics.parquet", "examples.parquet", "run.json"):
            if not (folder / name).is_file():
                cli.fail(f"{folder}/{name}: missing; run the train stage for {spec['run']}")
        df = cli.read_table(folder / "metrics.parquet", f"the train stage for {spec['run']}", cli.REBUILD)
        try:
            meta = json.loads((folder / "run.json").read_text())
        except ValueError as err:
            cli.fail(f"{folder}/run.json: damaged ({err}); delete it and rerun the train stage for {spec['run']}")
        frames.append(df)
        examples.append(cli.read_table(folder / "examples.parquet", f"the train stage for {spec['run']}", cli.REBUILD))
        runs.append({**tables.run_row(config.params_for(params, spec), spec, meta["status"], meta["steps_done"],
                                      tables.final_values(df)), **tables.designation_sizes(examples[-1])})
    metrics = pd.concat(frames, ignore_index=True).astype(tables.METRIC_COLUMNS)
    runs_df = pd.DataFrame(runs)
    examples_df = pd.concat(examples, ignore_index=True).astype(tables.EXAMPLE_COLUMNS)
    diff = cli.read_table(args.difficulty, "the difficulty stage", cli.REBUILD)
    hist = tables.histogram(diff, len(params["difficulty"]["seeds"]))
    if not Path(args.difficulty_seeds).is_file():
        cli.fail(f"{args.difficulty_seeds}: missing; run the difficulty stage")
    seeds = pd.read_csv(args.difficulty_seeds)
    e5 = tables.accuracy_by_difficulty(metrics)
    e6 = tables.cross_generalization(metrics)
    e8 = tables.score_correlations(metrics)

    tables.write_parquet(metrics, out / "metrics.parquet")
    tables.write_parquet(runs_df, out / "runs.parquet")
    tables.write_parquet(examples_df, out / "examples.parquet")
    summary = tables.summary(params, runs_df, metrics)
    summary.update(tables.difficulty_summary(seeds, hist, e5, e6, e8))
    tables.write_json(summary, out / "summary.json")
    for name, wide in tables.plot_tables(metrics).items():
        tables.write_text(wide.to_csv(index=False, float_format="%.6g"), out / "plots" / f"{name}.csv")
    e5_wide = tables.difficulty_plot_table(e5, hist)
    for name, df in (("accuracy_by_difficulty", e5_wide), ("cross_generalization", e6),
                     ("score_correlations", e8)):
        tables.write_text(df.to_csv(index=False, float_format="%.6g"), out / "plots" / f"{name}.csv")

    log(f"{len(grid)} runs, {len(metrics)} metric rows → {out}/metrics.parquet")
    fmt = lambda v: f"{v:.3f}"  # noqa: E731
    cols = ["run", "status", "train_accuracy", "pristine_accuracy", "corrupt_accuracy", "test_accuracy"]
    log(runs_df.reindex(columns=cols).to_string(index=False, float_format=fmt))
    log("\neasy/hard split per seed:\n" + seeds.to_string(index=False, float_format=fmt))
    log("\naccuracy by difficulty (E5, final step):\n" + e5_wide.to_string(index=False, float_format=fmt))
    log("\ncross-generalization (E6, W&S §4.4):\n" + e6.to_string(index=False, float_format=fmt))


if __name__ == "__main__":
    main()
