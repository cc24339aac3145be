"""CLI sub-commands ``export`` and ``predict`` (registered by :mod:`kerasmlic.cli.app`).

Each ``add_*_parser(sub)`` adds its sub-parser to the ``argparse`` sub-parsers
object and sets ``func`` to a handler taking the parsed arguments. Handlers
return the process exit code (0, or 2 when ``predict`` met unreadable files).
"""

import argparse
import os
import sys


def _version(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def hide_gpus():
    """Hide the GPUs from TensorFlow if it is not imported yet.

    A cuDNN RNN kernel traced on a GPU does not run on a CPU-only server, so
    ``kerasmlic export`` traces with no GPU visible.

    Returns:
        True when the GPUs were hidden, False when TensorFlow had already
        started (the export then traces on the CPU, see
        :func:`kerasmlic.export.saved_model.cpu_only_tracing`).
    """
    if "tensorflow" in sys.modules:
        return False
    os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
    return True


def cmd_export(args):
    """Export a run's best model as a TF Serving SavedModel."""
    hide_gpus()
    from kerasmlic.export.run import export_run

    path = export_run(args.run_dir, args.out, version=args.version, explain=not args.no_explain)
    signatures = "serving_default (image_bytes), serving_images (images)"
    if not args.no_explain:
        signatures += ", explain (image_bytes)"
    print(f"export: wrote {path}; signatures: {signatures}")
    return 0


def cmd_predict(args):
    """Predict the labels of image files."""
    from kerasmlic.export.predict import predict_files

    return predict_files(
        args.model_dir, args.images, json_output=args.json, explain_dir=args.explain
    )


def add_export_parser(sub):
    """Add ``kerasmlic export RUN_DIR --out DIR [--version N] [--no-explain]``.

    Args:
        sub: The object ``ArgumentParser.add_subparsers()`` returned.

    Returns:
        The new sub-parser.
    """
    p = sub.add_parser(
        "export",
        help="export a run's best model as a TF Serving SavedModel",
        description="Write OUT/VERSION/ (TF Serving layout) from a run directory's best.keras. "
        "Runs with no GPU visible, so the SavedModel also serves on CPU-only machines.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory made by `kerasmlic train`")
    p.add_argument("--out", required=True, help="model base folder, e.g. saved_models/NAME")
    p.add_argument(
        "--version", type=_version, default=None, help="version number (default: next free)"
    )
    p.add_argument(
        "--no-explain",
        action="store_true",
        help="leave out the 'explain' signature (heat maps; faster export)",
    )
    p.set_defaults(func=cmd_export)
    return p


def add_predict_parser(sub):
    """Add ``kerasmlic predict MODEL_DIR IMAGE... [--json] [--explain DIR]``.

    Args:
        sub: The object ``ArgumentParser.add_subparsers()`` returned.

    Returns:
        The new sub-parser.
    """
    p = sub.add_parser(
        "predict",
        help="label image files with an exported SavedModel or a run's model",
        description="MODEL_DIR: a SavedModel (version or base folder), a run directory, "
        "or a .keras file.",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help="SavedModel, run directory or .keras")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="JPEG or PNG files")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument(
        "--explain", metavar="DIR", default=None, help="write a heat-map PNG per image here"
    )
    p.set_defaults(func=cmd_predict)
    return p
