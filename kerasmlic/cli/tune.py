"""CLI subcommand ``tune`` (registered by :mod:`kerasmlic.cli.app` with :func:`add_tune_parser`)."""

import argparse

from kerasmlic.cli.args import add_set_argument, positive_int


def add_tune_parser(sub):
    """Add ``kerasmlic tune CONFIG --data DIR [--tuner ...] [--overwrite | --resume] ...``.

    Args:
        sub: The ``add_subparsers()`` object of the main parser.

    Returns:
        The new subparser.
    """
    p = sub.add_parser(
        "tune",
        help="hyperparameter search with keras-tuner (objective: val mAP)",
        description=(
            "Search hyperparameters with keras-tuner. CONFIG is a training config plus a "
            "'tune:' section declaring the search space (experiments/tune_*.yaml). Results "
            "go to DIRECTORY/PROJECT: leaderboard.md/.csv, best_config.yaml (train it with "
            "`kerasmlic train`) and best/ (a run directory for `kerasmlic export`). An "
            "existing project is only touched with --resume or --overwrite. Distributed: "
            "run the same command with KERASTUNER_TUNER_ID (chief / tuner0, tuner1...), "
            "KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT set."
        ),
    )
    p.add_argument("config", help="tuning YAML (experiments/tune_*.yaml)")
    p.add_argument("--data", required=True, help="shard folder made by `kerasmlic build`")
    p.add_argument(
        "--tuner",
        choices=("hyperband", "random", "bayesian", "grid"),
        default=None,
        help="search algorithm (default: tune.tuner, else hyperband)",
    )
    p.add_argument(
        "--max-trials",
        type=positive_int,
        default=None,
        help="trials to run (random/bayesian); a cap on Hyperband's schedule",
    )
    p.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help="epochs per trial (hyperband: the most any trial gets)",
    )
    p.add_argument("--project-name", default=None, help="project folder (default: CONFIG's name)")
    p.add_argument("--directory", default=None, help="folder of projects (default runs/tune)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--overwrite", action="store_true", help="delete an existing project of that name first"
    )
    mode.add_argument(
        "--resume", action="store_true", help="continue an existing project (same config)"
    )
    add_set_argument(p, "override a key of the base training config, e.g. --set data.batch_size=16")
    p.set_defaults(func=cmd_tune)
    return p


def cmd_tune(args):
    """Handle ``kerasmlic tune``."""
    from kerasmlic.tuning import tune

    tune(
        args.config,
        data_dir=args.data,
        tuner=args.tuner,
        max_trials=args.max_trials,
        epochs=args.epochs,
        project_name=args.project_name,
        directory=args.directory,
        overwrite=args.overwrite,
        resume=args.resume,
        overrides=args.overrides,
    )


def main(argv=None):
    """Run ``tune`` alone (``python -m kerasmlic.cli.tune CONFIG --data DIR ...``).

    The same exit codes as ``kerasmlic``: 0 success, 2 usage or input error
    (one line), 1 internal failure.

    Args:
        argv: Arguments after ``tune`` (default: ``sys.argv[1:]``).

    Returns:
        The exit code.
    """
    import os
    import sys

    from kerasmlic.errors import UsageError

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = argparse.ArgumentParser(prog="kerasmlic")
    add_tune_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["tune", *(sys.argv[1:] if argv is None else argv)])
    try:
        args.func(args)
    except UsageError as e:
        print(f"kerasmlic tune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kerasmlic tune: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
