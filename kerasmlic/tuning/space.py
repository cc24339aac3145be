"""The search space of ``kerasmlic tune``: declared in YAML, keyed by config key.

A tuning YAML is a training config plus a ``tune:`` section whose ``space``
maps dotted config keys (the keys ``--set`` takes) to one hyperparameter each::

    tune:
      space:
        model.name: {choice: [seq2seq, seq2seq_attention]}
        model.cell: {choice: [gru, lstm]}
        model.dropout: {min: 0.0, max: 0.3, step: 0.1}
        train.learning_rate: {min: 1.0e-4, max: 3.0e-3, sampling: log}
        model.decoding: {choice: [greedy, beam]}
        model.beam_width: {choice: [2, 3, 5], when: {model.decoding: beam}}

Kinds: ``choice`` (``hp.Choice``; a list of booleans becomes ``hp.Boolean``),
``min``/``max`` with optional ``step`` and ``sampling`` (``linear``, ``log``,
``reverse_log``; ``hp.Int`` when both bounds are integers, else ``hp.Float``)
and ``fixed``. ``when`` makes a hyperparameter conditional on earlier
choices (keras-tuner's ``conditional_scope``). When ``model.name`` is searched,
a ``model.*`` option that only some of the models accept is made conditional
on those models automatically.

The hyperparameter names are the config keys, so a trial's values are
written into a copy of the base config with ``config.set_value`` and the
result is an ordinary training config.
"""

import copy
import itertools

from kerasmlic.errors import UsageError
from kerasmlic.training import config as config_lib

SAMPLINGS = ("linear", "log", "reverse_log")
_KIND_KEYS = {"choice", "min", "max", "step", "sampling", "fixed", "when"}
# Keys that describe how a search runs, not what a trial trains; not tunable.
_NOT_TUNABLE = ("data.dir", "run_dir", "train.strategy", "train.mixed_precision", "train.epochs")


class ParamSpec:
    """One hyperparameter of the space.

    Args:
        name: The dotted config key (also the keras-tuner name).
        kind: ``"choice"``, ``"boolean"``, ``"int"``, ``"float"`` or ``"fixed"``.
        values: Choices (``choice``), or the fixed value in a one-item list.
        low: Lower bound (``int``/``float``).
        high: Upper bound (``int``/``float``).
        step: Step (``int``/``float``) or None.
        sampling: One of :data:`SAMPLINGS`.
        when: List of ``(parent name, [parent values])`` conditions.
    """

    def __init__(
        self, name, kind, *, values=None, low=None, high=None, step=None, sampling="linear",
        when=(),
    ):  # fmt: skip
        self.name = name
        self.kind = kind
        self.values = list(values) if values is not None else None
        self.low, self.high, self.step = low, high, step
        self.sampling = sampling
        self.when = [(parent, list(vals)) for parent, vals in when]

    def candidates(self):
        """Return values to check the spec with: every choice, or the bounds.

        Returns:
            A list of values.
        """
        if self.kind in ("choice", "fixed"):
            return list(self.values)
        if self.kind == "boolean":
            return [False, True]
        return [self.low, self.high]

    def describe(self):
        """Return a short readable form, e.g. ``choice[gru, lstm]`` or ``1e-4..3e-3 log``.

        Returns:
            A string.
        """
        if self.kind in ("choice", "boolean"):
            text = f"choice[{', '.join(str(v) for v in self.candidates())}]"
        elif self.kind == "fixed":
            text = f"fixed {self.values[0]}"
        else:
            text = f"{self.low:g}..{self.high:g}"
            if self.step is not None:
                text += f" step {self.step:g}"
            if self.sampling != "linear":
                text += f" {self.sampling}"
        for parent, vals in self.when:
            text += f" when {parent} in [{', '.join(str(v) for v in vals)}]"
        return text

    def declare(self, hp):
        """Register this hyperparameter on a ``keras_tuner.HyperParameters``.

        Args:
            hp: The HyperParameters (conditions must be entered by the caller).

        Returns:
            The value keras-tuner gives (None while inactive).
        """
        if self.kind == "choice":
            return hp.Choice(self.name, self.values, ordered=False)
        if self.kind == "boolean":
            return hp.Boolean(self.name)
        if self.kind == "fixed":
            return hp.Fixed(self.name, self.values[0])
        if self.kind == "int":
            return hp.Int(self.name, self.low, self.high, step=self.step, sampling=self.sampling)
        return hp.Float(self.name, self.low, self.high, step=self.step, sampling=self.sampling)


def _number(value, where):
    # YAML 1.1 reads ``1e-4`` (no dot) as a string; users mean a number.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"tune.space.{where}: expected a number, got {value!r}")
    return value


def _parse_when(name, when, declared):
    if when is None:
        return []
    if not isinstance(when, dict) or not when:
        raise UsageError(f"tune.space.{name}.when must map a hyperparameter to its values")
    out = []
    for parent, vals in when.items():
        parent = str(parent)
        if parent not in declared:
            raise UsageError(
                f"tune.space.{name}.when: {parent!r} is not a hyperparameter declared "
                "before it in tune.space"
            )
        if declared[parent].kind not in ("choice", "boolean", "fixed"):
            raise UsageError(f"tune.space.{name}.when: {parent!r} must be a choice to condition on")
        vals = vals if isinstance(vals, list) else [vals]
        allowed = declared[parent].candidates()
        bad = [v for v in vals if v not in allowed]
        if bad:
            raise UsageError(
                f"tune.space.{name}.when: {bad[0]!r} is not a value of {parent!r} "
                f"({', '.join(str(v) for v in allowed)})"
            )
        out.append((parent, vals))
    return out


def parse_param(name, spec, declared=None):
    """Parse one ``tune.space`` entry.

    Args:
        name: The dotted config key.
        spec: Its mapping (``choice``/``min``+``max``/``fixed``, ``when``), or
            a bare list (shorthand for ``choice``).
        declared: Earlier specs by name (for ``when``).

    Returns:
        A :class:`ParamSpec`.

    Raises:
        UsageError: Unknown kind keys, empty choices, mixed types, bad bounds.
    """
    declared = declared or {}
    if name in _NOT_TUNABLE:
        hint = "; the epochs per trial are tune.epochs (--epochs)" if name == "train.epochs" else ""
        raise UsageError(f"tune.space.{name}: not tunable (it says how the search runs{hint})")
    if isinstance(spec, list):
        spec = {"choice": spec}
    if not isinstance(spec, dict):
        raise UsageError(
            f"tune.space.{name} must be a mapping such as {{choice: [...]}} or "
            f"{{min: 0.0, max: 1.0}}, got {spec!r}"
        )
    unknown = sorted(set(spec) - _KIND_KEYS)
    if unknown:
        raise UsageError(
            f"tune.space.{name}: unknown key(s) {', '.join(unknown)}; valid: "
            f"{', '.join(sorted(_KIND_KEYS))}"
        )
    when = _parse_when(name, spec.get("when"), declared)
    kinds = [k for k in ("choice", "fixed", "min") if k in spec]
    if len(kinds) != 1:
        raise UsageError(f"tune.space.{name}: give exactly one of choice, fixed, min/max")
    if "choice" in spec:
        values = spec["choice"]
        if not isinstance(values, list) or not values:
            raise UsageError(f"tune.space.{name}.choice must be a non-empty list")
        if any(v is None or isinstance(v, dict | list) for v in values):
            raise UsageError(f"tune.space.{name}.choice: values must be plain scalars")
        if all(isinstance(v, bool) for v in values):
            if sorted(values) == [False, True]:
                return ParamSpec(name, "boolean", when=when)
            return ParamSpec(name, "fixed", values=values[:1], when=when)
        if any(isinstance(v, bool) for v in values):
            raise UsageError(f"tune.space.{name}.choice mixes booleans with other values")
        if len({type(v) for v in values}) > 1:
            if all(isinstance(v, int | float) for v in values):
                values = [float(v) for v in values]
            else:
                raise UsageError(f"tune.space.{name}.choice mixes types: {values!r}")
        if len(set(values)) != len(values):
            raise UsageError(f"tune.space.{name}.choice repeats a value: {values!r}")
        return ParamSpec(name, "choice", values=values, when=when)
    if "fixed" in spec:
        return ParamSpec(name, "fixed", values=[spec["fixed"]], when=when)
    if "max" not in spec:
        raise UsageError(f"tune.space.{name}: 'min' needs a 'max'")
    low, high = _number(spec["min"], f"{name}.min"), _number(spec["max"], f"{name}.max")
    step = spec.get("step")
    step = None if step is None else _number(step, f"{name}.step")
    sampling = spec.get("sampling", "linear")
    if sampling not in SAMPLINGS:
        raise UsageError(
            f"tune.space.{name}.sampling: {sampling!r} is not one of {', '.join(SAMPLINGS)}"
        )
    if not low < high:
        raise UsageError(f"tune.space.{name}: min ({low}) must be below max ({high})")
    if sampling != "linear" and low <= 0:
        raise UsageError(f"tune.space.{name}: {sampling} sampling needs min > 0")
    if step is not None and step <= 0:
        raise UsageError(f"tune.space.{name}.step must be positive")
    is_int = all(isinstance(v, int) for v in (low, high)) and (
        step is None or isinstance(step, int)
    )
    kind = "int" if is_int else "float"
    if kind == "float":
        low, high = float(low), float(high)
        step = None if step is None else float(step)
    return ParamSpec(name, kind, low=low, high=high, step=step, sampling=sampling, when=when)


def _model_name_spec(specs, base_config):
    for spec in specs:
        if spec.name == "model.name":
            return spec
    return ParamSpec("model.name", "fixed", values=[base_config["model"]["name"]])


def _add_model_conditions(specs, base_config):
    """Make ``model.X`` conditional on the searched models that accept option X."""
    from kerasmlic.models.registry import model_options

    names_spec = _model_name_spec(specs, base_config)
    names = names_spec.candidates()
    for name in names:
        if not isinstance(name, str):
            raise UsageError(f"tune.space.model.name: {name!r} is not a model name")
        model_options(name)  # UsageError listing the models on a bad name
    for spec in specs:
        if not spec.name.startswith("model.") or spec.name == "model.name":
            continue
        option = spec.name.split(".", 1)[1]
        accepting = [n for n in names if option in model_options(n)]
        if not accepting:
            valid = sorted(set().union(*(model_options(n) for n in names)))
            raise UsageError(
                f"tune.space.{spec.name}: no searched model ({', '.join(names)}) takes "
                f"option {option!r}; valid options: {', '.join(valid)}"
            )
        if len(accepting) < len(names) and not any(p == "model.name" for p, _ in spec.when):
            if names_spec.kind == "fixed":
                continue  # unreachable: one model, which accepts it
            spec.when.insert(0, ("model.name", accepting))


def parse_space(space, base_config):
    """Parse and check a ``tune.space`` mapping against the base config.

    Every value of every hyperparameter is written into the base config (with
    its conditions' values) and validated, so a typo in a key or a value of
    the wrong type fails here, with one line, before any trial runs.

    Args:
        space: The ``tune.space`` mapping (dotted key → spec), in YAML order.
        base_config: The resolved base training config.

    Returns:
        A list of :class:`ParamSpec` in declaration order.

    Raises:
        UsageError: An empty space, an unknown key, a bad spec or value.
    """
    if not isinstance(space, dict) or not space:
        raise UsageError("tune.space must map config keys to hyperparameters (see experiments/)")
    declared = {}
    for name, spec in space.items():
        name = str(name)
        declared[name] = parse_param(name, spec, declared)
    specs = list(declared.values())
    _add_model_conditions(specs, base_config)
    names = _model_name_spec(specs, base_config).candidates()
    for spec in specs:
        conditions = dict(spec.when)
        models = [n for n in names if n in conditions.get("model.name", names)]
        for model, value in itertools.product(models, spec.candidates()):
            values = {p: vals[0] for p, vals in spec.when}
            values["model.name"] = model
            values[spec.name] = value
            try:
                trial_config(base_config, values)
            except UsageError as e:
                raise UsageError(f"tune.space.{spec.name} = {value!r}: {e}") from None
    return specs


def declare_space(hp, specs):
    """Register every hyperparameter of a space (inactive ones included).

    Args:
        hp: A ``keras_tuner.HyperParameters``.
        specs: The list from :func:`parse_space`.

    Returns:
        ``{name: value}`` of the active hyperparameters.
    """
    import contextlib

    values = {}
    for spec in specs:
        with contextlib.ExitStack() as stack:
            for parent, vals in spec.when:
                stack.enter_context(hp.conditional_scope(parent, vals))
            value = spec.declare(hp)
        if hp.is_active(spec.name):
            values[spec.name] = value
    return values


def active_values(hp, specs):
    """Return the active values of a trial's hyperparameters, in space order.

    Args:
        hp: The trial's ``keras_tuner.HyperParameters``.
        specs: The list from :func:`parse_space`.

    Returns:
        ``{dotted key: value}``; keras-tuner's own ``tuner/*`` entries are left out.
    """
    out = {}
    for spec in specs:
        if spec.name in hp.values and hp.is_active(spec.name):
            value = hp.values[spec.name]
            out[spec.name] = value.item() if hasattr(value, "item") else value
    return out


def trial_config(base_config, values):
    """Write hyperparameter values into a copy of the base config and validate it.

    Model options of the base config that the trial's model does not take
    (when ``model.name`` is searched) are dropped; the base config itself was
    validated against its own model, so these are not typos.

    Args:
        base_config: The resolved base training config.
        values: ``{dotted key: value}``.

    Returns:
        A validated training config.

    Raises:
        UsageError: A value the config or the model rejects.
    """
    config = copy.deepcopy(base_config)
    name = values.get("model.name", config["model"]["name"])
    if name != config["model"]["name"]:
        from kerasmlic.models.registry import model_options

        accepted = model_options(name)
        config["model"] = {k: v for k, v in config["model"].items() if k == "name" or k in accepted}
    for key, value in values.items():
        config_lib.set_value(config, key, value)
    config_lib.validate_config(config)
    # The same rule ``train`` applies, checked before a trial starts.
    if config["train"]["class_weighting"] != "none":
        from kerasmlic.training.builder import check_class_weighting, class_weighted_models

        names = class_weighted_models()
        shown = names[0] if len(names) == 1 else f"[{', '.join(names)}]"
        check_class_weighting(config, hint=f" (condition it with when: {{model.name: {shown}}})")
    return config
