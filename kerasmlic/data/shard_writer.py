"""Shard writing for ``kerasmlic build``: prepare images, write, rename, record.

A build hands this module its plan, cut into shard *tasks* (file names, the
planned entries, a digest of the plan). For each task it either reuses a
complete shard whose sidecar matches (:func:`reusable_shard`) or writes it:
images are read, checked and, where needed, re-encoded by
:func:`prepare_chunk`, in a pool of spawned processes fed runs of
:data:`CHUNK_SIZE` images (:class:`PreparedStream`), and the main process
writes them in plan order under ``NAME.tmp``, renames the file when complete
and then writes its sidecar ``.SPLIT-00000-of-000NN.done.json``
(:func:`write_shard`). The pool processes import PIL only, not TensorFlow.
"""

import collections
import hashlib
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from kerasmlic.data import manifest as manifest_lib
from kerasmlic.data.images import JPEG_QUALITY, ImageSkip, prepare_image
from kerasmlic.data.manifest import file_sha256
from kerasmlic.processes import exit_with_parent

SIDECAR_VERSION = 2  # 2: files TensorFlow decodes are stored byte for byte
CHUNK_SIZE = 8  # images per task sent to a worker


def skip_record(file_name, image_id, reason, path=None):
    """Return the record of an image left out of the shards, as sidecars and summaries keep it.

    Args:
        file_name: The image's ``file_name`` in the annotations.
        image_id: Its image id.
        reason: Why it was skipped (one line).
        path: The path it was read from, when one was resolved.

    Returns:
        A dict: ``file``, ``image_id``, ``reason`` and, with a path, ``path``.
    """
    record = {"file": file_name, "image_id": image_id, "reason": reason}
    if path is not None:
        record["path"] = path
    return record


def plan_digest(split, index, num_shards, entries, max_side):
    """Return the sha256 of everything that decides a shard's bytes but the pixels.

    The source file size stands in for the pixels, so a rerun can tell from the
    plan alone whether a complete shard can be reused.

    Args:
        split: Split name.
        index: The shard's index.
        num_shards: The split's shard count.
        entries: The shard's planned entries (as :func:`kerasmlic.data.build.plan_images`
            makes them).
        max_side: The build's ``max_side``.

    Returns:
        A hex digest.
    """
    payload = {
        "version": SIDECAR_VERSION,
        "split": split,
        "shard": [index, num_shards],
        "max_side": max_side,
        "jpeg_quality": JPEG_QUALITY,
        "entries": [[e[0], e[1], e[3], e[4], e[5], e[6], e[7], e[8]] for e in entries],
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def reusable_shard(task):
    """Return the sidecar of a complete shard the task can reuse, else ``None``.

    Reusable means: the sidecar's version, plan digest and file name match the
    task, and the shard file's sha256 is the one the sidecar recorded.

    Args:
        task: A shard task (``out``, ``file``, ``sidecar``, ``digest``).

    Returns:
        The sidecar dict, or None.
    """
    final = os.path.join(task["out"], task["file"])
    sidecar = os.path.join(task["out"], task["sidecar"])
    try:
        with open(sidecar) as f:
            record = json.load(f)
        if (
            record.get("version") != SIDECAR_VERSION
            or record.get("plan") != task["digest"]
            or record.get("file") != task["file"]
            or not isinstance(record.get("image_ids"), list)
            or not isinstance(record.get("skipped"), list)
            or not isinstance(record.get("exif_orientation"), list)
            or record.get("num_examples") != len(record["image_ids"])
            or not os.path.isfile(final)
            or file_sha256(final) != record.get("sha256")
        ):
            return None
    except (OSError, ValueError, AttributeError):
        return None
    return record


def remove_file(path):
    """Remove ``path`` if it exists.

    Args:
        path: A file path.
    """
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def prepare_chunk(entries, max_side):
    """Read and check a run of planned images (runs in a worker process).

    Args:
        entries: Planned entries (path at index 2, declared width and height at 4, 5).
        max_side: Longest side to keep (larger images are shrunk); None keeps all.

    Returns:
        Per entry, ``(encoded, height, width, reencoded, orientation)`` or a
        skip reason (a string).
    """
    results = []
    for entry in entries:
        path, width, height = entry[2], entry[4], entry[5]
        try:
            if os.path.realpath(path) != path:
                raise ImageSkip("file was replaced by a symlink during the build; refused")
            p = prepare_image(path, max_side=max_side, declared_size=(width, height))
            results.append((p.encoded, p.height, p.width, p.reencoded, p.orientation))
        except ImageSkip as e:
            results.append(str(e))
    return results


class PreparedStream:
    """Prepared images in plan order, from worker processes or inline.

    At most ``2 * workers`` chunks of :data:`CHUNK_SIZE` images are in flight,
    so memory holds a bounded number of encoded images however long the split is.
    """

    def __init__(self, entries, max_side, workers):
        self._chunks = iter(
            [entries[i : i + CHUNK_SIZE] for i in range(0, len(entries), CHUNK_SIZE)]
        )
        self._max_side = max_side
        self._executor = None
        self._pending = collections.deque()
        self._ready = collections.deque()
        if workers > 1 and len(entries) > CHUNK_SIZE:
            # spawn, not fork: the parent may already run TensorFlow's threads.
            self._executor = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=exit_with_parent,
                initargs=(os.getpid(),),
            )
            for _ in range(2 * workers):
                self._submit()

    def _submit(self):
        chunk = next(self._chunks, None)
        if chunk is not None:
            future = self._executor.submit(prepare_chunk, chunk, self._max_side)
            self._pending.append((chunk, future))

    def take(self, n):
        """Yield the next ``n`` ``(entry, result)`` pairs."""
        for _ in range(n):
            if not self._ready:
                if self._executor is None:
                    chunk = next(self._chunks)
                    self._ready.extend(
                        zip(chunk, prepare_chunk(chunk, self._max_side), strict=True)
                    )
                else:
                    chunk, future = self._pending.popleft()
                    try:
                        results = future.result()
                    except BrokenProcessPool:
                        raise RuntimeError(
                            "a build worker process died (out of memory or killed?); rerun "
                            "the same command to resume: complete shards are reused"
                        ) from None
                    self._submit()
                    self._ready.extend(zip(chunk, results, strict=True))
            yield self._ready.popleft()

    def close(self):
        """Stop the workers, dropping work not yet started."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


def write_shard(task, items, strict, report):
    """Write one shard from prepared images: temp file, rename, then sidecar.

    Args:
        task: A dict made by :func:`build_split` (file names, entries, digest).
        items: Iterator of ``(entry, result)`` pairs for ``task["entries"]``.
        strict: Stop at the first skip.
        report: Called with a number of images done, for the progress bar.

    Returns:
        The sidecar dict, or ``{"stopped": skip}`` when ``strict`` met a skip
        (the temporary file is then removed).
    """
    import tensorflow as tf

    from kerasmlic.data.schema import make_example

    out = task["out"]
    final = os.path.join(out, task["file"])
    tmp = final + ".tmp"
    sidecar = os.path.join(out, task["sidecar"])
    remove_file(sidecar)
    written, skipped, reencoded, rotated = [], [], {}, []
    stopped = None
    try:
        with tf.io.TFRecordWriter(tmp) as writer:
            for entry, result in items:
                image_id, file_name, path, _, _, _, ids, areas, counts = entry
                report(1)
                if isinstance(result, str):
                    skip = skip_record(file_name, image_id, result, path)
                    if strict:
                        stopped = {"stopped": skip}
                        break
                    skipped.append(skip)
                    continue
                encoded, height, width, why, orientation = result
                writer.write(
                    make_example(encoded, image_id, height, width, file_name, ids, areas, counts)
                )
                written.append(image_id)
                if why:
                    reencoded[why] = reencoded.get(why, 0) + 1
                if orientation != 1:
                    rotated.append(
                        {"file": file_name, "image_id": image_id, "orientation": orientation}
                    )
        if stopped:
            remove_file(tmp)
            return stopped
        record = {
            "version": SIDECAR_VERSION,
            "file": task["file"],
            "split": task["split"],
            "plan": task["digest"],
            "sha256": file_sha256(tmp),
            "num_examples": len(written),
            "image_ids": written,
            "skipped": skipped,
            "reencoded": reencoded,
            "exif_orientation": rotated,
        }
        os.replace(tmp, final)
    except BaseException:
        remove_file(tmp)
        raise
    manifest_lib.write_json_atomic(sidecar, record)
    return record


def write_shards(todo, workers, strict, bar):
    """Write the shards in ``todo`` in order, from one stream of prepared images.

    Args:
        todo: Shard tasks, in plan order.
        workers: Worker processes preparing images (1: inline).
        strict: Stop at the first skip.
        bar: A progress bar (``update(n)``).

    Returns:
        ``({index: sidecar record}, strict_skip)``; ``strict_skip`` is the skip
        that stopped a strict build, else None.
    """
    stream = PreparedStream([e for t in todo for e in t["entries"]], todo[0]["max_side"], workers)
    results = {}
    try:
        for task in todo:
            record = write_shard(task, stream.take(len(task["entries"])), strict, bar.update)
            if "stopped" in record:
                return results, record["stopped"]
            results[task["index"]] = record
    finally:
        stream.close()
    return results, None
