"""Stage corrupt: prepared data + one noise level → per-example label table (Parquet)."""
import pandas as pd

from cglib import cli, tables
from cglib.corruption import corrupt_labels, proper_accuracy
from cglib.data import DataError, read_prepared


def main(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--data", required=True, help="prepared tensor file")
    p.add_argument("--noise", required=True, type=float, help="noise level ε in [0, 1]")
    p.add_argument("--out", required=True, help="label table to write")
    args, params, log = cli.start(p, argv)
    if not 0 <= args.noise <= 1:
        cli.fail(f"--noise {args.noise} is outside [0, 1]", code=2)
    try:
        d = read_prepared(args.data)
    except DataError as err:
        cli.fail(str(err))
    clean = d["y_train"].numpy()
    noisy, corrupt = corrupt_labels(clean, args.noise, params["corrupt"]["seed"], d["num_classes"])
    df = pd.DataFrame({"example": range(len(clean)), "label_clean": clean, "label": noisy, "corrupt": corrupt})
    tables.write_parquet(df.astype({"example": "int64", "label_clean": "int64", "label": "int64"}), args.out)
    log(f"{'noise':>6} {'n':>7} {'corrupt':>8} {'pristine frac':>14} {'expected':>9}")
    log(f"{args.noise:>6g} {len(df):>7} {int(corrupt.sum()):>8} {1 - corrupt.mean():>14.4f} "
        f"{proper_accuracy(args.noise, d['num_classes']):>9.4f}")


if __name__ == "__main__":
    main()
