"""Write a kerasmlic model as a TF Serving SavedModel (``OUT/VERSION/``).

The layout is what TF Serving watches: a base folder (``saved_models/NAME``)
holding numeric version folders, each a SavedModel with the signatures of
:mod:`kerasmlic.export.serving` (``serving_default`` on image bytes,
``serving_images`` on uint8 pixels), an ``explain`` signature returning heat
maps per label (:mod:`kerasmlic.export.explain`), two files in ``assets/``:
``labels.txt`` (one class name per line, index order) and ``metadata.json``
(model name, config, its ``format_version``, metrics at export time,
normalisation, image size, kerasmlic version, export date), and TF Serving
warm-up requests in
``assets.extra/tf_serving_warmup_requests`` (:mod:`kerasmlic.export.warmup`).

**Export with no GPU visible.** On a GPU, Keras traces ``GRU``/``LSTM`` layers
to cuDNN kernels (``CudnnRNNV3``) that have no CPU implementation, so a model
exported there fails on a CPU-only server. ``kerasmlic export`` hides the GPUs
(``CUDA_VISIBLE_DEVICES=-1``) before TensorFlow starts. Called from Python in a
process that already sees a GPU, :func:`export_saved_model` traces on the CPU
with Keras' cuDNN path switched off, and in every case refuses to publish a
SavedModel whose graph contains a GPU-only op.
"""

import contextlib
import datetime
import importlib
import json
import os
import re
import shutil
import tempfile

from kerasmlic.errors import UsageError
from kerasmlic.version import __version__

LABELS_ASSET = "labels.txt"
METADATA_ASSET = "metadata.json"

# Ops with a GPU kernel only: a graph holding one cannot run on a CPU server.
GPU_ONLY_OPS = ("CudnnRNN", "CudnnRNNV2", "CudnnRNNV3", "CudnnRNNBackprop")

_VERSION_RE = re.compile(r"^\d+$")


def existing_versions(out_dir):
    """Return the numeric version folders under a model base folder, ascending.

    Args:
        out_dir: The model base folder (``saved_models/NAME``).

    Returns:
        A sorted list of ints (empty when the folder does not exist).
    """
    if not os.path.isdir(out_dir):
        return []
    return sorted(
        int(n)
        for n in os.listdir(out_dir)
        if _VERSION_RE.match(n) and os.path.isdir(os.path.join(out_dir, n))
    )


def _choose_version(out_dir, version):
    versions = existing_versions(out_dir)
    if version is None:
        return (versions[-1] + 1) if versions else 1
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise UsageError(f"version must be a positive integer, got {version!r}")
    if os.path.exists(os.path.join(out_dir, str(version))):
        raise UsageError(
            f"{os.path.join(out_dir, str(version))!r} already exists; "
            f"choose another --version (next free: {(versions[-1] + 1) if versions else 1})"
        )
    return version


@contextlib.contextmanager
def cpu_only_tracing():
    """Trace on the CPU with Keras' cuDNN RNN path off, when a GPU is visible.

    Hiding the GPUs (``tf.config.set_visible_devices([], "GPU")``) only works
    before TensorFlow initialises its devices, which building the model already
    did; so when a GPU is visible the tracing runs under ``tf.device("/CPU:0")``
    with Keras' GPU probe for its cuDNN GRU/LSTM kernels answering False.
    :func:`gpu_only_ops` checks the result either way.

    Yields:
        A short description of what was done, for the metadata.
    """
    import tensorflow as tf

    if not tf.config.list_logical_devices("GPU"):
        yield "no GPU visible"
        return
    try:
        # The module, not the `rnn` function the package re-exports under that name.
        keras_rnn = importlib.import_module("keras.src.backend.tensorflow.rnn")
    except ImportError:  # pragma: no cover - Keras moved it; gpu_only_ops still guards
        keras_rnn = None
    saved = getattr(keras_rnn, "_is_gpu_available", None)
    if saved is not None:
        keras_rnn._is_gpu_available = lambda: False
    try:
        with tf.device("/CPU:0"):
            yield "GPU visible: traced on /CPU:0 with cuDNN RNN kernels disabled"
    finally:
        if saved is not None:
            keras_rnn._is_gpu_available = saved


def gpu_only_ops(saved_model_dir):
    """List the GPU-only ops (cuDNN RNN kernels) in a SavedModel's graph.

    Args:
        saved_model_dir: A SavedModel folder (holding ``saved_model.pb``).

    Returns:
        Sorted op type names found among :data:`GPU_ONLY_OPS` (empty is good).
    """
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    found = set()
    for meta in proto.meta_graphs:
        nodes = list(meta.graph_def.node)
        for function in meta.graph_def.library.function:
            nodes.extend(function.node_def)
        found.update(n.op for n in nodes if n.op in GPU_ONLY_OPS)
    return sorted(found)


def _json_safe(value):
    return json.loads(json.dumps(value, default=str))


def build_metadata(model, class_names, *, metadata=None, device_note="", explain=False):
    """Return the ``metadata.json`` dict for an export.

    Args:
        model: The exported model.
        class_names: The class names.
        metadata: Extra entries (e.g. ``metrics``, ``run_dir``); they override
            the defaults.
        device_note: How the export avoided GPU-only kernels.
        explain: Whether the ``explain`` signature was exported.

    Returns:
        A JSON-safe dict.
    """
    import keras
    import tensorflow as tf

    from kerasmlic.export.serving import (
        BYTES_INPUT,
        BYTES_SIGNATURE,
        EXPLAIN_SIGNATURE,
        IMAGES_INPUT,
        IMAGES_SIGNATURE,
        OUTPUT_KEYS,
        model_image_size,
        model_normalization,
    )

    try:
        config = model.get_config()
    except Exception:  # a plain functional model's config is large and not needed
        config = {}
    meta = {
        "model": getattr(model, "registry_name", None) or type(model).__name__,
        "config": config,
        "num_classes": len(class_names),
        "image_size": model_image_size(model),
        # The model's saved-model contract (kerasmlic.models.base.FORMAT_VERSION);
        # None for a plain Keras model.
        "format_version": config.get("format_version"),
        # What the graph applies to the resized pixels before the model ("raw":
        # uint8 pixels), and what the model then applies itself.
        "normalization": model_normalization(model),
        "pixel_normalization": getattr(model, "pixel_normalization", None),
        "decoding": config.get("decoding"),
        "beam_width": config.get("beam_width"),
        "metrics": None,
        "signatures": {
            BYTES_SIGNATURE: {"inputs": {BYTES_INPUT: "string [None]"}, "outputs": OUTPUT_KEYS},
            IMAGES_SIGNATURE: {
                "inputs": {IMAGES_INPUT: "uint8 [None, H, W, 3]"},
                "outputs": OUTPUT_KEYS,
            },
        },
        "export_device": device_note,
        "kerasmlic_version": __version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "export_date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    if explain:
        meta["signatures"][EXPLAIN_SIGNATURE] = {
            "inputs": {BYTES_INPUT: "string [None]"},
            "outputs": (*OUTPUT_KEYS, "explained_ids", "heatmaps", "heatmap_sources"),
        }
    meta.update(metadata or {})
    return _json_safe(meta)


def export_saved_model(model, out_dir, *, class_names, version=None, metadata=None, explain=True):
    """Export a model as a TF Serving SavedModel in ``out_dir/VERSION/``.

    The SavedModel is written to a hidden temporary folder beside the version
    folder and renamed into place when complete, so TF Serving (which polls the
    base folder for numeric names) never sees a half-written version. The
    tracing avoids GPU-only kernels (see the module docstring: export from a
    process that sees no GPU, as ``kerasmlic export`` does), and the export is
    refused if any remain.

    Args:
        model: A kerasmlic model (dict output with ``scores`` and ``predicted``).
        out_dir: The model base folder, e.g. ``saved_models/coco_seq2seq``.
        class_names: The C class names in class-index order.
        version: Positive int version; default: one above the highest
            existing version, or 1.
        metadata: Extra ``metadata.json`` entries (e.g. ``metrics``).
        explain: Also export the ``explain`` signature (heat maps per label,
            for ``kerasmlic predict --explain``). Its gradient graph roughly
            doubles the export time of a sequence model; serving cost is
            unchanged (TF Serving runs only the signature asked for).

    Returns:
        The path of the written version folder.

    Raises:
        UsageError: The version exists already, the version is not a positive
            integer, the class count does not match the model, or the graph
            holds GPU-only ops.
    """
    import keras

    from kerasmlic.export.explain import make_explain_function
    from kerasmlic.export.serving import (
        EXPLAIN_SIGNATURE,
        make_serving_functions,
        model_image_size,
    )
    from kerasmlic.export.warmup import write_warmup_requests

    class_names = [str(n) for n in class_names]
    num_classes = (getattr(model, "options", None) or {}).get("num_classes")
    if num_classes is not None and int(num_classes) != len(class_names):
        raise UsageError(f"model has {num_classes} classes but {len(class_names)} class names")
    version = _choose_version(out_dir, version)
    final = os.path.join(out_dir, str(version))
    os.makedirs(out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-export-{version}-", dir=out_dir)
    try:
        with cpu_only_tracing() as device_note:
            archive = keras.export.ExportArchive()
            archive.track(model)
            functions = make_serving_functions(model, class_names)
            if explain:
                try:
                    functions[EXPLAIN_SIGNATURE] = make_explain_function(model, class_names)
                except UsageError:  # no single encoder feature map to explain with
                    pass
            for name, (fn, signature) in functions.items():
                archive.add_endpoint(name, fn, input_signature=signature)
            archive.write_out(tmp, verbose=False)
        bad = gpu_only_ops(tmp)
        if bad:
            raise UsageError(
                f"the traced graph holds GPU-only ops ({', '.join(bad)}) that a CPU server "
                "cannot run; export from a process that sees no GPU "
                "(CUDA_VISIBLE_DEVICES=-1 kerasmlic export ...)"
            )
        assets = os.path.join(tmp, "assets")
        os.makedirs(assets, exist_ok=True)
        with open(os.path.join(assets, LABELS_ASSET), "w", encoding="utf-8") as f:
            f.write("".join(f"{n}\n" for n in class_names))
        meta = build_metadata(
            model,
            class_names,
            metadata={"version": version, **(metadata or {})},
            device_note=device_note,
            explain=EXPLAIN_SIGNATURE in functions,
        )
        with open(os.path.join(assets, METADATA_ASSET), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
            f.write("\n")
        write_warmup_requests(
            tmp,
            image_size=model_image_size(model),
            model_name=os.path.basename(os.path.normpath(os.path.abspath(out_dir))),
        )
        if os.path.exists(final):
            raise UsageError(f"{final!r} appeared during the export; not overwriting it")
        # mkdtemp makes the folder private (0700); a server running as another
        # user must be able to read the version folder.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
