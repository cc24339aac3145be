"""Predict a whole split with a trained model, in the pipeline's eval order."""

import numpy as np

from kerasmlic.errors import UsageError


def model_image_size(model):
    """Return the square input size a model was built for.

    Args:
        model: A kerasmlic model.

    Returns:
        The side in pixels.
    """
    config = getattr(model, "options", None) or {}
    if config.get("image_size"):
        return int(config["image_size"])
    return int(model.inputs[0].shape[1])


def predict_split(model, data_dir, split, *, batch_size=64, labels=None, holdout=None):
    """Run a model over a split and return its outputs beside the ground truth.

    Images go through the eval-mode pipeline (whole image decoded at full
    scale, resized; uint8 pixels for a kerasmlic model, which normalises them
    itself, as the exported graph does); rows follow :func:`read_split_labels`'
    order.

    Args:
        model: A kerasmlic model (outputs ``scores`` and ``predicted``).
        data_dir: Shard folder.
        split: Split name.
        batch_size: Images per prediction batch.
        labels: Optional result of ``read_split_labels`` to reuse (read with
            the same ``holdout``).
        holdout: ``None``, or ``(part, fraction)`` to predict part of the
            split only (see ``kerasmlic.data.pipeline.make_dataset``).

    Returns:
        A dict of numpy arrays: ``scores`` (N, C) float32, ``predicted``
        (N, C) float32, ``y_true`` (N, C) float32, ``image_ids`` (N,),
        ``label_areas`` (N, C).

    Raises:
        UsageError: Missing split, or a split whose class count differs from
            the model's.
    """
    import tensorflow as tf

    from kerasmlic.data.pipeline import make_dataset, read_split_labels

    if labels is None:
        labels = read_split_labels(data_dir, split, holdout)
    num_classes = (getattr(model, "options", None) or {}).get("num_classes")
    if num_classes is not None and labels["multi_hot"].shape[1] != num_classes:
        raise UsageError(
            f"split {split!r} of {data_dir!r} has {labels['multi_hot'].shape[1]} classes, "
            f"the model predicts {num_classes}"
        )
    ds = make_dataset(
        data_dir,
        split,
        image_size=model_image_size(model),
        batch_size=batch_size,
        training=False,
        normalization=model.normalization,
        drop_remainder=False,
        holdout=holdout,
    ).map(lambda images, targets: images)
    # A known length lets Keras stop cleanly instead of warning that the input ran out.
    num_batches = -(-labels["multi_hot"].shape[0] // batch_size)
    ds = ds.apply(tf.data.experimental.assert_cardinality(num_batches))
    outputs = model.predict(ds, verbose=0)
    scores = np.asarray(outputs["scores"], np.float32)
    predicted = np.asarray(outputs["predicted"], np.float32)
    if scores.shape != labels["multi_hot"].shape:
        raise UsageError(
            f"predicted {scores.shape[0]} rows for split {split!r} but it has "
            f"{labels['multi_hot'].shape[0]} images"
        )
    return {
        "scores": scores,
        "predicted": predicted,
        "y_true": labels["multi_hot"],
        "image_ids": labels["image_ids"],
        "label_areas": labels["label_areas"],
    }
