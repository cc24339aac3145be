"""Training configs: defaults, YAML files, ``--set key=value`` overrides, validation.

A config is a nested dict with four sections and a run directory::

    model:        # name: a registry name; every other key is a model option
      name: seq2seq_attention
      encoder: tiny
    data:         # the shard folder and the input pipeline
      dir: data/synth-shards
      image_size: 64
      batch_size: 32
    train:        # optimiser, schedule, precision, strategy
      epochs: 10
      learning_rate: 0.001
    evaluation:   # the validation pass during and after training
      every: 1
      calibrate: false
    run_dir: runs/seq2seq_attention

Files in ``experiments/`` hold only what differs from :data:`DEFAULTS`.
Overrides use dotted keys and YAML-typed values (``train.epochs=3``,
``model.cell=lstm``, ``train.use_ema=true``). Unknown keys and bad values raise
:class:`~kerasmlic.errors.UsageError` naming the valid ones; model options are
checked against the model's constructor through the registry.
"""

import copy
import os
import tempfile

import yaml

from kerasmlic.errors import UsageError

STRATEGIES = ("default", "mirrored", "multiworker")
CLASS_WEIGHTINGS = ("none", "pos_weight", "class_balanced")
"""Loss weightings of the ``bce`` model (see ``training.losses``)."""

DEFAULTS = {
    # name: a registry name; every other key is passed to the model (encoder, cell, ...).
    "model": {"name": "seq2seq_attention"},
    "data": {
        "dir": None,  # shard folder made by `kerasmlic build` (--data)
        "train_split": "train",
        "val_split": "val",  # evaluated every `evaluation.every` epochs and at the end
        "image_size": 64,
        "batch_size": 32,  # global batch (split over replicas under `mirrored`)
        "shuffle_buffer": None,  # records; default min(1024, split size)
        # tf.data service dispatcher, grpc://HOST:PORT (--data-service): its workers run
        # the training stream's reading, decoding and augmentation; None = this process.
        "service": None,
        # Training-time augmentation inside tf.data; `augment: none` turns all of it off.
        "augment": {
            # [min, max] area of the random crop; [1, 1] = no crop. Off by default: a
            # crop that cuts an object out keeps its label (label noise), and on the
            # built-in data even [0.6, 1] cost 2.4 mAP (bce, 12 epochs; CHANGELOG.md).
            "crop_scale": [1.0, 1.0],
            "crop_ratio": [0.75, 1.3333333333333333],  # [min, max] width / height of the crop
            "flip": True,  # random left-right mirror (off for data that is not mirror-symmetric)
            "randaugment": {"num_ops": 0, "magnitude": 9},  # 0 ops = off
            "erasing": 0.0,  # probability of random erasing (0 = off)
        },
    },
    "train": {
        "epochs": 10,
        "steps_per_epoch": None,  # default: train images // batch size
        "learning_rate": 1e-3,  # AdamW peak rate
        "weight_decay": 1e-4,  # decoupled; not applied to biases and norm scales
        "warmup_epochs": 1.0,  # linear warm-up, then cosine decay
        "warmup_fraction": None,  # warm-up as a fraction of the run (overrides warmup_epochs)
        "min_learning_rate_ratio": 0.01,  # final rate / peak rate
        "global_clipnorm": 1.0,  # 0 disables clipping
        "use_ema": False,  # exponential moving average of the weights (evaluated, saved)
        "ema_momentum": 0.99,
        # Momentum of every BatchNormalization layer's moving statistics; None: as
        # built (0.9 in tiny/small, which settles in a few hundred steps but makes
        # the evaluated model depend on the last ~10 batches; see CHANGELOG.md).
        "bn_momentum": None,
        # Re-estimate the BatchNorm statistics from N training batches with the weights
        # fixed, after every epoch and before validation (precise BN); 0 = off.
        "precise_bn_batches": 0,
        "mixed_precision": False,  # mixed_float16
        "jit_compile": False,  # XLA
        "freeze_encoder_epochs": 0,  # train the head with the encoder frozen first
        "fine_tune_learning_rate": None,  # peak rate after unfreezing (default learning_rate)
        "class_weighting": "none",  # bce only: none | pos_weight | class_balanced
        "max_pos_weight": 10.0,
        "class_balanced_beta": 0.999,
        "strategy": "default",  # default | mirrored | multiworker (--strategy)
        "seed": 0,
        "deterministic": False,  # seeded, deterministic TF ops (slower; for studies)
        "early_stopping_patience": 0,  # stop after N evaluations without a val mAP gain; 0 = off
        "verbose": "auto",  # Keras progress: auto (bar on a terminal) | 0 | 1 | 2
    },
    "evaluation": {
        "every": 1,  # epochs between validation passes
        # The run's final epochs, each validated whatever `every` says (reproduce's
        # convergence rule reads the last 3 val mAPs).
        "last_epochs": 1,
        "batch_size": 64,
        "calibrate": False,  # per-class F1-optimal thresholds, saved in the model
        # Where thresholds are fit: "train-holdout" (a fraction of train held out of
        # training, only when calibrating) or a split name; never the reported split.
        "calibration_split": "train-holdout",
        "holdout_fraction": 0.1,
    },
    "run_dir": None,  # default runs/<model name>, so the same command resumes
}

# Keys whose default is None: the types they accept.
_NULLABLE_TYPES = {
    ("data", "dir"): (str,),
    ("data", "shuffle_buffer"): (int,),
    ("data", "service"): (str,),
    ("train", "steps_per_epoch"): (int,),
    ("train", "fine_tune_learning_rate"): (float,),
    ("train", "warmup_fraction"): (float,),
    ("train", "bn_momentum"): (float,),
    ("run_dir",): (str,),
}
_POSITIVE = {
    ("data", "image_size"),
    ("data", "batch_size"),
    ("data", "shuffle_buffer"),
    ("train", "epochs"),
    ("train", "steps_per_epoch"),
    ("train", "learning_rate"),
    ("train", "fine_tune_learning_rate"),
    ("train", "max_pos_weight"),
    ("data", "augment", "randaugment", "magnitude"),
    ("evaluation", "every"),
    ("evaluation", "last_epochs"),
    ("evaluation", "batch_size"),
}
_NON_NEGATIVE = {
    ("train", "weight_decay"),
    ("train", "warmup_epochs"),
    ("train", "min_learning_rate_ratio"),
    ("train", "global_clipnorm"),
    ("train", "freeze_encoder_epochs"),
    ("train", "early_stopping_patience"),
    ("train", "precise_bn_batches"),
    ("data", "augment", "randaugment", "num_ops"),
}
_UNIT_INTERVAL = {
    ("train", "warmup_fraction"),
    ("train", "ema_momentum"),
    ("train", "bn_momentum"),
    ("train", "class_balanced_beta"),
    ("data", "augment", "erasing"),
    ("evaluation", "holdout_fraction"),
}
AUGMENT_OFF = {
    "crop_scale": [1.0, 1.0],
    "crop_ratio": [0.75, 1.3333333333333333],
    "flip": False,
    "randaugment": {"num_ops": 0, "magnitude": 9},
    "erasing": 0.0,
}
"""What ``data.augment: none`` stands for: every training-time augmentation off."""
_RANGES = {("data", "augment", "crop_scale"), ("data", "augment", "crop_ratio")}
_CHOICES = {
    ("train", "strategy"): STRATEGIES,
    ("train", "class_weighting"): CLASS_WEIGHTINGS,
    ("train", "verbose"): ("auto", 0, 1, 2),
}


def default_config():
    """Return a fresh copy of :data:`DEFAULTS`.

    Returns:
        A nested dict.
    """
    return copy.deepcopy(DEFAULTS)


def _valid_keys(section):
    return ", ".join(sorted(section))


def merge_config(base, update, path=()):
    """Merge ``update`` into ``base`` in place, refusing keys ``base`` lacks.

    The ``model`` section is open (model options), checked later by the registry;
    ``data.augment: none`` stands for :data:`AUGMENT_OFF`.

    Args:
        base: A config dict (changed in place), e.g. :func:`default_config`'s.
        update: A nested dict of values to set.
        path: The keys above ``base`` (for error messages).

    Raises:
        UsageError: An unknown key, or a section given as a scalar.
    """
    if not isinstance(update, dict):
        where = ".".join(path) or "the config"
        raise UsageError(f"{where} must be a mapping, got {type(update).__name__}")
    for key, value in update.items():
        key = str(key)
        here = (*path, key)
        if path == ("model",):
            base[key] = value
            continue
        if key not in base:
            where = f"section {'.'.join(path)!r}" if path else "the config"
            raise UsageError(
                f"unknown config key {'.'.join(here)!r}; valid keys in {where}: {_valid_keys(base)}"
            )
        if isinstance(base[key], dict):
            if isinstance(value, str) and path == () and key == "model":
                base[key]["name"] = value  # ``model: bce`` is shorthand for model.name
                continue
            if here == ("data", "augment") and not isinstance(value, dict | None):
                if value is False or str(value).lower() == "none":
                    base[key] = copy.deepcopy(AUGMENT_OFF)  # ``augment: none``: all of it off
                    continue
                raise UsageError(f"data.augment must be a mapping or 'none', got {value!r}")
            merge_config(base[key], value if value is not None else {}, here)
        else:
            base[key] = value


def set_value(config, dotted_key, value):
    """Set one config value by dotted key, refusing unknown keys.

    Args:
        config: A config dict (changed in place).
        dotted_key: e.g. ``"train.epochs"`` or ``"model.cell"``.
        value: The new value (already typed).

    Raises:
        UsageError: Unknown key.
    """
    parts = [p for p in str(dotted_key).split(".")]
    if not all(parts):
        raise UsageError(f"bad config key {dotted_key!r}")
    update = value
    for part in reversed(parts):
        update = {part: update}
    merge_config(config, update)


def parse_override(text):
    """Split ``KEY=VALUE`` and type the value as YAML does.

    Args:
        text: e.g. ``"train.learning_rate=3e-4"`` or ``"model.cell=lstm"``.

    Returns:
        ``(key, value)``; ``"3e-4"`` becomes a float, ``"true"`` a bool,
        ``"null"`` None, ``"[1, 2]"`` a list.

    Raises:
        UsageError: No ``=`` or a value YAML cannot read.
    """
    if "=" not in text:
        raise UsageError(f"--set expects KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise UsageError(f"--set {key}: cannot read value {raw!r}: {e}") from None
    # YAML 1.1 reads "1e-3" as a string (no dot); users mean a number.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value.lower() for c in ".e") else int(value)
        except ValueError:
            pass
    return key, value


def apply_overrides(config, overrides):
    """Apply ``--set KEY=VALUE`` strings in order.

    Args:
        config: A config dict (changed in place).
        overrides: Iterable of ``KEY=VALUE`` strings.

    Returns:
        The same dict.
    """
    for text in overrides or ():
        key, value = parse_override(text)
        set_value(config, key, value)
    return config


def read_config_file(path):
    """Read a YAML config file.

    Args:
        path: A ``.yaml`` file.

    Returns:
        The dict it holds (empty for an empty file).

    Raises:
        UsageError: Missing or unreadable file, or not a mapping.
    """
    if not os.path.isfile(path):
        raise UsageError(f"config file {path!r} not found")
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise UsageError(f"cannot read config {path!r}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"config {path!r} must hold a mapping, got {type(data).__name__}")
    return data


def _is_type(value, types):
    # bool is an int subclass; a flag is never a count and vice versa.
    if isinstance(value, bool):
        return bool in types
    if float in types and isinstance(value, int):
        return True
    return isinstance(value, types)


def _check_value(path, value, default):
    key = ".".join(path)
    types = _NULLABLE_TYPES.get(path)
    if value is None:
        if types is None:
            raise UsageError(f"config key {key!r} needs a value")
        return
    if path in _RANGES:
        _check_range(key, value, unit=path[-1] == "crop_scale")
        return
    if path == ("evaluation", "calibration_split"):
        if not isinstance(value, str) or not value:
            raise UsageError(f"config key {key!r} must be 'train-holdout' or a split name")
        return
    if path in _CHOICES:
        if value not in _CHOICES[path]:
            choices = ", ".join(str(c) for c in _CHOICES[path])
            raise UsageError(f"config key {key!r}: {value!r} is not one of {choices}")
        return
    if types is None:
        types = (type(default),)
    if not _is_type(value, types):
        want = " or ".join(t.__name__ for t in types)
        raise UsageError(f"config key {key!r} expects {want}, got {value!r}")
    if path in _POSITIVE and not value > 0:
        raise UsageError(f"config key {key!r} must be positive, got {value!r}")
    if path in _NON_NEGATIVE and value < 0:
        raise UsageError(f"config key {key!r} must be >= 0, got {value!r}")
    if path in _UNIT_INTERVAL and not 0 <= value < 1:
        raise UsageError(f"config key {key!r} must be in [0, 1), got {value!r}")


def _check_range(key, value, *, unit):
    ok = (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(_is_type(v, (float,)) for v in value)
        and 0 < value[0] <= value[1]
    )
    if ok and unit:
        ok = value[1] <= 1
    if not ok:
        bound = "0 < min <= max <= 1" if unit else "0 < min <= max"
        raise UsageError(f"config key {key!r} expects [min, max] with {bound}, got {value!r}")


def _walk_defaults(defaults, config, path=()):
    for key, default in defaults.items():
        here = (*path, key)
        if isinstance(default, dict) and here != ("model",):
            if not isinstance(config[key], dict):
                raise UsageError(f"config key {'.'.join(here)!r} must be a mapping")
            _walk_defaults(default, config[key], here)
        elif here != ("model",):
            _check_value(here, config[key], default)


def validate_config(config, *, check_model=True):
    """Check types, ranges and choices; check the model name and options.

    Args:
        config: A merged config dict.
        check_model: Also check ``model.name`` and options against the registry
            (imports TensorFlow).

    Returns:
        The config.

    Raises:
        UsageError: The first problem found, naming the key and what is valid.
    """
    _walk_defaults(DEFAULTS, config)
    name = config["model"].get("name")
    if not isinstance(name, str) or not name:
        raise UsageError("config key 'model.name' must name a model")
    if check_model:
        from kerasmlic.models.registry import model_options

        valid = model_options(name)  # UsageError listing the models on a bad name
        options = model_settings(config)
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise UsageError(
                f"unknown option(s) {', '.join('model.' + u for u in unknown)} for model "
                f"{name!r}; valid options: {', '.join(sorted(valid))}"
            )
    return config


def model_settings(config):
    """Return the model options of a config (the ``model`` section without ``name``).

    Args:
        config: A config dict.

    Returns:
        A dict of options for ``build_model``.
    """
    return {k: v for k, v in config["model"].items() if k != "name"}


def load_config(path=None, overrides=(), *, check_model=True, **flags):
    """Defaults, then a YAML file, then CLI flags, then ``--set`` overrides; validated.

    Args:
        path: Optional YAML config file.
        overrides: ``KEY=VALUE`` strings (``--set``), applied last.
        check_model: Check the model name and options against the registry.
        **flags: Dotted keys with ``None`` meaning "not given", e.g.
            ``**{"data.dir": "shards", "train.epochs": 3}``.

    Returns:
        The resolved config dict.

    Raises:
        UsageError: Unknown key, bad value, unknown model or option.
    """
    config = default_config()
    if path is not None:
        merge_config(config, read_config_file(path))
    for key, value in flags.items():
        if value is not None:
            set_value(config, key, value)
    apply_overrides(config, overrides)
    return validate_config(config, check_model=check_model)


def config_to_yaml(config):
    """Return a config as YAML text (sections in :data:`DEFAULTS` order).

    Args:
        config: A config dict.

    Returns:
        A string.
    """
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def save_config(config, path):
    """Write a config as YAML atomically (temporary file, then rename).

    Args:
        config: A config dict.
        path: Destination file.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".yaml", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(config_to_yaml(config))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
