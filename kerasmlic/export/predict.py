"""``kerasmlic predict``: label image files with an exported or a trained model.

``MODEL_DIR`` may be

- an exported SavedModel version folder (``saved_models/NAME/3``), or a model
  base folder (``saved_models/NAME``: its highest version is used, as TF Serving
  does). It is loaded with plain ``tf.saved_model.load`` and called through its
  ``serving_default`` signature, so these predictions are the served ones;
- a training run directory (its ``best.keras`` and class names), or a
  ``.keras`` file. The model runs inside the same serving graph the export
  writes (:mod:`kerasmlic.export.serving`), so the outputs match an export.

Phone photos: a file whose EXIF orientation tag is not 1 is turned upright
(as image viewers show it) before scoring; the pixels TensorFlow decodes are
rotated or mirrored and sent to the model as a lossless PNG. The SavedModel
itself, like TensorFlow's decoders, ignores EXIF: a client calling it directly
sends upright pixels.

Unreadable or missing files get one line each on stderr; the other images are
still predicted, and the exit code is 2 at the end. ``--explain DIR`` writes one
PNG per image with a heat map per predicted label (the top-scoring class when
none is predicted): the attention behind the label for attention models,
Grad-CAM otherwise (:mod:`kerasmlic.export.explain`). A SavedModel computes
them in its ``explain`` signature; a Keras model in the same traced function.
"""

import json
import os
import sys

from kerasmlic.errors import UsageError

BATCH_SIZE = 32
"""Images per model call."""


def resolve_saved_model(path):
    """Return the SavedModel folder behind ``path``, or None if it holds none.

    Args:
        path: A SavedModel folder, or a base folder of numeric versions.

    Returns:
        The folder holding ``saved_model.pb`` (the highest version for a base
        folder), or None.
    """
    from kerasmlic.export.saved_model import existing_versions

    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    for version in reversed(existing_versions(path)):
        candidate = os.path.join(path, str(version))
        if os.path.isfile(os.path.join(candidate, "saved_model.pb")):
            return candidate
    return None


class SavedModelPredictor:
    """Runs an exported SavedModel's ``serving_default`` (or ``explain``) signature.

    Args:
        path: The SavedModel folder.
    """

    def __init__(self, path):
        import tensorflow as tf

        from kerasmlic.export.saved_model import LABELS_ASSET, METADATA_ASSET
        from kerasmlic.export.serving import BYTES_SIGNATURE, EXPLAIN_SIGNATURE

        self.path = path
        try:
            loaded = tf.saved_model.load(path)
        except (OSError, ValueError, tf.errors.OpError) as e:
            raise UsageError(f"cannot load the SavedModel {path!r}: {e}") from None
        if BYTES_SIGNATURE not in loaded.signatures:
            raise UsageError(f"SavedModel {path!r} has no {BYTES_SIGNATURE!r} signature")
        self._loaded = loaded  # the signature needs its object kept alive
        self._serve = loaded.signatures[BYTES_SIGNATURE]
        self._explain = loaded.signatures.get(EXPLAIN_SIGNATURE)
        self.can_explain = self._explain is not None
        meta_path = os.path.join(path, "assets", METADATA_ASSET)
        self.metadata = {}
        if os.path.isfile(meta_path):
            with open(meta_path) as f:
                self.metadata = json.load(f)
        self.name = self.metadata.get("model", "saved_model")
        labels_path = os.path.join(path, "assets", LABELS_ASSET)
        self.class_names = None
        if os.path.isfile(labels_path):
            with open(labels_path, encoding="utf-8") as f:
                self.class_names = f.read().splitlines()

    def predict(self, encoded, explain=False):
        """Return the serving (or ``explain``) outputs as numpy for encoded images."""
        import tensorflow as tf

        fn = self._explain if explain else self._serve
        out = fn(image_bytes=tf.constant(encoded, tf.string))
        return {k: v.numpy() for k, v in out.items()}


class KerasPredictor:
    """Runs a Keras model inside the export's serving graph.

    Args:
        model: A kerasmlic model.
        class_names: Its class names.
        name: A name for the output.
    """

    can_explain = True

    def __init__(self, model, class_names, name):
        import tensorflow as tf

        from kerasmlic.export.serving import BYTES_SIGNATURE, make_serving_functions

        self.model = model
        self.class_names = list(class_names)
        self.name = name
        fn, signature = make_serving_functions(model, self.class_names)[BYTES_SIGNATURE]
        self._serve = tf.function(fn, input_signature=signature)
        self._explain = None

    def predict(self, encoded, explain=False):
        """Return the serving (or ``explain``) outputs as numpy for encoded images."""
        import tensorflow as tf

        if explain and self._explain is None:
            from kerasmlic.export.explain import make_explain_function

            fn, signature = make_explain_function(self.model, self.class_names)
            self._explain = tf.function(fn, input_signature=signature)
        fn = self._explain if explain else self._serve
        out = fn(tf.constant(encoded, tf.string))
        return {k: v.numpy() for k, v in out.items()}


def load_predictor(model_dir):
    """Open a SavedModel, a run directory or a ``.keras`` file for prediction.

    Args:
        model_dir: See the module docstring.

    Returns:
        A :class:`SavedModelPredictor` or :class:`KerasPredictor`.

    Raises:
        UsageError: Nothing loadable at ``model_dir``.
    """
    from kerasmlic.export.run import is_run_dir, load_run

    if not os.path.exists(model_dir):
        raise UsageError(f"model {model_dir!r} does not exist")
    if os.path.isdir(model_dir):
        saved = resolve_saved_model(model_dir)
        if saved is not None:
            return SavedModelPredictor(saved)
        if is_run_dir(model_dir):
            run = load_run(model_dir)
            name = getattr(run["model"], "registry_name", None) or run["model"].name
            return KerasPredictor(run["model"], run["class_names"], name)
        raise UsageError(
            f"{model_dir!r} is neither a SavedModel (saved_model.pb or numeric version "
            "folders) nor a run directory (best.keras)"
        )
    if model_dir.endswith(".keras"):
        return _keras_file_predictor(model_dir)
    raise UsageError(f"{model_dir!r} is not a model folder or a .keras file")


def _keras_file_predictor(path):
    from kerasmlic.evaluation.loading import load_model
    from kerasmlic.export.run import read_class_names

    try:
        model = load_model(path)
    except (OSError, ValueError, TypeError) as e:
        raise UsageError(f"cannot load {path!r}: {e}") from None
    num_classes = int(model.output["scores"].shape[-1])
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isfile(os.path.join(folder, "dataset.json")):
        names = read_class_names(folder, num_classes)
    else:
        names = [f"class_{i}" for i in range(num_classes)]
    return KerasPredictor(model, names, getattr(model, "registry_name", None) or model.name)


def apply_exif_orientation(image, orientation):
    """Turn decoded pixels upright for an EXIF orientation tag (as ``ImageOps.exif_transpose``).

    Args:
        image: ``(H, W, C)`` numpy array as stored in the file.
        orientation: The EXIF orientation tag, 1-8 (1: as stored).

    Returns:
        The array as the image is meant to be seen.
    """
    import numpy as np

    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: np.transpose(a, (1, 0, 2)),
        6: lambda a: np.rot90(a, k=-1),
        7: lambda a: np.transpose(a[::-1, ::-1], (1, 0, 2)),
        8: lambda a: np.rot90(a, k=1),
    }
    op = ops.get(int(orientation))
    return np.ascontiguousarray(op(image)) if op else image


def _orientation(data):
    import io

    from PIL import Image

    from kerasmlic.data.images import exif_orientation

    try:
        with Image.open(io.BytesIO(data)) as img:
            return exif_orientation(img)
    except Exception:  # TensorFlow decoded it; PIL's opinion is only about EXIF
        return 1


def read_images(paths):
    """Read and check image files, turning EXIF-rotated photos upright.

    Args:
        paths: Image file paths.

    Returns:
        ``(good, errors)``: ``good`` a list of ``(path, bytes, uint8 image)``
        where ``bytes`` is what the model is sent (the file's own bytes, or a
        lossless PNG of the upright pixels when its EXIF orientation is not 1),
        ``errors`` a list of ``(path, message)``.
    """
    import tensorflow as tf

    from kerasmlic.data.preprocessing import decode_image
    from kerasmlic.export.serving import FORMATS, is_image_bytes

    good, errors = [], []
    for path in paths:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            errors.append((path, e.strerror or str(e)))
            continue
        if not bool(is_image_bytes(tf.constant(data))):
            errors.append((path, f"not a {FORMATS} image"))
            continue
        try:
            image = decode_image(tf.constant(data)).numpy()
        except tf.errors.OpError as e:
            errors.append((path, f"cannot decode image: {e.message.splitlines()[0]}"))
            continue
        orientation = _orientation(data)
        if orientation != 1:
            image = apply_exif_orientation(image, orientation)
            data = tf.io.encode_png(image).numpy()
        good.append((path, data, image))
    return good, errors


def _label_entries(outputs, i):
    n = int(outputs["num_labels"][i])
    return [
        {
            "id": int(outputs["label_ids"][i, j]),
            "label": outputs["labels"][i, j].decode("utf-8"),
            "score": float(outputs["scores"][i, outputs["label_ids"][i, j]]),
        }
        for j in range(n)
    ]


def _explain_name(path, used):
    stem = os.path.splitext(os.path.basename(path))[0] or "image"
    name, k = f"{stem}.png", 1
    while name in used:
        k += 1
        name = f"{stem}-{k}.png"
    used.add(name)
    return name


def _format_line(path, labels, top):
    if labels:
        text = ", ".join(f"{e['label']} {e['score']:.3f}" for e in labels)
    else:
        text = f"(no label; top score: {top['label']} {top['score']:.3f})"
    return f"{path}: {text}"


def predict_files(model_dir, image_paths, *, json_output=False, explain_dir=None):
    """Predict the labels of image files and print them.

    Args:
        model_dir: A SavedModel (version or base folder), a run directory or
            a ``.keras`` file.
        image_paths: Image files (JPEG or PNG).
        json_output: Print one JSON document (``model``, ``predictions`` with
            per-image labels and scores, ``errors``) instead of text lines.
        explain_dir: Write one PNG per image here with a heat map per label.

    Returns:
        The exit code: 0, or 2 when some file could not be read or decoded
        (each named on stderr; the others are still predicted).

    Raises:
        UsageError: No model at ``model_dir``, no image paths, or
            ``explain_dir`` with a model that cannot be explained.
    """
    if not image_paths:
        raise UsageError("no image files given")
    predictor = load_predictor(model_dir)
    if explain_dir is not None and not predictor.can_explain:
        raise UsageError(
            f"{model_dir!r} has no 'explain' signature (its model has no single encoder "
            "feature map); --explain cannot draw heat maps for it"
        )
    good, errors = read_images(image_paths)
    for path, message in errors:
        print(f"kerasmlic predict: {path}: {message}", file=sys.stderr)
    results = []
    used_names = set()
    for start in range(0, len(good), BATCH_SIZE):
        batch = good[start : start + BATCH_SIZE]
        outputs = predictor.predict([data for _, data, _ in batch], explain=explain_dir is not None)
        labels = [_label_entries(outputs, i) for i in range(len(batch))]
        explained = [None] * len(batch)
        if explain_dir is not None:
            explained = _write_explanations(predictor, batch, outputs, explain_dir, used_names)
        for i, (path, _, _) in enumerate(batch):
            top = int(outputs["scores"][i].argmax())
            results.append(
                {
                    "image": path,
                    "labels": labels[i],
                    "top": {
                        "id": top,
                        "label": _class_name(predictor, top),
                        "score": float(outputs["scores"][i, top]),
                    },
                    "explain": explained[i],
                }
            )
    if json_output:
        doc = {
            "model": predictor.name,
            "model_dir": model_dir,
            "predictions": results,
            "errors": [{"image": p, "error": m} for p, m in errors],
        }
        print(json.dumps(doc, indent=1))
    else:
        for r in results:
            line = _format_line(r["image"], r["labels"], r["top"])
            if r["explain"]:
                line += f"  [{r['explain']}]"
            print(line)
    return 2 if errors else 0


def _class_name(predictor, class_id):
    names = predictor.class_names
    return names[class_id] if names and class_id < len(names) else str(class_id)


def _write_explanations(predictor, batch, outputs, explain_dir, used_names):
    from kerasmlic.export.explain import save_explanation_png

    written = []
    for i, (path, _, image) in enumerate(batch):
        predicted = int(outputs["num_labels"][i]) > 0
        panels = []
        for j, c in enumerate(outputs["explained_ids"][i]):
            if c < 0:
                break
            source = outputs["heatmap_sources"][i, j].decode()
            note = "" if predicted else " (top score, not predicted)"
            score = float(outputs["scores"][i, c])
            caption = f"{_class_name(predictor, c)} {score:.2f}{note}\n{source}"
            panels.append((caption, outputs["heatmaps"][i, j]))
        out = os.path.join(explain_dir, _explain_name(path, used_names))
        save_explanation_png(out, image, panels, title=os.path.basename(path))
        written.append(out)
    return written
