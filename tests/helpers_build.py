"""Test helper for build: a worker task that dies on one image, like an OOM kill.

Spawned worker processes unpickle this function by name, so it lives in a
light module (no TensorFlow import) that they can import quickly. Spawned
processes inherit the environment, which carries the victim's path.
"""

import os
import time

from kerasmlic.data import shard_writer

DIE_ON_ENV = "KERASMLIC_TEST_DIE_ON"
DIE_AFTER_ENV = "KERASMLIC_TEST_DIE_AFTER"


def prepare_chunk_or_die(entries, max_side):
    """``shard_writer.prepare_chunk``, except the process exits on the file named in $DIE_ON_ENV.

    When $DIE_AFTER_ENV names a file, the process first waits (up to 60 s) for it
    to exist, so a test can let some shards complete before the death.
    """
    victim = os.environ.get(DIE_ON_ENV)
    if any(entry[2] == victim for entry in entries):
        after = os.environ.get(DIE_AFTER_ENV)
        deadline = time.monotonic() + 60
        while after and not os.path.exists(after) and time.monotonic() < deadline:
            time.sleep(0.02)
        os._exit(9)
    return shard_writer.prepare_chunk(entries, max_side)
