"""Stage validate: check the whole params file before any other stage runs.

Every stage validates the params it is given, but an engine skips stages whose own params did
not change: a typo'd key, or a bad value in a section no changed stage reads, would then pass
unnoticed (DVC: "didn't change, skipping"). This stage depends on the params file as a whole and
comes first in the DAG, so any change to the file is checked, and a bad file stops the build
(exit 2) before anything is run or restored from a cache. Its output never changes (so it never
re-runs what follows it); it only orders the DAG."""
from cglib import cli, tables


def main(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--out", required=True, help="marker file written when the params are valid")
    args, params, log = cli.start(p, argv)  # exits 2 with one line naming the key on bad params
    tables.write_text("params valid\n", args.out)
    log(f"{args.params}: valid (study {params['study']})")


if __name__ == "__main__":
    main()
