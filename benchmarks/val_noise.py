"""Is the jitter of a run's last epochs in the weights or in the reading? Split vs half.

The study calls a run converged when its last three val mAPs lie within 0.5
point (``experiments/README.md``). A split's mAP moves with every rank swap of
its rare classes' few positives, so a small split reads a nearly still model
as moving. This trains one run as ``kerasmlic train`` does and, after every
epoch, scores the same weights on the whole val split and on its first half
(rows in ``read_split_labels`` order), then prints, per reading, the last three
mAPs, their spread and the mean epoch-to-epoch change over the last six
epochs. The half is the baseline: the ratio column is each reading's mean
change over the half's. Both readings come from the training callback's own
prediction (``setup.val_predictor``), wrapped here; the model and the run are
not changed, and the run dir keeps what the whole split gave.

Usage:
    python benchmarks/val_noise.py CONFIG --data DIR [--set KEY=VALUE ...]
        [--epochs N] [--run-dir DIR]

Example (a study run of ``make study``'s recipe on shards with a 1000-image val):
    python benchmarks/val_noise.py experiments/label_query.yaml --data data/study-shards \
        --epochs 24 --set data.batch_size=16 --set train.min_learning_rate_ratio=0 \
        --set train.precise_bn_batches=16 --set train.learning_rate=0.002 --set train.seed=2
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402

from kerasmlic.metrics import evaluate_predictions  # noqa: E402
from kerasmlic.training import setup, train  # noqa: E402
from kerasmlic.training.config import load_config  # noqa: E402


def reading_row(name, maps):
    """Summarise one reading's per-epoch mAPs (points).

    Args:
        name: The reading's label.
        maps: Its mAP after every epoch.

    Returns:
        ``(name, last three, spread, mean |change| over the last six epochs)``.
    """
    last = maps[-3:]
    changes = np.abs(np.diff(maps[-7:]))
    return name, last, max(last) - min(last), float(changes.mean())


def main(argv=None):
    """Train once, reading val mAP on the whole split and on its first half every epoch."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("--data", required=True)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args(argv)

    config = load_config(
        args.config,
        args.overrides,
        **{"data.dir": args.data, "train.epochs": args.epochs, "run_dir": args.run_dir},
    )
    readings = {"whole": [], "half": []}
    sizes = {}
    whole_predictor = setup.val_predictor

    def both_halves(config, data_dir, *, labels=None):
        predict = whole_predictor(config, data_dir, labels=labels)

        def read(model):
            y_true, scores, predicted = predict(model)
            half = y_true.shape[0] // 2
            sizes.update(whole=y_true.shape[0], half=half)
            for name, rows in (("whole", slice(None)), ("half", slice(0, half))):
                result = evaluate_predictions(y_true[rows], scores[rows], predicted[rows])
                readings[name].append(100.0 * result["mAP"])
            return y_true, scores, predicted

        return read

    setup.val_predictor = both_halves
    try:
        train(config)
    finally:
        setup.val_predictor = whole_predictor
    rows = [reading_row(name, maps) for name, maps in readings.items()]
    baseline = rows[1][3]
    print(f"\n{config['model']['name']} seed {config['train']['seed']}: val mAP per reading")
    print("| reading | last three | spread | mean change, last 6 epochs | / half |")
    print("|---|---|---:|---:|---:|")
    for name, last, spread, change in rows:
        shown = ", ".join(f"{m:.2f}" for m in last)
        print(
            f"| {name} ({sizes[name]} images) | {shown} | {spread:.2f} | {change:.2f} "
            f"| {change / baseline:.2f} |"
        )


if __name__ == "__main__":
    main()
