"""Stage prepare: raw dataset → data/prepared/<dataset>.pt (the study's train/test subsets)."""
from cglib import cli, data, tables


def main(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--out", required=True, help="prepared tensor file to write")
    args, params, log = cli.start(p, argv)
    try:
        prepared = data.prepare(params["data"])
    except data.DataError as err:
        cli.fail(str(err))
    tables.save_torch(prepared, args.out)
    log(f"{'dataset':<14} {'classes':>7} {'train':>7} {'test':>7}  input")
    log(f"{prepared['dataset']:<14} {prepared['num_classes']:>7} {len(prepared['y_train']):>7} "
        f"{len(prepared['y_test']):>7}  {tuple(prepared['x_train'].shape[1:])}")


if __name__ == "__main__":
    main()
