"""Visual explanations: the image regions behind each predicted label.

Two sources, picked per model and label:

- ``attention``: sequence models with attention (``seq2seq_attention``) return,
  for every decoding step, their weights over the encoder's feature-map
  regions; the map behind a label is the attention of the step that emitted
  it. Models whose ``attention`` output holds one map per class (``(B, C, R)``,
  ``joint_embedding_attention``'s label embeddings attending over the regions)
  use that class's row.
- ``grad-cam`` (Selvaraju et al., ICCV 2017) for every other model, and for a
  label a sequence model did not emit: the encoder feature map weighted by the
  spatial mean of the gradient of the label's score with respect to it, then
  ReLU. To get one gradient per (image, label) from a single backward pass,
  each image is repeated once per label and each copy's score for its own
  label is summed: a copy's score depends on that copy alone at inference.

Everything is TensorFlow ops, so :func:`make_explain_function` traces into the
exported SavedModel (its ``explain`` signature) and runs eagerly alike; heat
maps are ``(h, w)`` float32 on the feature-map grid, scaled to a peak of 1.
"""

import os
import tempfile
import weakref

import numpy as np
import tensorflow as tf

from kerasmlic.data.sequences import NUM_SPECIAL
from kerasmlic.errors import UsageError

ATTENTION = "attention"
GRAD_CAM = "grad-cam"

_EXPLAIN_MODELS = weakref.WeakKeyDictionary()


def _encoder_feature_map(model):
    """Return the outer-graph tensor of the encoder's feature map."""
    from kerasmlic.models.encoders import get_encoder

    encoder = get_encoder(model)
    nodes = getattr(encoder, "_inbound_nodes", [])
    if len(nodes) != 1:
        raise UsageError(f"cannot explain {model.name!r}: its encoder is called {len(nodes)} times")
    return nodes[0].output_tensors[0]


def explain_model(model):
    """Return a Keras model mapping images to the model's outputs plus ``feature_map``.

    Cached per model (building the functional sub-graph costs more than a batch).

    Args:
        model: A kerasmlic model with an ``encoder`` layer.

    Returns:
        A ``keras.Model`` with a dict output.
    """
    # Not an attribute of the model: Keras would track it as a sub-layer and
    # save its weights a second time.
    cached = _EXPLAIN_MODELS.get(model)
    if cached is None:
        import keras

        outputs = {**model.output, "feature_map": _encoder_feature_map(model)}
        cached = keras.Model(model.inputs, outputs, name=f"{model.name}_explain")
        _EXPLAIN_MODELS[model] = cached
    return cached


def feature_grid(model):
    """Return the ``(h, w)`` of a model's encoder feature map.

    Args:
        model: A kerasmlic model with an ``encoder`` layer.

    Returns:
        A pair of ints.
    """
    shape = _encoder_feature_map(model).shape
    return int(shape[1]), int(shape[2])


def _peak_normalise(maps):
    maps = tf.nn.relu(tf.cast(maps, tf.float32))
    return tf.math.divide_no_nan(maps, tf.reduce_max(maps, axis=[-2, -1], keepdims=True))


def label_heatmaps(model, images, class_ids):
    """Heat maps for given labels of each image (graph- and eager-safe).

    Args:
        model: A kerasmlic model with an ``encoder`` layer.
        images: The model's input ``(B, S, S, 3)``: pixels on 0-255, uint8 or
            float (the model normalises them itself).
        class_ids: int32 ``(B, L)`` class indices to explain (padding: any
            valid index; callers ignore those maps).

    Returns:
        ``(outputs, heatmaps, from_attention)``: the model's outputs on
        ``images`` (dict), float32 ``(B, L, h, w)`` maps in [0, 1], and bool
        ``(B, L)``, true where the map is the model's attention.
    """
    grid = feature_grid(model)
    net = explain_model(model)
    # The model's input is float32 (it casts uint8 pixels at its input anyway).
    images = tf.cast(images, tf.float32)
    class_ids = tf.cast(class_ids, tf.int32)
    batch, width = tf.shape(class_ids)[0], tf.shape(class_ids)[1]
    copies = tf.maximum(width, 1)  # one copy even for no label, so the outputs exist
    tiled = tf.repeat(images, copies, axis=0)
    tiled_ids = tf.reshape(tf.pad(class_ids, [[0, 0], [0, copies - width]]), [-1])  # (B * copies,)
    with tf.GradientTape() as tape:
        out = net(tiled, training=False)
        feature_map = out["feature_map"]
        scores = tf.cast(out["scores"], tf.float32)
        target = tf.reduce_sum(tf.gather(scores, tiled_ids[:, None], batch_dims=1))
    grads = tf.cast(tape.gradient(target, feature_map), tf.float32)
    weights = tf.reduce_mean(grads, axis=[1, 2], keepdims=True)
    cams = tf.reduce_sum(weights * tf.cast(feature_map, tf.float32), axis=-1)
    cams = tf.reshape(cams, [batch, copies, *grid])[:, :width]

    # The copies of an image give identical outputs: keep the first.
    first = {
        k: tf.reshape(v, tf.concat([[batch, copies], tf.shape(v)[1:]], 0))[:, 0]
        for k, v in out.items()
        if k != "feature_map"
    }
    maps = _peak_normalise(cams)
    from_attention = tf.zeros(tf.shape(class_ids), tf.bool)
    attention = first.get("attention")
    regions = grid[0] * grid[1]
    if attention is not None and attention.shape[-1] == regions:
        attention = tf.cast(attention, tf.float32)
        if "sequence" in first:
            match = tf.equal(first["sequence"][:, None, :], class_ids[:, :, None] + NUM_SPECIAL)
            from_attention = tf.reduce_any(match, axis=-1)
            step = tf.argmax(tf.cast(match, tf.int32), axis=-1, output_type=tf.int32)
            rows = tf.gather(attention, step, batch_dims=1)
        elif attention.shape[1] == first["scores"].shape[-1]:
            from_attention = tf.ones(tf.shape(class_ids), tf.bool)
            rows = tf.gather(attention, class_ids, batch_dims=1)
        else:
            rows = None
        if rows is not None:
            att_maps = _peak_normalise(tf.reshape(rows, [batch, width, *grid]))
            maps = tf.where(from_attention[..., None, None], att_maps, maps)
    return first, maps, from_attention


def explain_labels(model, images, class_ids):
    """Heat maps for given labels of each image, as numpy (eager convenience).

    Args:
        model: A kerasmlic model.
        images: Pixels ``(B, S, S, 3)`` on 0-255, uint8 or float.
        class_ids: A list (per image) of lists of class indices.

    Returns:
        A list (per image) of lists of ``(heatmap (h, w) float32, source)``
        pairs, ``source`` being ``"attention"`` or ``"grad-cam"``.
    """
    width = max((len(ids) for ids in class_ids), default=0)
    padded = np.zeros((len(class_ids), width), np.int32)
    for b, ids in enumerate(class_ids):
        padded[b, : len(ids)] = ids
    _, maps, from_attention = label_heatmaps(model, images, padded)
    maps, from_attention = maps.numpy(), from_attention.numpy()
    return [
        [(maps[b, j], ATTENTION if from_attention[b, j] else GRAD_CAM) for j in range(len(ids))]
        for b, ids in enumerate(class_ids)
    ]


def make_explain_function(model, class_names):
    """Build the ``explain`` serving function: image bytes in, ranked labels and maps out.

    The labels explained per image are its predicted labels (``label_ids``),
    or its top-scoring class when none is predicted.

    Args:
        model: A kerasmlic model with an ``encoder`` layer.
        class_names: The C class names.

    Returns:
        ``(function, input_signature)``; the function returns the serving
        outputs (:mod:`kerasmlic.export.serving`) plus ``explained_ids``
        ``(B, L)`` int32 (``-1``-padded), ``heatmaps`` ``(B, L, h, w)``
        float32 and ``heatmap_sources`` ``(B, L)`` string (``"attention"`` /
        ``"grad-cam"``, ``""`` for padding).
    """
    from kerasmlic.export.serving import (
        BYTES_INPUT,
        decode_batch,
        model_image_size,
        model_normalization,
        rank_labels,
    )

    size = model_image_size(model)
    normalization = model_normalization(model)
    names = tf.constant(list(class_names), tf.string)
    num_classes = len(class_names)
    grid = feature_grid(model)

    def run(image_bytes):
        images = decode_batch(image_bytes, size, normalization)
        outputs = model(images, training=False)
        ranked = rank_labels(outputs["scores"], outputs["predicted"], names)
        top = tf.argmax(ranked["scores"], axis=1, output_type=tf.int32)
        none = tf.equal(ranked["num_labels"], 0)
        width = tf.maximum(tf.shape(ranked["label_ids"])[1], 1)
        ids = tf.pad(ranked["label_ids"], [[0, 0], [0, width - tf.shape(ranked["label_ids"])[1]]],
                     constant_values=-1)  # fmt: skip
        ids = tf.concat([tf.where(none, top, ids[:, 0])[:, None], ids[:, 1:]], axis=1)
        valid = ids >= 0
        _, maps, from_attention = label_heatmaps(model, images, tf.maximum(ids, 0))
        maps = tf.where(valid[..., None, None], maps, 0.0)
        sources = tf.where(from_attention, ATTENTION, GRAD_CAM)
        ranked.update(
            explained_ids=ids,
            heatmaps=tf.ensure_shape(maps, [None, None, *grid]),
            heatmap_sources=tf.where(valid, sources, ""),
        )
        ranked["scores"] = tf.ensure_shape(ranked["scores"], [None, num_classes])
        return ranked

    def explain(image_bytes):
        def empty():
            return {
                "scores": tf.zeros([0, num_classes]),
                "label_ids": tf.zeros([0, 0], tf.int32),
                "labels": tf.zeros([0, 0], tf.string),
                "num_labels": tf.zeros([0], tf.int32),
                "explained_ids": tf.zeros([0, 0], tf.int32),
                "heatmaps": tf.zeros([0, 0, *grid]),
                "heatmap_sources": tf.zeros([0, 0], tf.string),
            }

        return tf.cond(tf.size(image_bytes) > 0, lambda: run(image_bytes), empty)

    return explain, [tf.TensorSpec([None], tf.string, name=BYTES_INPUT)]


def save_explanation_png(path, image, panels, title=""):
    """Write a PNG: the image, then one heat-map overlay per label.

    The file is written under a temporary name and renamed into place.

    Args:
        path: Output ``.png`` path.
        image: uint8 ``(H, W, 3)`` original image.
        panels: A list of ``(caption, heatmap (h, w) or None)``; maps are
            upsampled bilinearly to the image size.
        title: Figure title (e.g. the file name).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = np.asarray(image)
    height, width = image.shape[:2]
    cols = 1 + max(len(panels), 1)
    fig, axes = plt.subplots(1, cols, figsize=(2.6 * cols, 2.9), squeeze=False)
    axes = axes[0]
    axes[0].imshow(image)
    axes[0].set_title("input", fontsize=9)
    if not panels:
        axes[1].imshow(image)
        axes[1].set_title("no label predicted", fontsize=9)
    for ax, (caption, heat) in zip(axes[1:], panels, strict=False):
        ax.imshow(image)
        if heat is not None:
            big = tf.image.resize(np.asarray(heat, np.float32)[..., None], [height, width])
            ax.imshow(big.numpy()[..., 0], cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
        ax.set_title(caption, fontsize=9)
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=folder)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=80)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    finally:
        plt.close(fig)
