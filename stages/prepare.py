"""Stage prepare: raw dataset → results/<study>/prepared.pt (the study's train/test subsets).

Studies whose data sections are equal share the work: the file is made once under --store,
named by `cglib.data.prepared_key` (the data section, the raw files, the code), and each study's
file is a hard link to it (a copy where links are not possible)."""
import os
import shutil
from pathlib import Path

from cglib import cli, data, tables


def main(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--out", required=True, help="prepared tensor file to write")
    p.add_argument("--store", default="data/prepared",
                   help="folder of prepared files shared between studies with equal data sections")
    args, params, log = cli.start(p, argv)
    d = params["data"]
    try:
        shared = Path(args.store) / f"{d['dataset']}-{data.prepared_key(d, Path(__file__).read_bytes())[:16]}.pt"
        try:
            prepared, how = data.read_prepared(shared), f"shared: {shared}, prepared earlier for an equal data section"
        except data.DataError:  # not there (or damaged): make it
            prepared, how = data.prepare(d), f"prepared into {shared}"
            tables.save_torch(prepared, shared)
    except data.DataError as err:
        cli.fail(str(err))
    out, tmp = Path(args.out), Path(f"{args.out}.tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.unlink(missing_ok=True)
    try:
        os.link(shared, tmp)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(shared, tmp)
    os.replace(tmp, out)
    log(how)
    log(f"{'dataset':<14} {'classes':>7} {'train':>7} {'test':>7}  input")
    log(f"{prepared['dataset']:<14} {prepared['num_classes']:>7} {len(prepared['y_train']):>7} "
        f"{len(prepared['y_test']):>7}  {tuple(prepared['x_train'].shape[1:])}")


if __name__ == "__main__":
    main()
