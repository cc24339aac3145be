"""Recurrent label decoders: ``rnn_hidden``, ``rnn_input``, ``seq2seq``, ``seq2seq_attention``.

Each model is encoder -> decoder inputs -> :class:`LabelDecoder`, which emits
one label token per step (vocabulary of :mod:`kerasmlic.data.sequences`):

- ``rnn_hidden``: the pooled CNN feature, through a dense projection, is the
  decoder's initial state (for an LSTM, ``h`` and ``c`` each get a projection).
- ``rnn_input``: the pooled CNN feature, projected to the label-embedding size,
  is the decoder's first input from a zero state (Show and Tell); the state
  after reading it starts the label decoding.
- ``seq2seq``: the feature map is read as a sequence of H'·W' regions (row
  major, each projected to ``hidden_dim``; maps with more than
  ``max_regions`` regions are average-pooled first) by an encoder RNN; its
  final state starts the decoder.
- ``seq2seq_attention``: as ``seq2seq``, and at every step the decoder attends
  over the encoder states with Bahdanau (additive) attention
  (:class:`AdditiveAttention`); the weights are the ``attention`` output
  ``(B, max_labels + 1, R)`` over the R regions.

Inference (the functional graph: ``model(images)``, ``predict``, export)
decodes in the graph (:mod:`kerasmlic.models.decoding`): greedy or beam
search (ranked with GNMT's length normalisation, ``length_penalty``), no
repeated label, END stops, at most ``max_labels`` labels. Outputs:
``scores``, ``predicted`` (the decoded set), ``sequence`` (tokens after
START), and ``attention`` for ``seq2seq_attention``.

Per-class scores (mAP, top-k), ``class_score``: with ``p_t(c)`` the
probability of class c at step t of the returned sequence (after masking;
steps up to and including its END), the default ``inclusion`` score is
``sum_t p_t(c) * prod_{s<t} (1 - p_s(c) - p_s(END))``: the probability that
c is emitted at some step if at each step the decoder emits c with
``p_t(c)``, stops with ``p_t(END)`` and otherwise goes on as along the
decoded sequence. It is defined for a class the decoder does not emit, and
each step counts as much as the decoder is likely to reach it
(``noisy_or``: ``1 - prod_t (1 - p_t(c))``, END ignored; ``max``: the
highest ``p_t(c)``, the former score).

Auxiliary head (``aux_loss_weight > 0``, default 0.03): a linear
multi-label head on the pooled feature (:class:`LabelPrior`), trained with
binary cross-entropy, whose logits times a learnt gate (starting at 1) are
added to the label tokens' logits at every decoding step. The decoder then
starts from a per-image class ranking, and the encoder gets a direct
multi-label gradient from the first step instead of only through the
recurrent loop (measured in docs/design.md).

Training (``fit``/``evaluate``) uses teacher forcing on the pipeline's
``targets["sequence"]`` with the same masking as decoding
(:mod:`kerasmlic.models.sequence_losses`); ``train_step``/``test_step`` are
overridden so ``fit`` does not decode. With ``label_order="pla"`` each step
first decodes (no gradient) and reorders the targets to the predictions.
Compiled metrics see ``(multi_hot, scores)``: in ``fit`` the scores of the
teacher-forced pass, in ``evaluate`` the decoded scores (as at inference).
"""

import math

import keras
import tensorflow as tf
from keras import layers, ops

from kerasmlic.data.sequences import DEFAULT_MAX_LABELS, LABEL_ORDERS, NUM_SPECIAL
from kerasmlic.errors import UsageError
from kerasmlic.models import decoding, losses
from kerasmlic.models import sequence_losses as sl
from kerasmlic.models.base import MultiLabelModel, split_targets
from kerasmlic.models.encoders import build_encoder, encoder_normalization
from kerasmlic.models.registry import register_model

CELLS = ("gru", "lstm")
DECODINGS = ("greedy", "beam")
MODEL_LABEL_ORDERS = (*LABEL_ORDERS, "pla")
PLA = "pla"
AUX_GATE_INIT = 1.0
"""Initial gate of the auxiliary head's logits into the decoder (see :class:`LabelPrior`)."""
PLA_PIPELINE_ORDER = "dictionary"
"""Order the pipeline builds for ``pla`` models (any fixed order works: the model realigns)."""


def _cell_class(cell):
    return layers.GRUCell if cell == "gru" else layers.LSTMCell


def _num_states(cell):
    return 1 if cell == "gru" else 2


@keras.saving.register_keras_serializable(package="kerasmlic")
class AdditiveAttention(layers.Layer):
    """Bahdanau (additive) attention with learned query and key projections.

    ``score_r = v · tanh(W_q q + W_k m_r + b)``, ``alpha = softmax(score)``,
    ``context = sum_r alpha_r m_r``. ``keras.layers.AdditiveAttention`` has no
    query/key projections, hence this layer. The keys ``W_k m + b`` are
    computed once per image (:meth:`project_keys`) and reused at every step.

    Args:
        units: Size of the projected query/key space.
        **kwargs: Passed to ``keras.layers.Layer``.
    """

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.query_dense = layers.Dense(units, use_bias=False, name="query")
        self.key_dense = layers.Dense(units, name="key")
        self.score_dense = layers.Dense(1, use_bias=False, name="score")

    def build(self, query_shape, memory_shape=None):
        """Create the projections for queries ``(B, Q)`` and memory ``(B, R, M)``."""
        if memory_shape is None:  # build_from_config passes one nested shape
            query_shape, memory_shape = query_shape
        self.query_dense.build(tuple(query_shape))
        self.key_dense.build(tuple(memory_shape))
        self.score_dense.build((None, None, self.units))
        self.built = True

    def project_keys(self, memory):
        """Return the keys ``(B, R, units)`` of memory ``(B, R, M)``."""
        return self.key_dense(memory)

    def attend(self, query, keys, memory):
        """Attend with ``query`` ``(B, Q)`` over precomputed ``keys``.

        Args:
            query: ``(B, Q)`` query (the decoder state).
            keys: ``(B, R, units)`` from :meth:`project_keys`.
            memory: ``(B, R, M)`` values.

        Returns:
            ``(context (B, M), weights (B, R))``.
        """
        query = ops.expand_dims(self.query_dense(query), 1)
        energy = ops.squeeze(self.score_dense(ops.tanh(keys + query)), -1)
        weights = ops.softmax(ops.cast(energy, "float32"), axis=-1)
        # (B, 1, R) @ (B, R, M): a batched matmul, not a (B, R, M) product then a sum.
        context = ops.squeeze(
            ops.matmul(ops.expand_dims(ops.cast(weights, memory.dtype), 1), memory), 1
        )
        return context, weights

    def call(self, query, memory):
        """Return ``(context, weights)`` of ``query`` over ``memory``."""
        return self.attend(query, self.project_keys(memory), memory)

    def get_config(self):
        """Return the layer config."""
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="kerasmlic")
class LabelPrior(layers.Layer):
    """Linear multi-label head on the pooled feature, gated into the decoder.

    Returns ``(logits, gate * logits)``: the head's logits (trained with
    binary cross-entropy) and the per-image label bias the decoder adds to
    its label logits. The scalar ``gate`` starts at ``gate_init`` and is
    learnt by the sequence loss, so the decoder takes as much of the head's
    ranking as helps it.

    Args:
        num_classes: Number of classes C.
        gate_init: Initial gate.
        **kwargs: Passed to ``keras.layers.Layer``.
    """

    def __init__(self, num_classes, gate_init=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.gate_init = gate_init
        self.dense = layers.Dense(num_classes, dtype="float32", name="logits")

    def build(self, input_shape):
        """Create the head and the gate."""
        self.dense.build(tuple(input_shape))
        self.gate = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(self.gate_init),
            name="gate",
            dtype="float32",
        )
        self.built = True

    def call(self, pooled):
        """Return ``(logits, gated logits)``, both ``(B, C)`` float32."""
        logits = ops.cast(self.dense(pooled), "float32")
        return logits, logits * self.gate

    def compute_output_spec(self, pooled):
        """Two ``(B, C)`` float32 tensors."""
        spec = keras.KerasTensor((pooled.shape[0], self.num_classes), "float32")
        return spec, keras.KerasTensor(spec.shape, "float32")

    def get_config(self):
        """Return the layer config."""
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "gate_init": self.gate_init,
        }


@keras.saving.register_keras_serializable(package="kerasmlic")
class LabelDecoder(layers.Layer):
    """A recurrent label decoder over the ``C + 3`` token vocabulary.

    Called on its inputs dict it decodes (greedy or beam search) and returns
    ``{"scores", "predicted", "sequence"}`` (+ ``"attention"``);
    :meth:`teacher_force` runs it on given tokens for training. Both use the
    same embedding, cell, attention and output layers, one cell step per
    ``tf.while_loop`` iteration.

    Inputs dict: ``states`` (list of ``(B, hidden_dim)``, the initial state)
    or ``first_input`` (``(B, embedding_dim)``, read from a zero state before
    START), plus ``memory`` ``(B, R, M)`` when ``attention`` is True, and
    optionally ``label_bias`` ``(B, C)``: per-image logits added to the label
    tokens' logits at every step (the auxiliary head's, see
    :class:`RecurrentModel`).

    Args:
        num_classes: Number of classes C.
        cell: ``"gru"`` or ``"lstm"``.
        embedding_dim: Label-embedding size.
        hidden_dim: Recurrent state size.
        dropout: Dropout rate on the label embeddings and on the cell output.
        max_labels: Maximum decoded labels.
        attention: Attend over ``memory`` at every step.
        beam_width: 1 for greedy decoding, K > 1 for beam search.
        length_penalty: GNMT alpha of the beam ranking
            (:func:`decoding.length_penalty_divisor`; 0 = summed log probability).
        class_score: Per-class score formula, one of ``decoding.CLASS_SCORES``.
        **kwargs: Passed to ``keras.layers.Layer``.
    """

    def __init__(
        self,
        num_classes,
        *,
        cell="gru",
        embedding_dim=256,
        hidden_dim=256,
        dropout=0.0,
        max_labels=DEFAULT_MAX_LABELS,
        attention=False,
        beam_width=1,
        length_penalty=0.0,
        class_score="inclusion",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.cell_type = cell
        self.embedding_dim = embedding_dim
        self.hidden_dim = hidden_dim
        self.dropout = dropout
        self.max_labels = max_labels
        self.use_attention = attention
        self.beam_width = beam_width
        self.length_penalty = length_penalty
        self.class_score = class_score
        vocab = num_classes + NUM_SPECIAL
        self.embedding = layers.Embedding(vocab, embedding_dim, name="embedding")
        self.cell = _cell_class(cell)(hidden_dim, name="cell")
        self.attention = AdditiveAttention(hidden_dim, name="attention") if attention else None
        self.input_dropout = layers.Dropout(dropout, name="input_dropout")
        self.output_dropout = layers.Dropout(dropout, name="output_dropout")
        # float32 logits: the softmax and the decoding run in float32 under mixed precision.
        self.output_dense = layers.Dense(vocab, dtype="float32", name="logits")

    def build(self, input_shape):
        """Build the sublayers (the memory size comes from ``input_shape["memory"]``)."""
        memory_dim = input_shape["memory"][-1] if self.use_attention else 0
        self.embedding.build((None,))
        self.cell.build((None, self.embedding_dim + memory_dim))
        if self.use_attention:
            self.attention.build((None, self.hidden_dim), (None, None, memory_dim))
        self.output_dense.build((None, self.hidden_dim + memory_dim))
        self.built = True

    def _initial(self, inputs, training=None):
        """Return ``(states, context)`` for the loops."""
        if "states" in inputs:
            states = [ops.cast(s, self.compute_dtype) for s in inputs["states"]]
        else:
            first = ops.cast(inputs["first_input"], self.compute_dtype)
            zeros = tf.zeros([tf.shape(first)[0], self.hidden_dim], first.dtype)
            _, states = self.cell(first, [zeros] * _num_states(self.cell_type), training=training)
        context = {}
        if self.use_attention:
            memory = ops.cast(inputs["memory"], self.compute_dtype)
            context["memory"] = (memory, self.attention.project_keys(memory))
        if "label_bias" in inputs:
            # Zero bias on PAD, START and END: the head scores labels only.
            bias = ops.cast(inputs["label_bias"], "float32")
            context["label_bias"] = ops.pad(bias, [[0, 0], [NUM_SPECIAL, 0]])
        return list(states), context or None

    def _cell_step(self, x, states, context, training=None):
        """One cell step: ``(x (B, E), states) -> (output, states, attention|None)``."""
        weights = None
        if self.use_attention:
            memory, keys = context["memory"]
            attended, weights = self.attention.attend(states[0], keys, memory)
            x = ops.concatenate([x, attended], axis=-1)
        output, states = self.cell(x, states, training=training)
        if self.use_attention:
            output = ops.concatenate([output, attended], axis=-1)
        return output, list(states), weights

    def _logits(self, output, context):
        logits = self.output_dense(output)
        if context is not None and "label_bias" in context:
            bias = context["label_bias"]
            if len(logits.shape) == 3:
                bias = bias[:, None, :]
            logits = logits + bias
        return logits

    def _step(self, tokens, states, context):
        """Decoding step function (see :func:`decoding.decode`)."""
        output, states, weights = self._cell_step(self.embedding(tokens), states, context)
        return self._logits(output, context), states, weights

    def call(self, inputs, training=None):
        """Decode label sequences.

        Args:
            inputs: The inputs dict (see the class docstring).
            training: Unused (decoding is inference).

        Returns:
            ``{"scores", "predicted", "sequence"}`` and ``"attention"`` with attention.
        """
        states, context = self._initial(inputs)
        result = decoding.decode(
            self._step,
            states,
            num_classes=self.num_classes,
            max_labels=self.max_labels,
            beam_width=self.beam_width,
            context=context,
            length_penalty=self.length_penalty,
            class_score=self.class_score,
        )
        outputs = {
            "scores": result["scores"],
            "predicted": result["multi_hot"],
            "sequence": result["sequence"],
        }
        if self.use_attention:
            outputs["attention"] = result["attention"]
        return outputs

    def decode_exact_lengths(self, inputs, lengths):
        """Greedy decoding of exactly ``lengths`` labels per example (for orderless training).

        Args:
            inputs: The inputs dict.
            lengths: ``(B,)`` int label counts.

        Returns:
            ``(tokens (B, max_labels + 1), class_probs (B, max_labels + 1, C))``.
        """
        states, context = self._initial(inputs, training=False)
        result = decoding.decode(
            self._step,
            states,
            num_classes=self.num_classes,
            max_labels=self.max_labels,
            beam_width=1,
            context=context,
            lengths=lengths,
            return_step_probs=True,
        )
        return result["sequence"], result["step_probs"][..., NUM_SPECIAL:]

    def teacher_force(self, inputs, tokens, training=None):
        """Run the decoder on given input tokens.

        Args:
            inputs: The inputs dict.
            tokens: ``(B, T)`` int input tokens (``[START, t1, ...]``).
            training: Dropout on.

        Returns:
            ``(logits (B, T, V) float32, attention (B, T, R) or None)``.
        """
        states, context = self._initial(inputs, training=training)
        x = self.input_dropout(self.embedding(tokens), training=training)
        outputs, weights = decoding.run_steps(
            lambda x_t, s, c: self._cell_step(x_t, s, c, training=training), states, x, context
        )
        logits = self._logits(self.output_dropout(outputs, training=training), context)
        return logits, weights

    def get_config(self):
        """Return the layer config."""
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "cell": self.cell_type,
            "embedding_dim": self.embedding_dim,
            "hidden_dim": self.hidden_dim,
            "dropout": self.dropout,
            "max_labels": self.max_labels,
            "attention": self.use_attention,
            "beam_width": self.beam_width,
            "length_penalty": self.length_penalty,
            "class_score": self.class_score,
        }


class _Parts:
    """Plain holder of the layers the training steps call directly.

    Not a Keras-tracked container (the layers are tracked once, through the
    functional graph), so saving sees each layer once.
    """

    def __init__(self, encoder, decoder_inputs, decoder):
        self.encoder = encoder
        self.decoder_inputs = decoder_inputs
        self.decoder = decoder


def _check_options(num_classes, options):
    """Raise UsageError for an invalid recurrent-model option value."""
    for name in ("embedding_dim", "hidden_dim", "max_labels", "beam_width", "max_regions"):
        value = options[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"option {name} must be a positive integer, got {value!r}")
    for name, choices in (
        ("class_score", decoding.CLASS_SCORES),
        ("cell", CELLS),
        ("decoding", DECODINGS),
        ("label_order", MODEL_LABEL_ORDERS),
    ):
        if options[name] not in choices:
            raise UsageError(
                f"option {name} must be one of {', '.join(choices)}, got {options[name]!r}"
            )
    dropout = options["dropout"]
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise UsageError(f"option dropout must be in [0, 1), got {dropout!r}")
    for name in ("length_penalty", "aux_loss_weight"):
        value = options[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise UsageError(f"option {name} must be a number >= 0, got {value!r}")
    if options["beam_width"] > num_classes + 1:
        raise UsageError(
            f"option beam_width must be at most num_classes + 1 = {num_classes + 1}, "
            f"got {options['beam_width']}"
        )


def _distribution_unscaled(loss):
    """The loss as reported: a per-replica loss times the replicas (as Keras' trainer)."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss * replicas if replicas > 1 else loss


class RecurrentModel(MultiLabelModel):
    """Shared graph and training of the recurrent decoders (not registered itself).

    Subclasses set ``variant``: ``"hidden"``, ``"input"``, ``"seq2seq"`` or
    ``"attention"``.

    Args:
        num_classes: Number of classes C.
        image_size: Square input size in pixels.
        encoder: Encoder name (see ``encoders.encoder_names``).
        encoder_weights: ``"imagenet"``, a ``.weights.h5`` path, or None.
        freeze_encoder: Freeze the encoder.
        cell: ``"gru"`` or ``"lstm"``.
        embedding_dim: Label-embedding size.
        hidden_dim: Recurrent state size (decoder, and region encoder). The
            default 256 keeps a training step within 1.3x of ``bce`` on a
            small encoder (benchmarks/train_step.py); with a large encoder
            such as ResNet-50 the decoder's share is small and 512 costs little.
        dropout: Dropout rate on label embeddings and decoder outputs.
        max_labels: Maximum decoded labels; must equal the pipeline's
            ``max_labels`` (sequences have ``max_labels + 2`` tokens).
        label_order: Training order of the target labels: a pipeline order
            (``frequent_first``, ``rare_first``, ``dictionary``,
            ``large_first``, ``random``) or ``pla`` (orderless: aligned to the
            predictions each step; the pipeline then builds
            :data:`PLA_PIPELINE_ORDER`).
        decoding: ``"greedy"`` or ``"beam"``.
        beam_width: Beams for ``decoding="beam"`` (at most C + 1).
        length_penalty: Beam search ranks hypotheses by
            ``log P / ((5 + n) / 6) ** length_penalty`` with n their tokens
            (labels + END), GNMT's length normalisation; 0 ranks by ``log P``,
            which favours short label sets. Default 2, measured
            (docs/design.md): the best label-set F1 of beam search; label
            sequences are short, so GNMT's usual 0.6-1 barely lengthens them.
        aux_loss_weight: Weight of an auxiliary binary cross-entropy (summed
            over classes) on a linear multi-label head over the pooled
            feature, whose gated logits are added to the decoder's label
            logits at every step (:class:`LabelPrior`), so the decoder starts
            from a per-image class ranking and the encoder gets a direct
            multi-label gradient from the first step; 0 removes the head (the
            study's plain decoders). Default 0.03, measured (docs/design.md):
            weight 1 swamps the sequence loss of the attention decoder.
        class_score: Per-class score of the decoded sequence: ``inclusion``
            (default; the probability that the decoder emits the class before
            it stops), ``noisy_or`` or ``max`` (the former score); see
            :mod:`kerasmlic.models.decoding`.
        max_regions: ``seq2seq`` models: a feature map with more regions is
            average-pooled until it has at most this many (default 49: a
            7x7 map, a 224-px image on a stride-32 backbone, is read whole).
        name: Model name.
        **kwargs: Passed to ``keras.Model``.
    """

    uses_sequences = True
    variant = None

    def __init__(
        self,
        num_classes,
        image_size,
        *,
        encoder="tiny",
        encoder_weights=None,
        freeze_encoder=False,
        cell="gru",
        embedding_dim=256,
        hidden_dim=256,
        dropout=0.1,
        max_labels=DEFAULT_MAX_LABELS,
        label_order="frequent_first",
        decoding="greedy",
        beam_width=3,
        max_regions=49,
        length_penalty=2.0,
        aux_loss_weight=0.03,
        class_score="inclusion",
        name=None,
        **kwargs,
    ):
        _check_options(
            num_classes,
            {
                "cell": cell,
                "embedding_dim": embedding_dim,
                "hidden_dim": hidden_dim,
                "dropout": dropout,
                "max_labels": max_labels,
                "label_order": label_order,
                "decoding": decoding,
                "beam_width": beam_width,
                "max_regions": max_regions,
                "length_penalty": length_penalty,
                "aux_loss_weight": aux_loss_weight,
                "class_score": class_score,
            },
        )
        enc = build_encoder(
            encoder, image_size, weights=encoder_weights, trainable=not freeze_encoder
        )
        decoder_inputs = _DecoderInputs(
            self.variant,
            cell,
            embedding_dim,
            hidden_dim,
            max_regions,
            num_classes=num_classes if aux_loss_weight else None,
        )
        decoder = LabelDecoder(
            num_classes,
            cell=cell,
            embedding_dim=embedding_dim,
            hidden_dim=hidden_dim,
            dropout=dropout,
            max_labels=max_labels,
            attention=self.variant == "attention",
            beam_width=beam_width if decoding == "beam" else 1,
            length_penalty=length_penalty,
            class_score=class_score,
            name="decoder",
        )
        images = keras.Input((image_size, image_size, 3), name="images")
        feature_map, pooled = enc(images)
        outputs = decoder(decoder_inputs(feature_map, pooled))
        super().__init__(inputs=images, outputs=outputs, name=name or self.registry_name, **kwargs)
        self._parts = _Parts(enc, decoder_inputs, decoder)
        self._normalization = encoder_normalization(encoder)
        self._set_config(
            num_classes=num_classes,
            image_size=image_size,
            encoder=encoder,
            encoder_weights=encoder_weights,
            freeze_encoder=freeze_encoder,
            cell=cell,
            embedding_dim=embedding_dim,
            hidden_dim=hidden_dim,
            dropout=dropout,
            max_labels=max_labels,
            label_order=label_order,
            decoding=decoding,
            beam_width=beam_width,
            max_regions=max_regions,
            length_penalty=length_penalty,
            aux_loss_weight=aux_loss_weight,
            class_score=class_score,
        )

    @property
    def max_labels(self):
        """Label capacity; the pipeline's sequences must have ``max_labels + 2`` tokens."""
        return self._kerasmlic_config["max_labels"]

    @property
    def region_grid(self):
        """``(rows, cols)`` of the regions ``seq2seq`` models read (and attend over), else None.

        The ``attention`` output's last axis is these regions, row major.
        """
        return self._parts.decoder_inputs.grid

    @property
    def label_order(self):
        """The configured label order (``pla`` for orderless training)."""
        return self._kerasmlic_config["label_order"]

    @property
    def pipeline_label_order(self):
        """The ``label_order`` to give the data pipeline for this model."""
        order = self.label_order
        return PLA_PIPELINE_ORDER if order == PLA else order

    def _decoder_inputs(self, images, training):
        feature_map, pooled = self._parts.encoder(images, training=training)
        return self._parts.decoder_inputs(feature_map, pooled, training=training)

    def _target_sequence(self, y):
        multi_hot, sequence = split_targets(y)
        if sequence is None:
            return sl.sequence_from_multi_hot(multi_hot, self.max_labels)
        length = sequence.shape[-1]
        if length is not None and length != self.max_labels + 2:
            raise UsageError(
                f"model {self.name!r} has max_labels={self.max_labels} (sequences of "
                f"{self.max_labels + 2} tokens) but the dataset's sequences have {length}; "
                f"build the dataset with max_labels={self.max_labels}"
            )
        return tf.cast(sequence, tf.int32)

    def teacher_forced(self, x, y, training=False):
        """Run the teacher-forced pass (with PLA alignment if configured).

        Args:
            x: Images ``(B, S, S, 3)``.
            y: The pipeline's targets (multi-hot or ``{"multi_hot", "sequence"}``;
                without a sequence, labels go in class-index order).
            training: Dropout and BatchNorm in training mode.

        Returns:
            ``(y_pred, decoder_inputs)``: ``y_pred`` has ``logits`` (B, T, V),
            ``targets`` (B, T) (the sequence after START), ``allowed``
            (B, T, V) and ``scores`` (B, C) (highest teacher-forced
            probability at any target step).
        """
        sequence = self._target_sequence(y)
        inputs = self._decoder_inputs(x, training)
        if self.label_order == PLA:
            frozen = tf.nest.map_structure(tf.stop_gradient, inputs)
            lengths = tf.reduce_sum(tf.cast(sequence >= NUM_SPECIAL, tf.int32), axis=1)
            predicted, class_probs = self._parts.decoder.decode_exact_lengths(frozen, lengths)
            sequence = tf.stop_gradient(sl.align_to_predictions(predicted, class_probs, sequence))
        targets = sequence[:, 1:]
        logits, _ = self._parts.decoder.teacher_force(inputs, sequence[:, :-1], training=training)
        allowed = sl.teacher_forcing_mask(targets, self._kerasmlic_config["num_classes"])
        y_pred = {
            "logits": logits,
            "targets": targets,
            "allowed": allowed,
            "scores": sl.teacher_forced_scores(
                logits, targets, allowed, self._kerasmlic_config["class_score"]
            ),
        }
        if "aux_logits" in inputs:
            y_pred["aux_logits"] = inputs["aux_logits"]
        return y_pred, inputs

    def multilabel_loss(self, y, y_pred, sample_weight=None):
        """Masked token cross-entropy of the teacher-forced pass.

        Args:
            y: Targets (unused: the targets travel in ``y_pred``, possibly realigned).
            y_pred: The dict from :meth:`teacher_forced`.
            sample_weight: Optional ``(B,)`` weights.

        Returns:
            Scalar float32 loss.

        Raises:
            ValueError: ``y_pred`` is an inference output (no teacher-forced logits).
        """
        if "logits" not in y_pred:
            raise ValueError(
                "recurrent models compute their loss on teacher_forced() outputs, "
                "not on decoded predictions"
            )
        loss = sl.sequence_loss(
            y_pred["logits"], y_pred["targets"], y_pred["allowed"], sample_weight
        )
        weight = self._kerasmlic_config["aux_loss_weight"]
        if weight and "aux_logits" in y_pred:
            multi_hot, _ = split_targets(y)
            aux = losses.binary_crossentropy(multi_hot, y_pred["aux_logits"])
            loss = loss + weight * losses.reduce_mean(aux, sample_weight)
        return loss

    def make_train_function(self, force=False):
        """Build the optimizer for the trainable weights, then Keras' train function.

        Keras otherwise creates the optimizer's variables while tracing the
        first train step, which makes ``tf.function`` trace it twice; the
        train step (a teacher-forced loop and its gradient) is the costliest
        trace of these models.
        """
        if self.optimizer is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)
        return super().make_train_function(force=force)

    def train_step(self, data):
        """One teacher-forced training step (mirrors Keras' TensorFlow trainer)."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred, _ = self.teacher_forced(x, y, training=True)
            loss = self._compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
            )
            self._loss_tracker.update_state(
                _distribution_unscaled(loss), sample_weight=tf.shape(x)[0]
            )
            if self.optimizer is not None:
                loss = self.optimizer.scale_loss(loss)
        trainable = self.trainable_weights
        gradients = tape.gradient(loss, trainable)
        self.optimizer.apply_gradients(zip(gradients, trainable, strict=True))
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def test_step(self, data):
        """Teacher-forced loss; compiled metrics on the decoded scores (as at inference)."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_pred, inputs = self.teacher_forced(x, y, training=False)
        loss = self._compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=False
        )
        self._loss_tracker.update_state(_distribution_unscaled(loss), sample_weight=tf.shape(x)[0])
        decoded = self._parts.decoder(inputs, training=False)
        return self.compute_metrics(x, y, decoded, sample_weight=sample_weight)


def region_pool_size(height, width, max_regions):
    """Return the average-pooling size that brings a feature map to at most ``max_regions``.

    The region encoder runs one step per region, so its cost and the length
    of the sequence it must remember grow with the map; a 448-px image on a
    stride-32 backbone gives 196 regions, pooled by 2 to 49.

    Args:
        height: Feature-map height H'.
        width: Feature-map width W'.
        max_regions: The cap.

    Returns:
        The smallest pool size p >= 1 with ``ceil(H'/p) * ceil(W'/p) <= max_regions``.
    """
    pool = 1
    while math.ceil(height / pool) * math.ceil(width / pool) > max_regions:
        pool += 1
    return pool


class _DecoderInputs:
    """Maps the encoder outputs to the :class:`LabelDecoder` inputs, per variant.

    A plain callable (not a Layer) holding the variant's layers; it builds the
    functional graph in ``__init__`` and is called again on tensors in the
    training steps, so both paths share the layers.

    Args:
        variant: ``"hidden"``, ``"input"``, ``"seq2seq"`` or ``"attention"``.
        cell: ``"gru"`` or ``"lstm"``.
        embedding_dim: Label-embedding size.
        hidden_dim: Recurrent state size.
        max_regions: Cap on the regions the region encoder reads (see
            :func:`region_pool_size`).
        num_classes: C for an auxiliary linear head on the pooled feature
            (its logits are the decoder's ``label_bias``), or None.
    """

    def __init__(self, variant, cell, embedding_dim, hidden_dim, max_regions, num_classes=None):
        self.variant = variant
        self.aux_head = (
            None
            if num_classes is None
            else LabelPrior(num_classes, AUX_GATE_INIT, dtype="float32", name="aux_logits")
        )
        self.max_regions = max_regions
        self.region_pool = None
        self.grid = None
        if variant == "hidden":
            names = ("init_h", "init_c")[: _num_states(cell)]
            self.projections = [
                layers.Dense(hidden_dim, activation="tanh", name=name) for name in names
            ]
        elif variant == "input":
            self.image_embedding = layers.Dense(embedding_dim, name="image_embedding")
        else:
            self.region_projection = layers.Dense(
                hidden_dim, activation="relu", name="region_projection"
            )
            rnn = layers.GRU if cell == "gru" else layers.LSTM
            self.region_encoder = rnn(
                hidden_dim,
                return_sequences=variant == "attention",
                return_state=True,
                name="region_encoder",
            )

    def __call__(self, feature_map, pooled, training=None):
        """Return the decoder inputs dict for one batch."""
        inputs = self._variant_inputs(feature_map, pooled, training)
        if self.aux_head is not None:
            inputs["aux_logits"], inputs["label_bias"] = self.aux_head(pooled)
        return inputs

    def _variant_inputs(self, feature_map, pooled, training):
        if self.variant == "hidden":
            return {"states": [dense(pooled) for dense in self.projections]}
        if self.variant == "input":
            return {"first_input": self.image_embedding(pooled)}
        _, height, width, _ = feature_map.shape
        pool = region_pool_size(height, width, self.max_regions)
        if pool > 1:
            if self.region_pool is None:  # created on the functional build, reused after
                self.region_pool = layers.AveragePooling2D(pool, padding="same", name="region_pool")
            feature_map = self.region_pool(feature_map)
        _, height, width, channels = feature_map.shape
        self.grid = (height, width)
        regions = ops.reshape(feature_map, (-1, height * width, channels))
        encoded = self.region_encoder(self.region_projection(regions), training=training)
        inputs = {"states": list(encoded[1:])}
        if self.variant == "attention":
            inputs["memory"] = encoded[0]
        return inputs


@register_model("rnn_hidden")
class RNNHiddenModel(RecurrentModel):
    """CNN feature initialises the recurrent state; the decoder emits one label per step.

    Options: see :class:`RecurrentModel`.
    """

    variant = "hidden"


@register_model("rnn_input")
class RNNInputModel(RecurrentModel):
    """CNN feature is the decoder's first input (Show and Tell).

    Options: see :class:`RecurrentModel`.
    """

    variant = "input"


@register_model("seq2seq")
class Seq2SeqModel(RecurrentModel):
    """An encoder RNN reads the feature-map regions; its final state starts the decoder.

    Options: see :class:`RecurrentModel`.
    """

    variant = "seq2seq"


@register_model("seq2seq_attention")
class Seq2SeqAttentionModel(RecurrentModel):
    """seq2seq with Bahdanau attention over the encoder states at every decoding step.

    Outputs ``attention`` ``(B, max_labels + 1, H'·W')`` besides the common ones.
    Options: see :class:`RecurrentModel`.
    """

    variant = "attention"
