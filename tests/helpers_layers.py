"""Shared test helper for every custom Keras layer (keras-hub's ``run_layer_test``).

:func:`run_layer_test` puts one layer class through the checks a layer must
pass to live inside a saved, mixed-precision, trained kerasmlic model:

- build: ``layer.build(shapes)`` creates every weight (the eager call after it
  creates none: a ``.keras`` file restores weights into built layers);
- symbolic call: ``keras.KerasTensor`` inputs with an unknown batch give the
  expected output shapes and dtypes (what a functional model sees);
- eager call: the expected shapes and dtypes on real arrays;
- serialisation: the registered name, ``get_config``/``from_config`` and
  ``serialize_keras_object``/``deserialize_keras_object`` round trips give
  the same config, and the revived layer with the same weights the same outputs;
- mixed precision: under the global ``mixed_float16`` policy the layer runs,
  its outputs have the documented dtypes and are finite, its variables are
  float32; the previous policy is restored afterwards;
- one fit step: the layer inside a tiny ``keras.Model`` (outputs flattened,
  one Dense unit) fits one batch (a traced ``tf.function`` step unless
  ``fit_eagerly``) with a finite loss, and every trainable weight of the
  layer changes.

Inputs are an array, a list or tuple of arrays (spread over the positional
call arguments, as ``AdditiveAttention(query, memory)``) or a dict (passed as
one argument, as ``LabelDecoder(inputs)``; nested lists inside are fine).
"""

import json

import keras
import numpy as np
from keras import ops, tree


def _is_float(dtype):
    return "float" in keras.backend.standardize_dtype(dtype)


def _spread(inputs):
    return isinstance(inputs, list | tuple)


def _call(layer, inputs, **kwargs):
    """Call ``layer`` on inputs by the convention above."""
    if _spread(inputs):
        return layer(*inputs, **kwargs)
    return layer(inputs, **kwargs)


def _has_own_build(layer):
    return type(layer).build is not keras.layers.Layer.build


def _shapes(inputs):
    return tree.map_structure(lambda x: tuple(x.shape), inputs)


def _dtype_of(x):
    return keras.backend.standardize_dtype(x.dtype)


def _expected_dtypes(expected, outputs, default):
    """Return a flat list of expected dtypes (None: unchecked) for ``outputs``.

    ``expected`` is None (every float output ``default``), one dtype string
    (every float output), or a structure matching ``outputs``.
    """
    flat = tree.flatten(outputs)
    if expected is None or isinstance(expected, str):
        want = default if expected is None else expected
        return [want if _is_float(_dtype_of(x)) else None for x in flat]
    want = tree.flatten(expected)
    assert len(want) == len(flat), f"{len(want)} expected dtypes for {len(flat)} outputs"
    return want


def _is_shape(value):
    return isinstance(value, tuple | list) and all(d is None or isinstance(d, int) for d in value)


def _flat_shapes(expected):
    """Flatten a structure of shapes in ``tree.flatten``'s order (dict keys sorted)."""
    if _is_shape(expected):
        return [tuple(expected)]
    if isinstance(expected, dict):
        return [s for key in sorted(expected) for s in _flat_shapes(expected[key])]
    return [s for item in expected for s in _flat_shapes(item)]


def _assert_outputs(outputs, expected_shape, dtypes, what, symbolic=False):
    """Assert output shapes (structure included) and dtypes."""
    if isinstance(expected_shape, dict):
        assert isinstance(outputs, dict) and set(outputs) == set(expected_shape), (what, outputs)
    got = [tuple(x.shape) for x in tree.flatten(outputs)]
    want = _flat_shapes(expected_shape)
    assert len(got) == len(want), (what, got, want)
    for actual, expected in zip(got, want, strict=True):
        if symbolic:
            # The inputs' batch is unknown: only the first axis may be too.
            ok = len(actual) == len(expected) and actual[1:] == expected[1:]
            assert ok and actual[0] in (None, expected[0]), (what, got, want)
        else:
            assert actual == expected, (what, got, want)
    for x, dtype in zip(tree.flatten(outputs), dtypes, strict=True):
        if dtype is not None:
            assert _dtype_of(x) == dtype, (what, _dtype_of(x), dtype)


def _numpy(structure):
    return tree.map_structure(lambda x: np.asarray(ops.convert_to_numpy(x)), structure)


def _assert_close(actual, expected, what):
    for a, b in zip(tree.flatten(_numpy(actual)), tree.flatten(_numpy(expected)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=what)


def _config_json(layer):
    return json.dumps(layer.get_config(), sort_keys=True)


def _check_build(layer_cls, init_kwargs, input_data, num_trainable, num_non_trainable):
    layer = layer_cls(**init_kwargs)
    shapes = _shapes(input_data)
    if _spread(input_data) and _has_own_build(layer):
        layer.build(*shapes)
    else:
        layer.build(shapes)
    assert layer.built
    if num_trainable is not None:
        assert len(layer.trainable_weights) == num_trainable, layer.trainable_weights
    if num_non_trainable is not None:
        assert len(layer.non_trainable_weights) == num_non_trainable, layer.non_trainable_weights
    count = len(layer.weights)
    _call(layer, input_data)
    assert len(layer.weights) == count, "the call created weights that build() did not"


def _check_serialisation(layer, input_data, reference, registered_name):
    """Round-trip ``layer`` (already called); the revived layer must match ``reference``."""
    cls = type(layer)
    config = _config_json(layer)
    revived = cls.from_config(json.loads(json.dumps(layer.get_config())))
    assert _config_json(revived) == config
    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"] == registered_name, serialized["registered_name"]
    revived = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
    assert type(revived) is cls and _config_json(revived) == config
    _call(revived, input_data)
    revived.set_weights(layer.get_weights())
    _assert_close(_call(revived, input_data), reference, f"{cls.__name__} revived")


def _check_mixed_precision(layer_cls, init_kwargs, input_data, expected_shape, mixed_dtype):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        layer = layer_cls(**init_kwargs)
        outputs = _call(layer, input_data)
        dtypes = _expected_dtypes(mixed_dtype, outputs, "float16")
        _assert_outputs(outputs, expected_shape, dtypes, f"{layer_cls.__name__} mixed_float16")
        for x in tree.flatten(_numpy(outputs)):
            assert np.all(np.isfinite(x.astype(np.float64))), layer_cls.__name__
        for weight in layer.weights:
            if _is_float(weight.dtype):
                assert _dtype_of(weight) == "float32", weight.path
    finally:
        keras.config.set_dtype_policy(previous)


class _ScalarHead(keras.Model):
    """The layer under test, its float outputs flattened and joined, one Dense unit."""

    def __init__(self, layer):
        super().__init__(name="scalar_head")
        self.inner = layer
        self.head = keras.layers.Dense(1, name="head")

    def call(self, inputs):
        batch = ops.shape(tree.flatten(inputs)[0])[0]
        outputs = []
        for x in tree.flatten(_call(self.inner, inputs)):
            if _is_float(x.dtype):
                x = ops.reshape(ops.cast(x, "float32"), (ops.shape(x)[0], -1))
                # An output shared by the batch (a (1, ...) positional table) broadcasts.
                outputs.append(ops.broadcast_to(x, (batch, x.shape[1])))
        return self.head(ops.concatenate(outputs, axis=-1))


def _check_fit_step(layer_cls, init_kwargs, input_data, may_stay, eagerly):
    layer = layer_cls(**init_kwargs)
    model = _ScalarHead(layer)
    model(input_data)
    before = {w.path: np.array(w.numpy()) for w in layer.trainable_weights}
    model.compile(
        optimizer=keras.optimizers.SGD(0.5), loss="mse", run_eagerly=eagerly, jit_compile=False
    )
    batch = len(tree.flatten(input_data)[0])
    targets = np.random.default_rng(1).normal(size=(batch, 1)).astype("float32")
    history = model.fit(input_data, targets, batch_size=batch, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0]), layer_cls.__name__
    for weight in layer.trainable_weights:
        if not any(name in weight.path for name in may_stay):
            assert not np.array_equal(weight.numpy(), before[weight.path]), (
                f"{layer_cls.__name__}: trainable weight {weight.path} did not change"
            )


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_data,
    expected_output_shape,
    *,
    expected_output_dtype=None,
    mixed_precision_output_dtype=None,
    expected_num_trainable_weights=None,
    expected_num_non_trainable_weights=None,
    registered_name=None,
    run_mixed_precision_check=True,
    run_training_check=True,
    weights_that_may_stay=(),
    fit_eagerly=False,
):
    """Run the build, symbolic, eager, serialisation, mixed-precision and fit checks.

    Args:
        layer_cls: The layer class.
        init_kwargs: Constructor arguments (without ``dtype`` for the
            mixed-precision check to mean anything).
        input_data: An array, a list/tuple of arrays (positional call
            arguments) or a dict (one argument); the first axis is the batch.
        expected_output_shape: The outputs' shapes on ``input_data``, in the
            outputs' structure (a tuple for one tensor, a tuple of tuples, or
            a dict of tuples).
        expected_output_dtype: The outputs' dtypes at the default policy: one
            dtype for every float output, or a structure like the outputs
            (None entries unchecked); default ``"float32"`` for float outputs.
        mixed_precision_output_dtype: The same under ``mixed_float16``, as the
            layer documents it; default ``"float16"`` for float outputs.
        expected_num_trainable_weights: Checked after ``build`` when given.
        expected_num_non_trainable_weights: Checked after ``build`` when given.
        registered_name: The Keras registered name; default
            ``"kerasmlic>ClassName"`` (saved ``.keras`` files refer to it).
        run_mixed_precision_check: Run the ``mixed_float16`` check.
        run_training_check: Run the one-step fit.
        weights_that_may_stay: Substrings of weight paths the fit step need
            not change (e.g. a weight no output depends on).
        fit_eagerly: Fit with ``run_eagerly=True`` instead of a traced
            ``tf.function`` step (for a layer whose graph gradient is slow to
            trace and is covered elsewhere).

    Returns:
        The layer's eager outputs on ``input_data`` (for further assertions).
    """
    name = layer_cls.__name__
    registered_name = registered_name or f"kerasmlic>{name}"
    _check_build(
        layer_cls,
        init_kwargs,
        input_data,
        expected_num_trainable_weights,
        expected_num_non_trainable_weights,
    )

    symbolic_inputs = tree.map_structure(
        lambda x: keras.KerasTensor((None, *x.shape[1:]), x.dtype), input_data
    )
    layer = layer_cls(**init_kwargs)
    symbolic = _call(layer, symbolic_inputs)
    dtypes = _expected_dtypes(expected_output_dtype, symbolic, "float32")
    _assert_outputs(symbolic, expected_output_shape, dtypes, f"{name} symbolic", symbolic=True)

    layer = layer_cls(**init_kwargs)
    outputs = _call(layer, input_data)
    _assert_outputs(outputs, expected_output_shape, dtypes, f"{name} eager")

    _check_serialisation(layer, input_data, outputs, registered_name)
    if run_mixed_precision_check:
        _check_mixed_precision(
            layer_cls, init_kwargs, input_data, expected_output_shape, mixed_precision_output_dtype
        )
    if run_training_check:
        _check_fit_step(layer_cls, init_kwargs, input_data, weights_that_may_stay, fit_eagerly)
    return outputs
