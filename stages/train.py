"""Stage train: one run (noise × optimizer × seed) → results/runs/<run>/{metrics.parquet, run.json}."""
from pathlib import Path

import pandas as pd
import torch

from cglib import cli, config, tables
from cglib.data import DataError, load_prepared
from cglib.models import pick_device
from cglib.train import train_run


def main(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--data", required=True, help="prepared tensor file")
    p.add_argument("--labels", required=True, help="label table of this noise level (corrupt stage)")
    p.add_argument("--noise", required=True, help="noise level, as spelled in the params file")
    p.add_argument("--optimizer", required=True, choices=sorted(config.OPTIMIZER_NAMES))
    p.add_argument("--clip", type=int, default=0, help="winsorization level c")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--checkpoint", default=None, help="checkpoint file (default results/checkpoints/<run>.pt)")
    args, params, log = cli.start(p, argv)
    t = params["train"]
    opt = {"name": args.optimizer, "clip": args.clip}
    try:  # the same cross-field rules as the params file (clip < B/2, B % 3 for m3, ...)
        config.validate({**params, "train": {**t, "optimizers": [opt]}})
    except config.ParamsError as err:
        cli.fail(f"--optimizer/--clip: {err}", code=2)
    spec = dict(run=config.run_name(args.optimizer, args.clip, args.noise, args.seed),
                noise=float(args.noise), optimizer=args.optimizer, clip=args.clip, seed=args.seed)
    if t["threads"]:
        torch.set_num_threads(t["threads"])
    device = pick_device(t["device"])
    try:
        data = load_prepared(args.data, device)
    except DataError as err:
        cli.fail(str(err))
    lab = pd.read_parquet(args.labels)
    labels = torch.tensor(lab["label"].to_numpy())  # a copy: Arrow buffers are read-only
    corrupt = torch.tensor(lab["corrupt"].to_numpy())
    if len(labels) != len(data["y_train"]):
        cli.fail(f"{args.labels}: {len(labels)} labels for {len(data['y_train'])} training examples")

    ckpt = Path(args.checkpoint or f"results/checkpoints/{spec['run']}.pt")
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    log(f"run {spec['run']} on {device}: {t['steps']} steps, batch {t['batch_size']}, lr {t['lr']}")
    result = train_run(params, data, labels, corrupt, spec, checkpoint=ckpt, log=log)

    out = Path(args.out)
    df = tables.metrics_frame(result["rows"], tables.run_constants(params, spec))
    tables.write_parquet(df, out / "metrics.parquet")
    final = tables.final_values(df)
    # run.json holds no wall time or date: outputs stay a pure function of the params, so DVC
    # and Snakemake agree that a run made by the other engine is up to date (timing is in the log)
    tables.write_json(dict(spec, status=result["status"], steps_done=result["steps_done"], final=final),
                      out / "run.json")
    log(f"done: {result['status']} on {device}, wall {result['wall_s']:.1f} s; final " +
        ", ".join(f"{k} {v:.3f}" for k, v in final.items() if k.endswith("accuracy")))


if __name__ == "__main__":
    main()
