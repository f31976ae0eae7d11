"""Stage difficulty: the K easy/hard tables → results/<study>/difficulty.parquet (W&S §4.3),
difficulty_splits.parquet (e-train / e-test / h-train / h-test, W&S §4.2) and
difficulty_seeds.csv (where each seed's split fell)."""
from pathlib import Path

from cglib import cli, config, tables
from cglib.difficulty import PoolsTooSmall, cross_splits, histogram, merge_seeds, seed_summary


def main(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--out", default=None, help="folder for the difficulty tables (default: results/<study>)")
    p.add_argument("--easyhard", default=None, help="folder of the easy/hard tables (default: <out>/easyhard)")
    args, params, log = cli.start(p, argv)
    args.out = args.out or cli.study_dir(params)
    args.easyhard = args.easyhard or Path(args.out) / "easyhard"
    d = params["difficulty"]
    found = {}
    for s in d["seeds"]:
        path = Path(args.easyhard) / f"seed={s}.parquet"
        if not path.is_file():
            cli.fail(f"{path}: missing; run the easyhard stage for seed {s}")
        found[s] = cli.read_table(path, f"the easyhard stage for seed {s}")
    diff = merge_seeds(found)
    try:
        splits = cross_splits(diff, d, min_train=params["train"]["batch_size"])
    except PoolsTooSmall as err:
        cli.fail(str(err), code=config.EXIT_BAD_PARAMS)
    seeds = seed_summary(found, n_per_epoch=len(diff) / d["batch_size"])
    out = Path(args.out)
    tables.write_parquet(diff, out / "difficulty.parquet")
    tables.write_parquet(splits, out / "difficulty_splits.parquet")
    tables.write_text(seeds.to_csv(index=False, float_format="%.6g"), out / "difficulty_seeds.csv")

    log(seeds.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    hist = histogram(diff, len(d["seeds"]))
    log("difficulty histogram:\n" + hist.to_string(index=False))
    log("splits: " + ", ".join(f"{k} {v}" for k, v in splits["subset"].value_counts(sort=False).items()))


if __name__ == "__main__":
    main()
