"""Compare finished studies: per claim, each study's value, interval and verdict side by side,
the settings in which they differ, and the headline numbers → <out>/compare.html (one
self-contained page), compare.csv (claims, one row per claim and study), headline.csv and
settings.csv. A study is its results folder (findings.json, runs.parquet), or its name for
results/<name>; no params file is read. Not a stage of a study: run it on two or more built
studies (`make compare STUDIES="default smoke"`)."""
import argparse
import sys
from pathlib import Path

from cglib import compare, tables


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("studies", nargs="+", metavar="STUDY",
                   help="a finished study's results folder, or its name (results/<name>)")
    p.add_argument("--out", default="results/compare", help="folder for the page and the tables")
    args = p.parse_args(argv)
    if len(args.studies) < 2:
        p.error("give two or more results folders")
    try:
        studies = [compare.load_study(s if Path(s).is_dir() or "/" in s else f"results/{s}") for s in args.studies]
    except compare.CompareError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    out = args.out.rstrip("/")
    claims = compare.claims_table(studies)
    tables.write_text(claims.to_csv(index=False), f"{out}/compare.csv")
    tables.write_text(compare.headline_table(studies).to_csv(index=False), f"{out}/headline.csv")
    tables.write_text(compare.settings_table(studies).to_csv(index=False), f"{out}/settings.csv")
    tables.write_text(compare.page(studies), f"{out}/compare.html")
    print(f"{out}/compare.html: {len(studies)} studies, {claims['id'].nunique()} claims")


if __name__ == "__main__":
    main()
