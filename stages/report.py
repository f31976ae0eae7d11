"""Stage report: the aggregated tables → results/<study>/report.html (self-contained: the papers'
figures and tables, the findings scorecard on top), findings.{json,csv}, and every figure of
cglib.report.FIGURES as plots/<name>.png and .svg, all in the study's folder."""
import json
import time
from pathlib import Path

import pandas as pd

from cglib import cli, findings, report, tables


def main(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--out", default=None, help="folder for report.html, findings.* and plots/ "
                   "(default: results/<study>)")
    p.add_argument("--results", default=None, help="folder of the aggregate stage's tables (default: --out)")
    args, params, log = cli.start(p, argv)
    start = time.perf_counter()
    out = Path(args.out or cli.study_dir(params))
    res = Path(args.results or out)

    def read(name, made_by="the aggregate stage"):
        return cli.read_table(res / name, made_by, cli.REBUILD)

    metrics, runs = read("metrics.parquet"), read("runs.parquet")
    hist = tables.histogram(read("difficulty.parquet", "the difficulty stage"), len(params["difficulty"]["seeds"]))
    seeds_csv = res / "difficulty_seeds.csv"
    seeds = pd.read_csv(seeds_csv) if seeds_csv.is_file() else None

    card = findings.scorecard(metrics, runs, params)
    findings.write(card, out)
    # DVC metrics: a few columns (run counts, claims per verdict) from findings.json as written
    card_doc = json.loads((out / "findings.json").read_text())
    tables.write_json(cli.scorecard(card_doc, runs["status"]), out / cli.SCORECARD)
    t = report.prepare(metrics, runs, hist, seeds, params)
    images = report.draw(t, out / "plots")
    logs = report.run_logs(res / "logs" / "train", runs["run"])
    prov = {**report.provenance(logs), **cli.environment()}  # + every installed version vs requirements.lock
    html = report.render(card, t, images, params, logs, prov)
    tables.write_text(html, out / "report.html")

    shown = [name for name, png in images.items() if png]
    log(f"{out}/report.html: {len(html) / 1e6:.2f} MB, {len(shown)} of {len(images)} figures "
        f"({', '.join(shown)}); {len(card)} findings: "
        + ", ".join(f"{int((card['verdict'] == v).sum())} {v}" for v in findings.VERDICTS)
        + f"; {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
