"""Recurrent label decoders: ``rnn_hidden``, ``rnn_input``, ``seq2seq``, ``seq2seq_attention``.

Each model is the encoder, the recurrent head (:class:`RecurrentHead`: decoder
inputs -> :class:`LabelDecoder`, which emits one label token per step over
the vocabulary of :mod:`kerasmlic.data.sequences`) and the sequence loss
(:class:`~kerasmlic.models.sequence_losses.SequenceLoss`); the variants
differ in the decoder inputs:

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

Inference decodes in the graph (greedy or beam search; per-class scores
``class_score``): see :mod:`kerasmlic.models.label_decoder`. The auxiliary
head (``aux_loss_weight > 0``, default 0.03) adds a gated linear multi-label
head's logits to the decoder's label logits: see
:mod:`kerasmlic.models.label_prior`.

Training (``fit``/``evaluate``) uses teacher forcing on the pipeline's
``targets["sequence"]`` with the same masking as decoding
(:mod:`kerasmlic.models.sequence_losses`); ``train_step``/``test_step`` are
overridden so ``fit`` does not decode. With ``label_order="pla"`` each step
first decodes (no gradient) and reorders the targets to the predictions.
Compiled metrics see ``(multi_hot, scores)``: in ``fit`` the scores of the
teacher-forced pass, in ``evaluate`` the decoded scores (as at inference).

The parts live in their own modules (:mod:`~kerasmlic.models.attention`,
:mod:`~kerasmlic.models.label_prior`, :mod:`~kerasmlic.models.label_decoder`,
:mod:`~kerasmlic.models.decoder_inputs`,
:mod:`~kerasmlic.models.recurrent_options`); their public names are
re-exported here, so ``from kerasmlic.models.recurrent import LabelDecoder``
keeps working.
"""

import keras
import tensorflow as tf

from kerasmlic.data.sequences import DEFAULT_MAX_LABELS, NUM_SPECIAL
from kerasmlic.errors import UsageError
from kerasmlic.models import sequence_losses as sl
from kerasmlic.models.attention import AdditiveAttention as AdditiveAttention
from kerasmlic.models.base import MultiLabelModel, split_targets
from kerasmlic.models.decoder_inputs import AUX_GATE_INIT as AUX_GATE_INIT
from kerasmlic.models.decoder_inputs import DecoderInputs
from kerasmlic.models.decoder_inputs import region_pool_size as region_pool_size
from kerasmlic.models.head import Head
from kerasmlic.models.label_decoder import LabelDecoder
from kerasmlic.models.label_prior import LabelPrior as LabelPrior
from kerasmlic.models.recurrent_options import CELLS as CELLS
from kerasmlic.models.recurrent_options import DECODINGS as DECODINGS
from kerasmlic.models.recurrent_options import MODEL_LABEL_ORDERS as MODEL_LABEL_ORDERS
from kerasmlic.models.recurrent_options import PLA, PLA_PIPELINE_ORDER, check_options
from kerasmlic.models.registry import register_model


def _distribution_unscaled(loss):
    """The loss as reported: a per-replica loss times the replicas (as Keras' trainer)."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss * replicas if replicas > 1 else loss


class RecurrentHead(Head):
    """Decoder inputs of one variant, then the recurrent :class:`LabelDecoder`.

    Outputs (decoded in the graph): ``scores``, ``predicted``, ``sequence``,
    and ``attention`` for the ``"attention"`` variant. After it is built,
    ``decoder_inputs`` (:class:`DecoderInputs`) and ``decoder`` are what the
    model's teacher-forced training steps call.

    Args:
        num_classes: Number of classes C.
        variant: ``"hidden"``, ``"input"``, ``"seq2seq"`` or ``"attention"``
            (fixed by the model class, not an option).
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
        max_regions: ``seq2seq`` variants: a feature map with more regions is
            average-pooled until it has at most this many (default 49: a
            7x7 map, a 224-px image on a stride-32 backbone, is read whole).
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
            weight 1 swamps the sequence loss of the attention decoder. The
            loss part (:class:`~kerasmlic.models.sequence_losses.SequenceLoss`)
            takes the same option.
        class_score: Per-class score of the decoded sequence: ``inclusion``
            (default; the probability that the decoder emits the class before
            it stops), ``noisy_or`` or ``max`` (the former score); see
            :mod:`kerasmlic.models.decoding`.
    """

    def __init__(
        self,
        num_classes,
        variant,
        *,
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
    ):
        options = {
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
        }
        check_options(num_classes, options)
        super().__init__(num_classes)
        self.variant = variant
        for option, value in options.items():
            setattr(self, option, value)
        self.decoder_inputs = self.decoder = None

    def __call__(self, feature_map, pooled):
        """Build the decoder inputs and the decoder; return the decoded outputs."""
        self.decoder_inputs = DecoderInputs(
            self.variant,
            self.cell,
            self.embedding_dim,
            self.hidden_dim,
            self.max_regions,
            num_classes=self.num_classes if self.aux_loss_weight else None,
        )
        self.decoder = LabelDecoder(
            self.num_classes,
            cell=self.cell,
            embedding_dim=self.embedding_dim,
            hidden_dim=self.hidden_dim,
            dropout=self.dropout,
            max_labels=self.max_labels,
            attention=self.variant == "attention",
            beam_width=self.beam_width if self.decoding == "beam" else 1,
            length_penalty=self.length_penalty,
            class_score=self.class_score,
            name="decoder",
        )
        return self.decoder(self.decoder_inputs(feature_map, pooled))


class RecurrentModel(MultiLabelModel):
    """Shared training of the recurrent decoders (not registered itself).

    Subclasses set ``head_args = {"variant": ...}``. Options: the encoder's
    (:class:`~kerasmlic.models.base.MultiLabelModel`) and
    :class:`RecurrentHead`'s.
    """

    head_cls = RecurrentHead
    loss_cls = sl.SequenceLoss
    uses_sequences = True

    @property
    def max_labels(self):
        """Label capacity; the pipeline's sequences must have ``max_labels + 2`` tokens."""
        return self.head.max_labels

    @property
    def region_grid(self):
        """``(rows, cols)`` of the regions ``seq2seq`` models read (and attend over), else None.

        The ``attention`` output's last axis is these regions, row major.
        """
        return self.head.decoder_inputs.grid

    @property
    def label_order(self):
        """The configured label order (``pla`` for orderless training)."""
        return self.head.label_order

    @property
    def pipeline_label_order(self):
        """The ``label_order`` to give the data pipeline for this model."""
        order = self.label_order
        return PLA_PIPELINE_ORDER if order == PLA else order

    def _decoder_inputs(self, images, training):
        feature_map, pooled = self.encoder(images, training=training)
        return self.head.decoder_inputs(feature_map, pooled, training=training)

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
            predicted, class_probs = self.head.decoder.decode_exact_lengths(frozen, lengths)
            sequence = tf.stop_gradient(sl.align_to_predictions(predicted, class_probs, sequence))
        targets = sequence[:, 1:]
        logits, _ = self.head.decoder.teacher_force(inputs, sequence[:, :-1], training=training)
        allowed = sl.teacher_forcing_mask(targets, self.head.num_classes)
        y_pred = {
            "logits": logits,
            "targets": targets,
            "allowed": allowed,
            "scores": sl.teacher_forced_scores(logits, targets, allowed, self.head.class_score),
        }
        if "aux_logits" in inputs:
            y_pred["aux_logits"] = inputs["aux_logits"]
        return y_pred, inputs

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
        decoded = self.head.decoder(inputs, training=False)
        return self.compute_metrics(x, y, decoded, sample_weight=sample_weight)


@register_model("rnn_hidden")
class RNNHiddenModel(RecurrentModel):
    """CNN feature initialises the recurrent state; the decoder emits one label per step.

    Options: see :class:`RecurrentHead`.
    """

    head_args = {"variant": "hidden"}


@register_model("rnn_input")
class RNNInputModel(RecurrentModel):
    """CNN feature is the decoder's first input (Show and Tell).

    Options: see :class:`RecurrentHead`.
    """

    head_args = {"variant": "input"}


@register_model("seq2seq")
class Seq2SeqModel(RecurrentModel):
    """An encoder RNN reads the feature-map regions; its final state starts the decoder.

    Options: see :class:`RecurrentHead`.
    """

    head_args = {"variant": "seq2seq"}


@register_model("seq2seq_attention")
class Seq2SeqAttentionModel(RecurrentModel):
    """seq2seq with Bahdanau attention over the encoder states at every decoding step.

    Outputs ``attention`` ``(B, max_labels + 1, H'·W')`` besides the common ones.
    Options: see :class:`RecurrentHead`.
    """

    head_args = {"variant": "attention"}
