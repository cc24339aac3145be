"""A plain Keras CNN on kerasmlic's own input: the baseline the package must beat.

The model is what a practitioner writes in 20 lines: three stages of
(conv-BN-ReLU) x 2 + max-pool, global average pooling, a sigmoid layer, Adam
with cosine decay, ``model.fit`` on ``kerasmlic.data.pipeline.make_dataset``
with **no augmentation** (``augment="none"``: whole images, no flip). It is
scored with kerasmlic's own mAP on the validation split; a second row gives
the same CNN with global average + max pooling (the linear heads' default), so
the table separates what pooling alone gives from the rest of the recipe. kerasmlic's
``bce`` model is trained on the same data and epochs twice, with its default
recipe and with ``data.augment: none``, so the table gives the ratio of each
to the plain baseline.

Goal (issue "Learning that reaches what the data allows"): on the built-in
data ``bce`` with its default recipe beats the plain CNN, and with
``data.augment: none`` at least matches it.

Usage:
    python benchmarks/plain_cnn.py --data data/synth-shards [--epochs 12]
        [--image-size 64] [--batch-size 32] [--skip-kerasmlic]
"""

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from kerasmlic.data.pipeline import make_dataset, read_split_labels, split_size  # noqa: E402
from kerasmlic.metrics import average_precision_per_class  # noqa: E402


def plain_cnn(num_classes, image_size, widths=(32, 64, 128), pooling="avg"):
    """Three (conv-BN-ReLU x2, max-pool) stages, global pooling, sigmoid.

    Args:
        num_classes: Sigmoid outputs.
        image_size: Square input side.
        widths: Channels of the three stages.
        pooling: ``"avg"`` (the plain choice) or ``"avgmax"`` (global average
            plus global max, what kerasmlic's linear heads use by default).
    """
    inputs = keras.Input((image_size, image_size, 3))
    x = inputs
    for width in widths:
        for _ in range(2):
            x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
            x = keras.layers.BatchNormalization()(x)
            x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D()(x)
    pooled = keras.layers.GlobalAveragePooling2D()(x)
    if pooling == "avgmax":
        pooled = keras.layers.Add()([pooled, keras.layers.GlobalMaxPooling2D()(x)])
    x = pooled
    outputs = keras.layers.Dense(num_classes, activation="sigmoid")(x)
    return keras.Model(inputs, outputs)


def train_plain(args, pooling="avg"):
    """Fit the plain CNN and return (val mAP, seconds)."""
    keras.utils.set_random_seed(args.seed)
    num_train = split_size(args.data, "train")
    steps = num_train // args.batch_size
    common = dict(image_size=args.image_size, normalization="unit")
    train = make_dataset(
        args.data,
        "train",
        batch_size=args.batch_size,
        training=True,
        augment="none",
        seed=args.seed,
        repeat=True,
        **common,
    )
    val = make_dataset(args.data, "val", batch_size=64, training=False, **common)
    labels = read_split_labels(args.data, "val")["multi_hot"]
    model = plain_cnn(labels.shape[1], args.image_size, pooling=pooling)
    schedule = keras.optimizers.schedules.CosineDecay(args.learning_rate, steps * args.epochs)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="binary_crossentropy")
    start = time.perf_counter()
    model.fit(train, epochs=args.epochs, steps_per_epoch=steps, verbose=0)
    seconds = time.perf_counter() - start
    scores = model.predict(val, verbose=0)
    return float(np.nanmean(average_precision_per_class(labels, scores))), seconds


def train_kerasmlic(args, overrides, run_dir):
    """Train kerasmlic's bce with its default recipe plus ``overrides``."""
    from kerasmlic.training import train
    from kerasmlic.training.config import load_config

    config = load_config(
        os.path.join(os.path.dirname(__file__), "..", "experiments", "bce.yaml"),
        [*overrides, f"train.seed={args.seed}", "train.verbose=0"],
        **{
            "data.dir": args.data,
            "run_dir": run_dir,
            "train.epochs": args.epochs,
            "data.image_size": args.image_size,
            "data.batch_size": args.batch_size,
        },
    )
    start = time.perf_counter()
    run = train(config, log=lambda *a, **k: None)
    seconds = time.perf_counter() - start
    with open(os.path.join(run, "eval_val.json")) as f:
        return float(json.load(f)["mAP"]), seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="shard folder (kerasmlic build)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-kerasmlic", action="store_true", help="plain CNN only")
    args = parser.parse_args()

    rows = [("plain Keras CNN (no augmentation)", *train_plain(args))]
    # The same plain CNN with kerasmlic's head pooling: says how much of bce's
    # gain is the pooling alone (anyone can add it) and how much the recipe.
    rows.append(("plain Keras CNN, global avg + max pooling", *train_plain(args, "avgmax")))
    if not args.skip_kerasmlic:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(("kerasmlic bce, default recipe", *train_kerasmlic(args, [], f"{tmp}/a")))
            rows.append(
                (
                    "kerasmlic bce, data.augment: none",
                    *train_kerasmlic(args, ["data.augment=none"], f"{tmp}/b"),
                )
            )
    base = rows[0][1]
    load = os.getloadavg()
    print(
        f"\n{args.epochs} epochs, {args.image_size} px, batch {args.batch_size}, seed {args.seed}"
    )
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("| model | val mAP | / plain CNN | train s |\n|---|---|---|---|")
    for name, m_ap, seconds in rows:
        print(f"| {name} | {100 * m_ap:.1f} | {m_ap / base:.3f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
