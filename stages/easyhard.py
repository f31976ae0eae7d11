"""Stage easyhard: one easy/hard classification run (W&S §4.2) → results/<study>/easyhard/seed=<s>.parquet.

Plain SGD on the clean training labels until training accuracy first reaches
difficulty.threshold; the examples then classified correctly are easy, the rest hard."""
from cglib import cli, config, tables
from cglib.difficulty import ThresholdNotReached, classify_easy_hard, easyhard_frame


def main(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--data", required=True, help="prepared tensor file")
    p.add_argument("--seed", type=int, required=True, help="one of difficulty.seeds")
    p.add_argument("--out", required=True, help="easy/hard table to write")
    args, params, log = cli.start(p, argv)
    d, t = params["difficulty"], params["train"]
    data, device = cli.load_training_data(args.data, t)
    cli.check_model_on(data, params["model"])
    log(f"easy/hard seed {args.seed} on {device}: {len(data['y_train'])} examples, lr {d['lr']}, "
        f"batch {d['batch_size']}, until training accuracy ≥ {d['threshold']}")
    try:
        result = classify_easy_hard(params, data, args.seed, log=log)
    except ThresholdNotReached as err:  # a params problem: the run could not work as asked
        cli.fail(str(err), code=config.EXIT_BAD_PARAMS)
    df = easyhard_frame(result)
    tables.write_parquet(df, args.out)
    n = len(df)
    log(f"{'seed':>4} {'step':>6} {'epoch':>6} {'accuracy':>8} {'easy':>6} {'hard':>6}")
    log(f"{args.seed:>4} {result['step']:>6} {result['step'] * d['batch_size'] / n:>6.2f} "
        f"{result['accuracy']:>8.4f} {int((~df['hard']).sum()):>6} {int(df['hard'].sum()):>6}")


if __name__ == "__main__":
    main()
