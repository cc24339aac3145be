"""Every custom kerasmlic layer on its own, through the shared ``run_layer_test``.

Build, symbolic call, eager call, serialisation round trip (registered names
included), mixed precision and one fit step (:mod:`helpers_layers`), on tiny
shapes: batch 2, a handful of classes and channels.
"""

import keras
import numpy as np
import pytest
from helpers_layers import run_layer_test
from keras import ops

from kerasmlic.data.sequences import NUM_SPECIAL
from kerasmlic.models.attention import AdditiveAttention
from kerasmlic.models.base import Thresholds
from kerasmlic.models.embedding import LabelAttentionSimilarity, LabelEmbeddingSimilarity
from kerasmlic.models.encoders import VectorAsFeatureMap
from kerasmlic.models.hub_encoder import TokenRegions
from kerasmlic.models.label_decoder import LabelDecoder
from kerasmlic.models.label_prior import LabelPrior
from kerasmlic.models.label_query import (
    LabelQueries,
    MeanOverHeads,
    PerClassLinear,
    PositionalEmbedding2D,
    TransformerDecoderLayer,
)

B = 2  # batch
C = 4  # classes


def _normal(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


# --------------------------------------------------------------------------- recurrent parts


def test_additive_attention():
    context, weights = run_layer_test(
        AdditiveAttention,
        {"units": 4},
        (_normal(B, 5), _normal(B, 3, 6, seed=1)),
        ((B, 6), (B, 3)),
        # The softmax runs in float32 whatever the policy (documented in attend()).
        mixed_precision_output_dtype=("float16", "float32"),
        expected_num_trainable_weights=4,
    )
    np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, rtol=1e-5)


def test_label_prior():
    logits, gated = run_layer_test(
        LabelPrior,
        {"num_classes": C, "gate_init": 1.0},
        _normal(B, 6),
        ((B, C), (B, C)),
        mixed_precision_output_dtype="float32",  # documented: both float32
        expected_num_trainable_weights=3,
    )
    np.testing.assert_allclose(np.asarray(gated), np.asarray(logits), rtol=1e-6)


MAX_LABELS = 3
DECODER_OUTPUT_DTYPES = {"scores": "float32", "predicted": "float32", "sequence": "int32"}


@pytest.mark.parametrize(
    ("options", "inputs"),
    [
        # seq2seq_attention with the auxiliary head's label bias, greedy.
        (
            {"cell": "gru", "attention": True},
            {
                "states": [_normal(B, 8)],
                "memory": _normal(B, 5, 8, seed=1),
                "label_bias": _normal(B, C, seed=2),
            },
        ),
        # rnn_input with an LSTM, beam search.
        ({"cell": "lstm", "beam_width": 2, "length_penalty": 2.0}, {"first_input": _normal(B, 6)}),
    ],
    ids=["gru-attention-bias", "lstm-first-input-beam"],
)
def test_label_decoder(options, inputs):
    attention = options.get("attention", False)
    shapes = {"scores": (B, C), "predicted": (B, C), "sequence": (B, MAX_LABELS + 1)}
    dtypes = dict(DECODER_OUTPUT_DTYPES)
    if attention:
        shapes["attention"] = (B, MAX_LABELS + 1, 5)
        dtypes["attention"] = "float32"
    kwargs = {"embedding_dim": 6, "hidden_dim": 8, "max_labels": MAX_LABELS, "dropout": 0.1}
    outputs = run_layer_test(
        LabelDecoder,
        {"num_classes": C, **kwargs, **options},
        inputs,
        shapes,
        expected_output_dtype=dtypes,
        # Logits and the decoding run in float32 under mixed precision.
        mixed_precision_output_dtype=dtypes,
        # The traced gradient through the decoding loops takes ~10 s to build;
        # models train the decoder through teacher_force(), in a traced step,
        # in test_models_recurrent's battery.
        fit_eagerly=True,
    )
    sequence = np.asarray(outputs["sequence"])
    assert sequence.min() >= 0 and sequence.max() < C + NUM_SPECIAL
    scores = np.asarray(outputs["scores"])
    assert np.all((scores >= 0) & (scores <= 1))


# --------------------------------------------------------------------------- label_query


def test_positional_embedding_2d():
    feature_map = _normal(B, 3, 4, 6)
    tokens, positions = run_layer_test(
        PositionalEmbedding2D,
        {},
        feature_map,
        # The positions are one table for the whole batch.
        ((B, 12, 6), (1, 12, 6)),
        expected_num_trainable_weights=2,
    )
    np.testing.assert_array_equal(np.asarray(tokens), feature_map.reshape(B, 12, 6))


def test_label_queries():
    run_layer_test(
        LabelQueries,
        {"num_classes": C, "hidden_dim": 6},
        _normal(B, 5, 6),
        (B, C, 6),
        expected_num_trainable_weights=1,
    )


def test_transformer_decoder_layer():
    # Positions are (1, N, D) in the model; the batch of 2 here broadcasts the
    # same way and lets fit() slice every input by the batch.
    run_layer_test(
        TransformerDecoderLayer,
        {"hidden_dim": 8, "num_heads": 2, "ffn_dim": 16, "dropout": 0.1},
        (_normal(B, C, 8), _normal(B, 6, 8, seed=1), _normal(B, 6, 8, seed=2)),
        ((B, C, 8), (B, 2, C, 6)),
    )


def test_per_class_linear():
    run_layer_test(
        PerClassLinear,
        {"num_classes": C},
        _normal(B, C, 6),
        (B, C),
        expected_num_trainable_weights=2,
    )


def test_mean_over_heads():
    weights = _normal(B, 2, C, 6)
    out = run_layer_test(MeanOverHeads, {}, weights, (B, C, 6), expected_num_trainable_weights=0)
    np.testing.assert_allclose(np.asarray(out), weights.mean(1), rtol=1e-6)


# --------------------------------------------------------------------------- embedding


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_label_embedding_similarity(similarity):
    run_layer_test(
        LabelEmbeddingSimilarity,
        {"num_classes": C, "embed_dim": 6, "similarity": similarity},
        _normal(B, 6),
        (B, C),
        expected_num_trainable_weights=1,
    )


def test_label_attention_similarity():
    _, attention = run_layer_test(
        LabelAttentionSimilarity,
        {"num_classes": C, "embed_dim": 6},
        (_normal(B, 5, 6), _normal(B, 5, 6, seed=1)),
        ((B, C), (B, C, 5)),
        expected_num_trainable_weights=1,
    )
    np.testing.assert_allclose(np.asarray(attention).sum(-1), 1.0, rtol=1e-5)


# --------------------------------------------------------------------------- encoders


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((B, 6), (B, 1, 1, 6)), ((B, 5, 6), (B, 5, 1, 6)), ((B, 2, 3, 6), (B, 2, 3, 6))],
    ids=["vector", "sequence", "map"],
)
def test_vector_as_feature_map(shape, expected):
    run_layer_test(
        VectorAsFeatureMap,
        {},
        _normal(*shape),
        expected,
        mixed_precision_output_dtype="float32",  # documented: float32 out
        expected_num_trainable_weights=0,
    )


@pytest.mark.parametrize("prefix", [0, 1], ids=["patches-only", "class-token"])
def test_token_regions(prefix):
    tokens = _normal(B, prefix + 4, 6)
    feature_map, pooled = run_layer_test(
        TokenRegions, {"grid": 2}, tokens, ((B, 2, 2, 6), (B, 6)), expected_num_trainable_weights=0
    )
    np.testing.assert_allclose(np.asarray(feature_map), tokens[:, prefix:].reshape(B, 2, 2, 6))
    expected_pooled = tokens[:, 0] if prefix else tokens.mean(1)
    np.testing.assert_allclose(np.asarray(pooled), expected_pooled, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- base


def test_thresholds():
    scores = np.array([[0.2, 0.5, 0.7, 0.9], [0.6, 0.1, 0.5, 0.0]], "float32")
    predicted = run_layer_test(
        Thresholds,
        {"num_classes": C, "default": 0.5},
        scores,
        (B, C),
        mixed_precision_output_dtype="float32",  # documented: float32 0/1
        expected_num_trainable_weights=0,
        expected_num_non_trainable_weights=1,
    )
    np.testing.assert_array_equal(np.asarray(predicted), scores >= 0.5)


# --------------------------------------------------------------------------- pixel normalisation


def test_pixel_normalization():
    from kerasmlic.models.pixel_normalization import PixelNormalization

    images = np.random.default_rng(0).integers(0, 256, (B, 4, 4, 3)).astype("uint8")
    for init in ({"mode": "imagenet"}, {"mode": "affine", "scale": 2 / 255, "offset": -1.0}):
        out = run_layer_test(
            PixelNormalization,
            init,
            images,
            (B, 4, 4, 3),
            mixed_precision_output_dtype="float32",  # documented: float32 whatever the policy
            expected_num_trainable_weights=0,
        )
    np.testing.assert_allclose(np.asarray(out), images / 127.5 - 1.0, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- the helper itself


class ForgetsItsConfig(keras.layers.Layer):
    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def call(self, x):
        return x[:, : self.units]

    def get_config(self):
        return super().get_config()  # without "units"


@keras.saving.register_keras_serializable(package="kerasmlic_test")
class UnusedWeight(keras.layers.Layer):
    def build(self, input_shape):
        self.scale = self.add_weight(shape=(), initializer="ones", name="scale")
        self.unused = self.add_weight(shape=(), initializer="ones", name="unused")

    def call(self, x):
        return x * ops.cast(self.scale, x.dtype)


@pytest.mark.parametrize(
    ("layer_cls", "kwargs", "shape", "error", "match"),
    [
        # get_config overridden without "units": from_config cannot rebuild the layer.
        (ForgetsItsConfig, {"units": 2}, (B, 2), TypeError, "units"),
        # A trainable weight no output depends on: the fit step leaves it.
        (UnusedWeight, {}, (B, 3), AssertionError, "unused"),
    ],
    ids=["config", "disconnected-weight"],
)
@pytest.mark.filterwarnings("ignore:Gradients do not exist")
def test_helper_catches_a_broken_layer(layer_cls, kwargs, shape, error, match):
    with pytest.raises(error, match=match):
        run_layer_test(
            layer_cls, kwargs, _normal(B, 3), shape, registered_name="kerasmlic_test>UnusedWeight"
        )
