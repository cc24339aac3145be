"""Training-time augmentation settings and the batch-level ops (RandAugment, erasing).

The ``data.augment`` section of a config becomes an :class:`Augmentation`.
Per-image geometry (the random resized crop and the flip) runs inside the
per-record map of :func:`kerasmlic.data.pipeline.make_dataset`, where the crop
can be decoded from the JPEG alone; the photometric recipes of the strongest
multi-label models (RandAugment, random erasing, as in ASL, Query2Label and
ML-Decoder) run on whole batches with the Keras 3 preprocessing layers, which
draw their parameters per image and are safe inside ``tf.data``. The pipeline
carries uint8 pixels; those layers compute on floats, so a batch is cast to
float32 for them (and back to uint8 after) only when one of them is on.

A crop that cuts an object out while keeping its label is label noise, so the
crop's area range is a setting (``crop_scale``) with a measured default rather
than ImageNet's ``(0.08, 1)``.
"""

import dataclasses

import keras
import tensorflow as tf

from kerasmlic.errors import UsageError

_FIELDS = ("crop_scale", "crop_ratio", "flip", "randaugment", "erasing")


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """What the training pipeline does to each image.

    Args:
        crop_scale: ``(min, max)`` area of the random resized crop as a
            fraction of the image; ``(1, 1)`` decodes the whole image (no crop).
        crop_ratio: ``(min, max)`` width / height of the crop.
        flip: Mirror left-right with probability 1/2.
        randaugment_ops: Operations RandAugment applies per image (0 = off).
        randaugment_magnitude: RandAugment strength on the usual 0-10 scale
            (Keras' ``factor`` is ``magnitude / 10``).
        erasing: Probability that a random rectangle of the image is erased
            (0 = off).

    Example:
        >>> Augmentation.from_config({"crop_scale": [0.5, 1], "flip": False}).crops
        True
        >>> Augmentation().crops  # the default: no crop, flip on
        False
    """

    crop_scale: tuple = (1.0, 1.0)
    crop_ratio: tuple = (3.0 / 4.0, 4.0 / 3.0)
    flip: bool = True
    randaugment_ops: int = 0
    randaugment_magnitude: float = 9.0
    erasing: float = 0.0

    @classmethod
    def from_config(cls, section):
        """Build from a config's ``data.augment`` section.

        Args:
            section: A dict with any of ``crop_scale``, ``crop_ratio``, ``flip``,
                ``randaugment`` (``{"num_ops", "magnitude"}``) and ``erasing``;
                ``"none"`` (or ``None``/``False``) turns everything off; an
                :class:`Augmentation` is returned as is.

        Returns:
            An :class:`Augmentation`.

        Raises:
            UsageError: An unknown key.
        """
        if isinstance(section, cls):
            return section
        if section is None or section is False or str(section).lower() == "none":
            return cls.off()
        if not isinstance(section, dict):
            raise UsageError(f"data.augment must be a mapping or 'none', got {section!r}")
        unknown = sorted(set(section) - set(_FIELDS))
        if unknown:
            raise UsageError(
                f"unknown data.augment key(s) {', '.join(unknown)}; valid: {', '.join(_FIELDS)}"
            )
        rand = section.get("randaugment") or {}
        default = cls()
        return cls(
            crop_scale=tuple(float(v) for v in section.get("crop_scale", default.crop_scale)),
            crop_ratio=tuple(float(v) for v in section.get("crop_ratio", default.crop_ratio)),
            flip=bool(section.get("flip", default.flip)),
            randaugment_ops=int(rand.get("num_ops", default.randaugment_ops)),
            randaugment_magnitude=float(rand.get("magnitude", default.randaugment_magnitude)),
            erasing=float(section.get("erasing", default.erasing)),
        )

    @classmethod
    def off(cls):
        """Return the setting with every augmentation off (``data.augment: none``)."""
        return cls(crop_scale=(1.0, 1.0), flip=False, randaugment_ops=0, erasing=0.0)

    @property
    def crops(self):
        """Whether a random crop is taken (else the whole image is resized)."""
        return tuple(self.crop_scale) != (1.0, 1.0)

    @property
    def has_batch_ops(self):
        """Whether RandAugment or erasing runs on the batches."""
        return self.randaugment_ops > 0 or self.erasing > 0


def batch_augmenter(augmentation, seed=None):
    """Return a function that applies RandAugment and erasing to a batch.

    Args:
        augmentation: An :class:`Augmentation`.
        seed: Seed of the Keras layers' random generators (``None``: fresh).

    Returns:
        ``f(images) -> images``: uint8 or float ``(B, S, S, 3)`` pixels on
        0-255 in, float32 pixels on 0-255 out; or ``None`` when neither op is on.
    """
    if not augmentation.has_batch_ops:
        return None
    stages = []
    if augmentation.randaugment_ops > 0:
        stages.append(
            keras.layers.RandAugment(
                value_range=(0, 255),
                num_ops=augmentation.randaugment_ops,
                factor=min(1.0, augmentation.randaugment_magnitude / 10.0),
                seed=seed,
            )
        )
    if augmentation.erasing > 0:
        p = augmentation.erasing
        # A (p, p) factor is a fixed probability; a single float would draw one in [0, p].
        stages.append(keras.layers.RandomErasing(factor=(p, p), value_range=(0, 255), seed=seed))

    def apply(images):
        images = tf.cast(images, tf.float32)
        for stage in stages:
            images = stage(images, training=True)
        return tf.clip_by_value(tf.cast(images, tf.float32), 0.0, 255.0)

    return apply
