"""The ``kerasmlic`` command: its parser, ``main``, and the data verbs.

``synth``, ``build`` and ``verify`` are handled here; the other verbs add
their subparsers from the sibling modules of :mod:`kerasmlic.cli`. Exit
codes (docs/design.md): 0 success, 2 usage or input error (one clear line,
no traceback), 1 internal failure.
"""

import argparse
import os
import sys
import traceback

from kerasmlic.cli.args import non_negative_int, positive_int
from kerasmlic.errors import UsageError


def quiet_tensorflow():
    """Keep TensorFlow's start-up chatter off the command's output (errors still show)."""
    # TF's C++ info and warning chatter (oneDNN notes, a rendezvous line repeating
    # each error) drowns the CLI's output; its errors still show, and a user's own
    # TF_CPP_MIN_LOG_LEVEL (1 shows warnings) is kept.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # The CUDA probing lines of a GPU-less machine come before TF's log level applies.
    from kerasmlic import quiet_start

    quiet_start.install()


def cmd_verify(args):
    """Check every shard of a built folder against dataset.json's sha256."""
    from kerasmlic.data.verify import format_problem, verify_data

    result = verify_data(args.data, splits=args.split or None)
    for item in result["bad"]:
        print(f"kerasmlic verify: {format_problem(item)}", file=sys.stderr)
    good = result["checked"] - len(result["bad"])
    print(
        f"verify: {good} of {result['checked']} shards match dataset.json "
        f"({result['examples']} examples in good shards) in {args.data}"
    )
    return 2 if result["bad"] else 0


def cmd_synth(args):
    """Write the built-in COCO-format dataset."""
    from kerasmlic.data.synth import synthesize

    summary = synthesize(
        args.out,
        train=args.train,
        val=args.val,
        test=args.test,
        image_size=args.image_size,
        seed=args.seed,
    )
    test = f" + {summary['num_test']} test" if summary["num_test"] else ""
    print(
        f"synth: wrote {summary['num_train']} train + {summary['num_val']} val{test} images "
        f"({summary['mean_labels_train']:.2f} labels/image) to {args.out} "
        f"in {summary['elapsed']:.1f}s; contact sheet: {summary['contact_sheet']}"
    )


def cmd_build(args):
    """Convert a COCO split to TFRecord shards."""
    from kerasmlic.data.build import build_split, format_summary

    summary = build_split(
        args.annotations,
        args.images,
        args.split,
        args.out,
        shards=args.shards,
        max_side=args.max_side,
        workers=args.workers,
        keep_empty=args.keep_empty,
        strict=args.strict,
    )
    print(format_summary(summary))


def build_parser():
    """Return the ``argparse`` parser of the ``kerasmlic`` command."""
    parser = argparse.ArgumentParser(
        prog="kerasmlic",
        description="Multi-label image classification with Keras 3 (COCO-format data).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("synth", help="write the built-in COCO-format dataset")
    p.add_argument("out", help="output folder")
    p.add_argument("--train", type=non_negative_int, default=4000, help="train images")
    p.add_argument("--val", type=non_negative_int, default=1000, help="val images")
    p.add_argument(
        "--test", type=non_negative_int, default=0, help="test images (0: no test split)"
    )
    p.add_argument("--image-size", type=positive_int, default=64, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("build", help="convert a COCO split to TFRecord shards")
    p.add_argument("--annotations", required=True, help="COCO instances_*.json")
    p.add_argument("--images", required=True, help="folder of the split's images")
    p.add_argument("--split", required=True, help="split name, e.g. train or val")
    p.add_argument("--out", required=True, help="shard folder (shared by the splits)")
    p.add_argument("--shards", type=positive_int, default=None, help="number of shards")
    p.add_argument("--max-side", type=positive_int, default=None, help="downscale larger images")
    p.add_argument("--workers", type=positive_int, default=1, help="parallel processes")
    p.add_argument("--keep-empty", action="store_true", help="keep images with no label")
    p.add_argument("--strict", action="store_true", help="fail on any skipped image")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("verify", help="check every shard against dataset.json's sha256")
    p.add_argument("data", metavar="DATA", help="shard folder made by `kerasmlic build`")
    p.add_argument("--split", action="append", help="check only this split (repeatable)")
    p.set_defaults(func=cmd_verify)

    from kerasmlic.cli.data_service import add_data_service_parser
    from kerasmlic.cli.serve import add_export_parser, add_predict_parser
    from kerasmlic.cli.train import add_evaluate_parser, add_reproduce_parser, add_train_parser
    from kerasmlic.cli.tune import add_tune_parser

    add_train_parser(sub)
    add_evaluate_parser(sub)
    add_tune_parser(sub)
    add_export_parser(sub)
    add_predict_parser(sub)
    add_reproduce_parser(sub)
    add_data_service_parser(sub)

    p = sub.add_parser("demo", help="the main job on the built-in dataset")
    p.add_argument("--workdir", default="data", help="where datasets go (default: data/)")
    p.set_defaults(func=cmd_demo)
    return parser


def cmd_demo(args):
    """Run the main job end to end on the built-in dataset."""
    from kerasmlic.cli.demo import run_demo

    run_demo(workdir=args.workdir)


def main(argv=None):
    """Entry point of the ``kerasmlic`` console script.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        The process exit code.
    """
    quiet_tensorflow()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except UsageError as e:
        from kerasmlic.data.verify import explain_read_failure, is_read_failure

        # keras-tuner wraps a failed read in its own error, then ours.
        message = (explain_read_failure(e) if is_read_failure(e) else None) or e
        print(f"kerasmlic {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"kerasmlic {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # an internal failure: exit 1, traceback on request
        from kerasmlic.data.verify import explain_read_failure, is_read_failure

        line = explain_read_failure(e) if is_read_failure(e) else None
        if line:  # a corrupt or cut-off shard: name it, no graph dump
            print(f"kerasmlic {args.command}: error: {line}", file=sys.stderr)
            return 2
        if os.environ.get("KERASMLIC_DEBUG"):
            traceback.print_exc()
        print(
            f"kerasmlic {args.command}: internal error: {type(e).__name__}: {e} "
            "(set KERASMLIC_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
