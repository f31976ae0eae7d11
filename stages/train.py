"""Stage train: one run (noise × optimizer × seed, an E6 subset run, or with --mc an E7 run in
MC's conditions) →
results/<study>/runs/<run>/{metrics.parquet, examples.parquet, run.json}; its checkpoint beside
the runs folder, results/<study>/checkpoints/<run>.pt."""
from pathlib import Path

import pandas as pd
import torch

from cglib import cli, config, scores, tables
from cglib.train import train_run


def main(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--data", required=True, help="prepared tensor file")
    p.add_argument("--labels", default=None, help="label table of this noise level (corrupt stage); "
                   "not with --subset, whose runs use the clean labels")
    p.add_argument("--noise", default="0", help="noise level, as spelled in the params file")
    p.add_argument("--optimizer", required=True, choices=sorted(config.OPTIMIZER_NAMES))
    p.add_argument("--clip", type=int, default=0, help="winsorization level c")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--difficulty", default=None, help="the difficulty stage's table: E5 accuracy by difficulty")
    p.add_argument("--subset", default="full", choices=["full", "e-train", "h-train"],
                   help="E6: train on this part of the easy/hard split (needs --splits)")
    p.add_argument("--splits", default=None, help="cross-generalization splits (difficulty stage)")
    p.add_argument("--mc", action="store_true",
                   help="an E7 run in MC's conditions: the mc section's model, lr, momentum and steps, plain SGD")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint file (default: checkpoints/<run>.pt beside the folder of --out)")
    args, params, log = cli.start(p, argv)
    if args.mc and (args.subset != "full" or args.optimizer != "sgd" or args.clip):
        cli.fail("--mc runs are plain SGD on the full training set (no --subset, --optimizer sgd --clip 0)", code=2)
    spec = dict(noise=float(args.noise), optimizer=args.optimizer, clip=args.clip, seed=args.seed,
                subset=args.subset)
    if args.mc:
        spec.update(run=config.mc_run_name(args.noise, args.seed), conditions="mc")
    elif args.subset == "full":
        spec["run"] = config.run_name(args.optimizer, args.clip, args.noise, args.seed)
    else:
        spec["run"] = config.subset_run_name(args.subset, args.seed)
    # mc and E6 runs train with their own model / steps (config.params_for)
    params = config.params_for(params, spec)
    t = params["train"]
    opt = {"name": args.optimizer, "clip": args.clip}
    try:
        config.check_run(params, opt)
    except config.ParamsError as err:
        cli.fail(f"--optimizer/--clip: {err}", code=2)
    if (args.subset == "full") != (args.labels is not None) or (args.subset != "full") != (args.splits is not None):
        cli.fail("give --labels for a full run, or --subset with --splits for an E6 run", code=2)
    data, device = cli.load_training_data(args.data, t)
    cli.check_model_on(data, params["model"], "mc.model" if args.mc else "model",
                       "train.optimizers" if args.optimizer == "winsorized" and args.clip else None)
    n = len(data["y_train"])
    examples = pd.DataFrame({"example": range(n), "label_clean": data["y_train"].cpu().numpy()})
    if args.labels:
        lab = cli.read_table(args.labels, "the corrupt stage")
        if len(lab) != n:
            cli.fail(f"{args.labels}: {len(lab)} labels for {n} training examples")
        examples["label"], examples["corrupt"] = lab["label"].to_numpy(), lab["corrupt"].to_numpy()
    else:
        examples["label"], examples["corrupt"] = examples["label_clean"], False
    if args.difficulty:
        diff = cli.read_table(args.difficulty, "the difficulty stage")
        if len(diff) != n or not (diff["example"].to_numpy() == examples["example"].to_numpy()).all():
            cli.fail(f"{args.difficulty}: does not list the {n} training examples of {args.data}")
        examples["difficulty"] = diff["difficulty"].to_numpy()
    if args.mc and params["mc"]["n_train"]:  # the first n_train examples: random labels memorised in a minute
        keep = params["mc"]["n_train"]
        if keep > n:
            cli.fail(f"mc.n_train: {keep} exceeds the {n} training examples of {args.data}", code=2)
        examples = examples.iloc[:keep]
        data = dict(data, x_train=data["x_train"][:keep], y_train=data["y_train"][:keep])
    tests = {}
    if args.subset != "full":
        splits = cli.read_table(args.splits, "the difficulty stage")
        part = lambda s: torch.tensor(splits.loc[splits["subset"] == s, "example"].to_numpy())  # noqa: E731
        for s in ("e-test", "h-test"):
            tests[s] = (data["x_train"][part(s).to(device)], data["y_train"][part(s).to(device)])
        idx = part(args.subset)
        if len(idx) == 0:
            cli.fail(f"{args.splits}: no example in subset {args.subset}")
        examples = examples.iloc[idx.numpy()].reset_index(drop=True)
        data = dict(data, x_train=data["x_train"][idx.to(device)], y_train=data["y_train"][idx.to(device)])

    labels = torch.tensor(examples["label"].to_numpy())  # a copy: Arrow buffers are read-only
    corrupt = torch.tensor(examples["corrupt"].to_numpy()) if args.subset == "full" else None
    difficulty = torch.tensor(examples["difficulty"].to_numpy()) if args.difficulty else None
    ckpt = Path(args.checkpoint or Path(args.out).parent.parent / "checkpoints" / f"{spec['run']}.pt")
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    log(f"run {spec['run']} on {device}: {len(labels)} examples, {t['steps']} steps, "
        f"batch {t['batch_size']}, lr {t['lr']}")
    inputs = {name: tables.file_digest(path) for name, path in
              (("data", args.data), ("labels", args.labels), ("difficulty", args.difficulty),
               ("splits", args.splits)) if path}
    result = train_run(params, data, labels, corrupt, spec, checkpoint=ckpt, log=log,
                       difficulty=difficulty, tests=tests, inputs=inputs)

    out = Path(args.out)
    per_example = pd.concat([examples, result["scores"]], axis=1)
    rows = result["rows"] + scores.score_rows(per_example, result["steps_done"],
                                              result["steps_done"] * t["batch_size"] / len(labels))
    df = tables.metrics_frame(rows, tables.run_constants(params, spec))
    tables.write_parquet(df, out / "metrics.parquet")
    tables.write_parquet(tables.examples_frame(per_example, spec["run"]), out / "examples.parquet")
    final = tables.final_values(df)
    # run.json holds no wall time or date: outputs stay a pure function of the params, so DVC
    # and Snakemake agree that a run made by the other engine is up to date (timing is in the log)
    # device: what the run trained on and the GPU options as they took effect (cglib.train.device_options)
    tables.write_json(dict(spec, status=result["status"], steps_done=result["steps_done"], final=final,
                           device=result["device"]), out / "run.json")
    log(f"done: {result['status']} on {device}, wall {result['wall_s']:.1f} s; final " +
        ", ".join(f"{k} {v:.3f}" for k, v in final.items() if k.endswith("accuracy")))


if __name__ == "__main__":
    main()
