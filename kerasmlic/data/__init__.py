"""Data layer: the built-in dataset, COCO → TFRecord shards, the tf.data pipeline."""
