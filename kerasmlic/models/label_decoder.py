"""The recurrent label decoder: one label token per step over the ``C + 3`` vocabulary.

:class:`LabelDecoder` is shared by every recurrent model
(:mod:`kerasmlic.models.recurrent`); its inputs come from
:class:`~kerasmlic.models.decoder_inputs.DecoderInputs`.

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
"""

import keras
import tensorflow as tf
from keras import layers, ops

from kerasmlic.data.sequences import DEFAULT_MAX_LABELS, NUM_SPECIAL
from kerasmlic.models import decoding
from kerasmlic.models.attention import AdditiveAttention
from kerasmlic.models.recurrent_options import cell_class, num_states


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
    :class:`~kerasmlic.models.recurrent.RecurrentModel`).

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
        self.cell = cell_class(cell)(hidden_dim, name="cell")
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
            _, states = self.cell(first, [zeros] * num_states(self.cell_type), training=training)
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
