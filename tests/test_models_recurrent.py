"""The recurrent decoders: shared battery, learning, decoding behaviour, orderless training."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers_models import learns_tiny_task, run_model_battery, tiny_dataset

from kerasmlic.data.sequences import END, NUM_SPECIAL, PAD, START
from kerasmlic.errors import UsageError
from kerasmlic.models import sequence_losses as sl
from kerasmlic.models.recurrent import AUX_GATE_INIT, RecurrentHead, region_pool_size
from kerasmlic.models.registry import build_model

# Small enough for 2 CPU cores; max_labels matches the helper datasets (4).
TINY = {"max_labels": 4, "hidden_dim": 32, "embedding_dim": 16}
NUM_CLASSES = 5
IMAGE_SIZE = 32

# Each model once in the default run, spreading the options over them (cell,
# decoding, orderless training, XLA, mixed precision); every model with every
# check in the slow run.
BATTERY = [
    ("rnn_hidden", {}, {"mixed_precision": False}),
    ("rnn_input", {"cell": "lstm"}, {"jit_compile": False}),
    ("seq2seq", {"label_order": "pla"}, {"jit_compile": False, "mixed_precision": False}),
    ("seq2seq_attention", {"decoding": "beam", "beam_width": 3}, {}),
]
SLOW_BATTERY = [
    ("rnn_hidden", {"cell": "lstm", "decoding": "beam"}),
    ("rnn_input", {"cell": "gru", "label_order": "pla"}),
    ("seq2seq", {"cell": "lstm"}),
    ("seq2seq_attention", {"cell": "lstm", "label_order": "pla"}),
]


@pytest.mark.parametrize(("name", "options", "checks"), BATTERY, ids=[b[0] for b in BATTERY])
def test_battery(name, options, checks):
    result = run_model_battery(name, **TINY, **options, **checks)
    assert result["losses"][-1] < result["losses"][0]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "options"), SLOW_BATTERY, ids=[b[0] for b in SLOW_BATTERY])
def test_battery_full(name, options):
    run_model_battery(name, **TINY, **options)


# Chance mAP on the tiny task is about the label frequency (~0.45).
LEARN_THRESHOLD = 0.8
LEARN = [("rnn_hidden", {}), ("seq2seq_attention", {"cell": "lstm"})]
SLOW_LEARN = [("rnn_input", {}), ("seq2seq", {}), ("rnn_hidden", {"label_order": "pla"})]


def _learn(name, options):
    options = {**TINY, "hidden_dim": 64, "embedding_dim": 32, **options}
    return learns_tiny_task(name, epochs=4, num_train=128, **options)


@pytest.mark.parametrize(("name", "options"), LEARN, ids=[n for n, _ in LEARN])
def test_learns_tiny_task(name, options):
    assert _learn(name, options) > LEARN_THRESHOLD


@pytest.mark.slow
@pytest.mark.parametrize(("name", "options"), SLOW_LEARN, ids=[n for n, _ in SLOW_LEARN])
def test_learns_tiny_task_slow(name, options):
    assert _learn(name, options) > LEARN_THRESHOLD


def _model(name, **options):
    keras.utils.set_random_seed(0)
    return build_model(name, num_classes=NUM_CLASSES, image_size=IMAGE_SIZE, **{**TINY, **options})


def _images(n=8, seed=1):
    return next(iter(tiny_dataset(n, seed=seed, batch_size=n)))[0]


def _discourage_end(model, bias=-4.0):
    """Make END unlikely so decoding runs long (exercises the no-repeat mask)."""
    kernel, b = model.get_layer("decoder").output_dense.get_weights()
    b[END] = bias
    model.get_layer("decoder").output_dense.set_weights([kernel, b])


def _check_sequences(sequence, predicted, max_labels):
    for row, hot in zip(sequence, predicted, strict=True):
        assert END in row, row
        end = list(row).index(END)
        labels = row[:end]
        assert end <= max_labels
        assert np.all(labels >= NUM_SPECIAL) and len(set(labels)) == len(labels), row
        assert np.all(row[end + 1 :] == PAD), row
        np.testing.assert_array_equal(np.flatnonzero(hot), np.sort(labels - NUM_SPECIAL))


@pytest.mark.parametrize("decoding", ["greedy", "beam"])
def test_attention_output_and_no_repeats(decoding):
    model = _model("seq2seq_attention", decoding=decoding, beam_width=4)
    _discourage_end(model, bias=-2.0)
    out = {k: v.numpy() for k, v in model(_images(), training=False).items()}
    steps = TINY["max_labels"] + 1
    assert out["sequence"].shape == (8, steps)
    # The tiny encoder maps 32 px to a 4x4 feature map: 16 regions.
    assert out["attention"].shape == (8, steps, 16)
    _check_sequences(out["sequence"], out["predicted"], TINY["max_labels"])
    lengths = [list(row).index(END) + 1 for row in out["sequence"]]  # steps incl. END
    assert max(lengths) > 2  # decoding did run several steps
    for att, length in zip(out["attention"], lengths, strict=True):
        np.testing.assert_allclose(att[:length].sum(axis=-1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(att[length:], 0.0)


def _sequence_log_prob(model, images, sequence):
    """Log probability and per-class scores of given sequences (teacher forcing)."""
    full = np.concatenate([np.full((len(sequence), 1), START), sequence], axis=1)
    y = {"multi_hot": np.zeros((len(sequence), NUM_CLASSES), np.float32), "sequence": full}
    y_pred, _ = model.teacher_forced(images, y, training=False)
    logits = tf.where(y_pred["allowed"], y_pred["logits"], -1e9)
    log_probs = tf.nn.log_softmax(logits).numpy()
    targets = y_pred["targets"].numpy()
    token_lp = np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    valid = targets != PAD
    return (token_lp * valid).sum(1), log_probs, y_pred["scores"].numpy()


def test_greedy_and_beam_agree_with_teacher_forcing():
    images = _images()
    greedy = _model("rnn_hidden", cell="lstm")
    greedy.compile(optimizer=keras.optimizers.Adam(3e-3))
    # Targets without sequences: the model orders labels by class index itself.
    greedy.fit(tiny_dataset(32, batch_size=8), epochs=1, verbose=0)
    # Summed log probability (no length penalty): beam search must beat greedy on it.
    beam = _model("rnn_hidden", cell="lstm", decoding="beam", beam_width=4, length_penalty=0.0)
    beam.set_weights(greedy.get_weights())
    _discourage_end(greedy, -1.0)
    _discourage_end(beam, -1.0)
    g = {k: v.numpy() for k, v in greedy(images, training=False).items()}
    b = {k: v.numpy() for k, v in beam(images, training=False).items()}
    _check_sequences(b["sequence"], b["predicted"], TINY["max_labels"])
    g_lp, g_steps, g_scores = _sequence_log_prob(greedy, images, g["sequence"])
    b_lp, _, b_scores = _sequence_log_prob(greedy, images, b["sequence"])
    # Each greedy token is the argmax of the teacher-forced (masked) distribution.
    for row, steps in zip(g["sequence"], g_steps, strict=True):
        end = list(row).index(END)
        np.testing.assert_array_equal(steps[: end + 1].argmax(-1), row[: end + 1])
    # Decoded scores = 1 - prod_t (1 - p_t(c)) along the sequence, as teacher forcing.
    np.testing.assert_allclose(g["scores"], g_scores, atol=1e-5)
    np.testing.assert_allclose(b["scores"], b_scores, atol=1e-5)
    # Beam search finds sequences at least as probable as greedy's here, better somewhere.
    assert np.all(b_lp >= g_lp - 1e-4), (b_lp, g_lp)
    assert np.any(b_lp > g_lp + 1e-3) or np.array_equal(b["sequence"], g["sequence"])


def test_aux_head_feeds_decoder_and_adds_bce():
    images = _images(4)
    targets = next(iter(tiny_dataset(4, seed=1, batch_size=4, with_sequences=True, max_labels=4)))[
        1
    ]
    plain = _model("rnn_hidden", aux_loss_weight=0)
    assert "aux_logits" not in [w.path.split("/")[-2] for w in plain.weights]
    with_aux = _model("rnn_hidden", aux_loss_weight=0.5)
    dense = next(w for w in with_aux.weights if "aux_logits" in w.path and "kernel" in w.path)
    assert dense.shape[-1] == NUM_CLASSES
    y_pred, inputs = with_aux.teacher_forced(images, targets, training=False)
    aux = inputs["aux_logits"]
    seq_loss = float(sl_loss(y_pred))
    total = float(with_aux.multilabel_loss(targets, y_pred))
    bce = float(
        tf.reduce_mean(
            tf.reduce_sum(
                tf.nn.sigmoid_cross_entropy_with_logits(labels=targets["multi_hot"], logits=aux),
                axis=-1,
            )
        )
    )
    np.testing.assert_allclose(total, seq_loss + 0.5 * bce, rtol=1e-5)
    # The head's logits, times the learnt gate, shift the label tokens' logits at
    # every step: a large bias on one class makes it the first decoded label.
    gate = next(w for w in with_aux.weights if w.path.endswith("aux_logits/gate"))
    assert float(gate.numpy()) == AUX_GATE_INIT
    np.testing.assert_allclose(inputs["label_bias"], AUX_GATE_INIT * aux.numpy(), atol=1e-6)
    gate.assign(1.0)
    dense.assign(np.zeros(dense.shape, np.float32))
    b = next(w for w in with_aux.weights if "aux_logits" in w.path and "bias" in w.path)
    b.assign(np.array([0, 0, 20.0, 0, 0], np.float32))
    out = with_aux(images, training=False)
    np.testing.assert_array_equal(out["sequence"].numpy()[:, 0], [NUM_SPECIAL + 2] * 4)
    assert np.all(out["scores"].numpy()[:, 2] > 0.99)


def sl_loss(y_pred):
    return sl.sequence_loss(y_pred["logits"], y_pred["targets"], y_pred["allowed"])


def test_pla_aligns_targets_to_predictions():
    model = _model("rnn_input", label_order="pla")
    assert model.pipeline_label_order == "dictionary"
    images, targets = next(iter(tiny_dataset(8, with_sequences=True, max_labels=4, batch_size=8)))
    y_pred, inputs = model.teacher_forced(images, targets, training=False)
    aligned = y_pred["targets"].numpy()  # the sequence after START
    given = targets["sequence"].numpy()[:, 1:]
    lengths = (given >= NUM_SPECIAL).sum(1)
    predicted, _ = model.get_layer("decoder").decode_exact_lengths(inputs, lengths)
    predicted = predicted.numpy()
    reordered = 0
    for a, g, p, k in zip(aligned, given, predicted, lengths, strict=True):
        assert sorted(a[:k]) == sorted(g[:k]) and a[k] == END
        for t in range(k):
            if p[t] in g[:k]:
                assert a[t] == p[t]
        reordered += not np.array_equal(a, g)
    assert reordered > 0


def test_option_errors():
    with pytest.raises(UsageError, match="cell"):
        _model("rnn_hidden", cell="rnn")
    with pytest.raises(UsageError, match="decoding"):
        _model("rnn_hidden", decoding="sampling")
    with pytest.raises(UsageError, match="label_order"):
        _model("rnn_hidden", label_order="alphabetical")
    with pytest.raises(UsageError, match="beam_width"):
        _model("rnn_hidden", decoding="beam", beam_width=NUM_CLASSES + 2)
    with pytest.raises(UsageError, match="length_penalty"):
        _model("rnn_hidden", length_penalty=-1.0)
    with pytest.raises(UsageError, match="aux_loss_weight"):
        _model("rnn_hidden", aux_loss_weight="yes")
    with pytest.raises(UsageError, match="valid options"):
        _model("seq2seq", heads=4)


def test_mismatched_sequence_length_is_a_usage_error():
    model = _model("rnn_hidden", max_labels=3)
    model.compile(optimizer="adam")
    with pytest.raises(UsageError, match="max_labels=3"):
        model.fit(tiny_dataset(8, with_sequences=True, max_labels=4), epochs=1, verbose=0)


def test_region_pool_size():
    assert region_pool_size(7, 7, 49) == 1
    assert region_pool_size(14, 14, 49) == 2  # 196 regions -> 7x7
    assert region_pool_size(7, 7, 16) == 2  # -> 4x4 (padding "same")
    assert region_pool_size(5, 3, 4) == 3  # 2: 3x2 = 6 > 4; 3: 2x1
    assert region_pool_size(1, 1, 1) == 1


def test_max_regions_pools_the_attended_map():
    model = _model("seq2seq_attention", max_regions=4)
    assert model.region_grid == (2, 2)  # the tiny encoder's 4x4 map, pooled by 2
    assert _model("seq2seq").region_grid == (4, 4)
    assert _model("rnn_hidden").region_grid is None
    attention = model(_images(2), training=False)["attention"]
    assert attention.shape == (2, TINY["max_labels"] + 1, 4)


def test_recurrent_models_are_the_recurrent_head_and_the_sequence_loss():
    model = _model("seq2seq_attention", aux_loss_weight=0.2)
    assert isinstance(model.head, RecurrentHead) and model.head.variant == "attention"
    assert model.head.decoder is model.get_layer("decoder")
    # aux_loss_weight is an option of both parts (the head builds the auxiliary
    # head, the loss weighs it): one option, one default, given to both.
    assert isinstance(model.loss_fn, sl.SequenceLoss)
    assert model.head.aux_loss_weight == model.loss_fn.aux_loss_weight == 0.2
    assert model.options["aux_loss_weight"] == 0.2
    assert model.uses_sequences and model.max_labels == TINY["max_labels"]
