"""CLI verbs ``train``, ``evaluate`` and ``reproduce`` (registered by :mod:`kerasmlic.cli.app`).

Each ``add_*_parser(sub)`` adds one subparser to the ``kerasmlic`` command's
subparsers and sets ``func`` to a handler that calls the library; the
handlers raise :class:`~kerasmlic.errors.UsageError` for bad input, which
``kerasmlic.cli.main`` turns into one line and exit code 2.
"""

import argparse

from kerasmlic.cli.args import add_set_argument, positive_int
from kerasmlic.reporting.rate_search import DEFAULT_RATES, RATE_SELECTIONS


def add_train_parser(sub):
    """Add ``kerasmlic train [CONFIG] --data DIR ...``.

    Args:
        sub: The ``add_subparsers()`` object of the main parser.

    Returns:
        The new subparser.
    """
    p = sub.add_parser(
        "train",
        help="train a model on a shard folder",
        description=(
            "Train a model. Settings come from the defaults, then CONFIG (YAML, see "
            "experiments/), then the flags, then --set. Running the same command again "
            "after an interruption resumes from the last completed epoch."
        ),
    )
    p.add_argument("config", nargs="?", default=None, help="YAML config (experiments/*.yaml)")
    p.add_argument("--data", default=None, help="shard folder made by `kerasmlic build`")
    p.add_argument("--model", default=None, help="registry name, e.g. seq2seq_attention")
    p.add_argument("--backbone", default=None, help="encoder, e.g. tiny or resnet50")
    p.add_argument("--epochs", type=positive_int, default=None, help="training epochs")
    p.add_argument("--batch-size", type=positive_int, default=None, help="global batch size")
    p.add_argument("--image-size", type=positive_int, default=None, help="input side in px")
    p.add_argument("--run-dir", default=None, help="run directory (default runs/MODEL)")
    add_set_argument(p, "override a config key, e.g. --set train.learning_rate=3e-4 (repeatable)")
    p.add_argument(
        "--strategy",
        choices=("default", "mirrored", "multiworker"),
        default=None,
        help="tf.distribute strategy",
    )
    p.add_argument(
        "--data-service",
        default=None,
        metavar="grpc://HOST:PORT",
        help="read, decode and augment the training stream on this tf.data service "
        "dispatcher's workers (`kerasmlic data-service`; sets data.service)",
    )
    p.set_defaults(func=cmd_train)
    return p


def config_from_args(args):
    """Resolve the config of a ``train`` command line.

    Args:
        args: Parsed ``train`` arguments.

    Returns:
        The validated config dict.
    """
    from kerasmlic.training.config import load_config

    return load_config(
        args.config,
        args.overrides,
        **{
            "model.name": args.model,
            "model.encoder": args.backbone,
            "data.dir": args.data,
            "data.image_size": args.image_size,
            "data.batch_size": args.batch_size,
            "train.epochs": args.epochs,
            "train.strategy": args.strategy,
            "data.service": args.data_service,
            "run_dir": args.run_dir,
        },
    )


def cmd_train(args):
    """Handle ``kerasmlic train``."""
    from kerasmlic.training import train
    from kerasmlic.training.data_service import check_reachable

    # Before TensorFlow starts and the model is built: a mistyped or dead dispatcher
    # fails in a second, not after a minute of set-up.
    if args.data_service:
        check_reachable(args.data_service, what="--data-service")
    config = config_from_args(args)
    if config["data"]["service"] and not args.data_service:
        check_reachable(config["data"]["service"])
    train(config)


def add_evaluate_parser(sub):
    """Add ``kerasmlic evaluate RUN_DIR [--data DIR] [--split val] [--json FILE]``.

    Args:
        sub: The ``add_subparsers()`` object of the main parser.

    Returns:
        The new subparser.
    """
    p = sub.add_parser("evaluate", help="evaluate a trained run on a split")
    p.add_argument("run_dir", help="run directory made by `kerasmlic train`")
    p.add_argument("--data", default=None, help="shard folder (default: the run's)")
    p.add_argument("--split", default="val", help="split to evaluate (default val)")
    p.add_argument("--json", default=None, help="output JSON (default RUN_DIR/eval_SPLIT.json)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="prediction batch")
    p.set_defaults(func=cmd_evaluate)
    return p


def cmd_evaluate(args):
    """Handle ``kerasmlic evaluate``."""
    from kerasmlic.evaluation import evaluate_run

    evaluate_run(
        args.run_dir, args.data, split=args.split, json_path=args.json, batch_size=args.batch_size
    )


def add_reproduce_parser(sub):
    """Add ``kerasmlic reproduce --data DIR [--models a,b] [--epochs N] [--jobs N] [--out DIR]``.

    Also ``--seeds``, ``--rates``, ``--tune-epochs``, ``--trial-seeds``,
    ``--rate-selection``, ``--set`` and ``--seed-set``.

    Args:
        sub: The ``add_subparsers()`` object of the main parser.

    Returns:
        The new subparser.
    """
    p = sub.add_parser(
        "reproduce",
        help="the study: tune, train over seeds, write results.md + plots",
        description=(
            "For every model (or --models), with its experiments/ config: pick the learning "
            "rate by a keras-tuner grid search over --rates (the same for every model), train "
            "--seeds times, evaluate on the test split (val when the shards have none), then "
            "write results.md (mean ± std over seeds, paired t-test against BCE on F1@3) and "
            "PNG plots. Finished runs in OUT are reused, interrupted ones resume."
        ),
    )
    p.add_argument("--data", required=True, help="shard folder made by `kerasmlic build`")
    p.add_argument("--models", default=None, help="comma-separated registry names")
    p.add_argument("--epochs", type=positive_int, default=None, help="override every config")
    p.add_argument("--out", default=None, help="output folder (default runs/reproduce)")
    p.add_argument("--seeds", type=positive_int, default=1, help="trainings per model (default 1)")
    p.add_argument(
        "--rates",
        default=None,
        help="comma-separated learning rates of each model's grid search, or 'none' to keep "
        "the configs' rates (default 5e-4,1e-3,2e-3,4e-3)",
    )
    p.add_argument(
        "--tune-epochs",
        type=positive_int,
        default=None,
        help="epochs per tuning trial (default half the training epochs)",
    )
    p.add_argument(
        "--trial-seeds",
        type=positive_int,
        default=1,
        help="trials per rate, with train.seed 0..N-1; a rate scores the mean of its "
        "trials' val mAP (default 1)",
    )
    p.add_argument(
        "--rate-selection",
        choices=RATE_SELECTIONS,
        default=RATE_SELECTIONS[0],
        help="how each model's rate is picked: 'trials' (default), the keras-tuner grid of "
        "--tune-epochs trials; 'full', seed 0 trained for the whole run at each rate, the "
        "best kept as seed 0 (short trials favour the rate that learns fastest)",
    )
    add_set_argument(p, "override a config key in every run (repeatable)")
    p.add_argument(
        "--seed-set",
        dest="seed_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key in the seed trainings only, after --set; the tuning "
        "trials keep --set alone (repeatable)",
    )
    p.add_argument(
        "--jobs",
        type=positive_int,
        default=1,
        help="searches and seed runs at once, each in a worker process (default 1)",
    )
    p.set_defaults(func=cmd_reproduce)
    return p


def cmd_reproduce(args):
    """Handle ``kerasmlic reproduce``."""
    from kerasmlic.errors import UsageError
    from kerasmlic.reporting.reproduce import reproduce

    models = None
    if args.models:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
    rates = DEFAULT_RATES
    if args.rates is not None:
        text = args.rates.strip().lower()
        try:
            rates = [] if text == "none" else [float(r) for r in text.split(",") if r.strip()]
        except ValueError:
            raise UsageError(f"--rates takes comma-separated numbers, got {args.rates!r}") from None
    reproduce(
        args.data,
        models=models,
        epochs=args.epochs,
        out=args.out,
        seeds=args.seeds,
        rates=rates,
        tune_epochs=args.tune_epochs,
        trial_seeds=args.trial_seeds,
        rate_selection=args.rate_selection,
        overrides=args.overrides,
        seed_overrides=args.seed_overrides,
        jobs=args.jobs,
    )


def main(argv=None):
    """Run the three subcommands without the full parser (``python -m kerasmlic.cli.train``).

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        The process exit code (0, 2 on a usage error).
    """
    import os
    import sys

    from kerasmlic.errors import UsageError

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = argparse.ArgumentParser(prog="kerasmlic")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    add_train_parser(sub)
    add_evaluate_parser(sub)
    add_reproduce_parser(sub)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except UsageError as e:
        print(f"kerasmlic {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
