"""The streaming input pipeline on Grain: batches decoded, resized, augmented and
normalised in worker processes, as a pure function of ``(seed, epoch, index)``.

Every epoch has one order (a permutation drawn from ``(seed, epoch)`` in training, the
listing order in evaluation; the same as the in-memory :func:`batches`); global batch
``b`` holds positions ``b*B .. b*B+B-1`` of it, process ``i`` of ``n`` takes its rows
``np.array_split(range(B), n)[i]``, and example ``p`` of the order is augmented with
``example_rng(seed, epoch, p)``. A batch is therefore the same whatever the worker
count, the read-ahead or the process that makes it, and a run resumed at an epoch
boundary reads exactly what an uninterrupted one reads: the iterator's whole state is
``(seed, epoch, batch)``, which every checkpoint holds (its epoch and step).

Transforms: evaluation (and ``augment="none"``) fits each image to the model's size as
the in-memory path does (:func:`zoo.images.fit_image`: resize to cover, centre crop);
``crop_flip`` fits then pads and crops; ``random_resized_crop`` crops the decoded image
and resizes the box. An unreadable image is skipped: its place in the batch goes to the
next readable image of the epoch's order, with a warning naming the file (an
:class:`ImageFileError` with ``strict_images``); a label always stays with its image.
"""
from __future__ import annotations

import dataclasses
import os
import warnings

import numpy as np

from ..images import ImageError, fit_image
from .augment import augment_example, example_rng
from .batches import _channel_vector
from .dataset import DataError, ImageFileError, _memory_bytes, check_seed
from .stream_sources import StreamSet, list_stream, open_stream

#: the share of physical memory the decoded set may take for ``data_mode="auto"`` to keep
#: it in memory (the in-memory path refuses over half: a split copies it)
MEMORY_BUDGET = 0.25
DATA_MODES = ("auto", "memory", "stream")
#: batches each worker process makes ahead of the consumer
WORKER_BUFFER = 2


def memory_bytes() -> int | None:
    """This machine's memory (or its container's limit) in bytes; None where unknown."""
    return _memory_bytes()


def default_workers() -> int:
    return os.cpu_count() or 1


def _check_workers(workers) -> int:
    if workers is None:
        return default_workers()
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 0:
        raise DataError(f"workers must be an integer >= 0 (0: in this process), got {workers!r}")
    return int(workers)


class _MakeBatch:
    """Batch ``b`` of one epoch for one shard: picklable, so Grain's workers run it."""

    def __init__(self, ds: StreamSet, order, positions, *, seed, epoch, augment, train,
                 mean, std):
        self.reader, self.indices, self.order = ds.reader, ds.indices, order
        self.positions, self.shape, self.strict = positions, tuple(ds.image_shape), ds.strict_images
        self.seed, self.epoch, self.augment, self.train = seed, epoch, augment, train
        self.mean = np.asarray(mean, np.float32)
        self.inv_std = (1.0 / np.asarray(std, np.float32)).astype(np.float32)
        self.warned = set()

    def _example(self, pos: int):
        """(pixels float32 [0, 1] at the model's size, label) of position ``pos``; an
        unreadable image gives way to the next readable one of the order."""
        n = len(self.order)
        rrc = self.train and self.augment == "random_resized_crop"
        for k in range(n):
            i = int(self.indices[self.order[(pos + k) % n]])
            try:
                pixels, label, _ = self.reader.read(i, draft=None if rrc else self.shape[1::-1],
                                                    pil=rrc)
                if not rrc:
                    pixels = fit_image(pixels, self.shape, what=self.reader.name(i))
                if self.train and self.augment != "none":
                    pixels = augment_example(self.augment, pixels, example_rng(
                        self.seed, self.epoch, pos), self.shape[:2])
                break
            except (ImageError, OSError) as e:
                if self.strict:
                    raise ImageFileError(f"{e} (--strict-images: every image must be "
                                         f"readable)") from None
                if i not in self.warned:
                    self.warned.add(i)
                    warnings.warn(f"skipped an unreadable image, its place taken by the next "
                                  f"of the epoch (--strict-images makes this an error): {e}",
                                  stacklevel=2)
        else:
            raise ImageFileError(f"none of the {n} images can be read")
        x = pixels.astype(np.float32)
        if pixels.dtype == np.uint8:
            x *= np.float32(1 / 255)
        return x, label

    def __call__(self, b: int):
        if not len(self.positions[b]):   # a short last batch may leave a shard no rows
            return np.zeros((0, *self.shape), np.float32), np.zeros((0,), np.int32)
        xs, ys = zip(*(self._example(int(p)) for p in self.positions[b]))
        x = np.stack(xs)
        x -= self.mean
        x *= self.inv_std
        return x, np.asarray(ys, np.int32)


class StreamBatches:
    """One epoch of batches ``(x float32 NHWC normalised, y int32)`` of a
    :class:`StreamSet`; ``len()`` is the batch count, ``class_names`` the classes."""

    def __init__(self, ds: StreamSet, batch_size, *, train, augment, seed, epoch, workers,
                 shard, mean, std, drop_remainder):
        from .batches import _check_batch_size_value

        self.ds, self.class_names = ds, list(ds.class_names)
        self.batch_size = _check_batch_size_value(batch_size)
        self.seed, self.epoch = check_seed(seed), int(epoch)
        if self.epoch < 0:
            raise DataError(f"epoch must be >= 0, got {epoch}")
        index, count = shard
        if not (isinstance(count, (int, np.integer)) and count >= 1 and
                isinstance(index, (int, np.integer)) and 0 <= index < count):
            raise DataError(f"shard must be (i, n) with 0 <= i < n, got {shard!r}")
        self.workers = _check_workers(workers)
        n = len(ds)
        order = (np.random.default_rng([self.seed, self.epoch, 0]).permutation(n) if train
                 else np.arange(n))
        drop = train if drop_remainder is None else drop_remainder
        stop = n - self.batch_size + 1 if drop else n
        positions = []
        for start in range(0, max(stop, 0), self.batch_size):
            rows = np.array_split(np.arange(start, min(start + self.batch_size, n)), count)
            positions.append(rows[index])
        self.maker = _MakeBatch(ds, order, positions, seed=self.seed, epoch=self.epoch,
                                augment=augment, train=train, mean=mean, std=std)

    def __len__(self) -> int:
        return len(self.maker.positions)

    def __iter__(self):
        import grain.python as grain
        from absl import flags

        if not flags.FLAGS.is_parsed():   # Grain reads absl flags; outside absl.app: defaults
            flags.FLAGS.mark_as_parsed()
        pipeline = grain.MapDataset.range(len(self)).map(self.maker)
        if self.workers == 0:   # in this process, no read-ahead: for debugging
            it = iter(pipeline.to_iter_dataset(grain.ReadOptions(num_threads=0,
                                                                 prefetch_buffer_size=0)))
        else:   # each worker makes whole batches, one thread each, WORKER_BUFFER ahead
            it = iter(pipeline.to_iter_dataset(grain.ReadOptions(
                num_threads=1, prefetch_buffer_size=WORKER_BUFFER)).mp_prefetch(
                grain.MultiprocessingOptions(num_workers=self.workers,
                                             per_worker_buffer_size=WORKER_BUFFER)))
        try:
            for x, y in it:   # plain views (Grain's shared memory is freed with them)
                yield np.asarray(x), np.asarray(y)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()


def stream_batches(source, *, batch_size, image_size, train, augment=None, seed: int = 0,
                   epoch: int = 0, workers=None, shard=(0, 1), mean=None, std=None,
                   drop_remainder=None, data_dir=None, strict_images: bool = False
                   ) -> StreamBatches:
    """One epoch of ``(images float32 NHWC normalised, labels int32)`` NumPy batches
    streamed from ``source``: a :class:`StreamSet` (from :func:`open_stream`), or a folder
    path (every image) or TFDS name (its train split), statistics estimated on a sample.

    ``image_size``: an int (square, the set's channels, else 3), (H, W) or (H, W, C);
    ``train``: shuffled from ``(seed, epoch)``, augmented (``augment``, default the set's),
    last partial batch dropped; else in order, the eval transform, all kept.
    ``workers``: Grain worker processes (default the CPU count; 0 in this process).
    ``shard=(i, n)``: this process's rows of every global batch of ``batch_size``.
    ``mean``/``std``: default the set's. The result has ``class_names`` and ``len()``."""
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        channels = source.image_shape[2] if isinstance(source, StreamSet) else 3
        shape = (int(image_size), int(image_size), channels)
    else:
        shape = tuple(image_size)
        if len(shape) == 2:
            shape = (*shape, source.image_shape[2] if isinstance(source, StreamSet) else 3)
    if not isinstance(source, StreamSet):
        source, _ = open_stream(source, image_shape=shape, data_dir=data_dir, seed=seed,
                                augment=augment, strict_images=strict_images)
        source = dataclasses.replace(source, indices=np.arange(len(source.reader)), split="all")
    elif tuple(source.image_shape) != tuple(shape):
        source = dataclasses.replace(source, image_shape=tuple(shape))
    if strict_images and not source.strict_images:
        source = dataclasses.replace(source, strict_images=True)
    augment = source.augment if augment in (None, "auto") else augment
    from .augment import AUGMENTATIONS
    if augment not in AUGMENTATIONS:
        raise DataError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
    c = source.image_shape[2]
    mean = _channel_vector(mean, source.mean, c, "mean")
    std = _channel_vector(std, source.std, c, "std")
    if np.any(std <= 0):
        raise DataError(f"std must be positive, got {std.tolist()}")
    return StreamBatches(source, batch_size, train=train, augment=augment, seed=seed,
                         epoch=epoch, workers=workers, shard=shard, mean=mean, std=std,
                         drop_remainder=drop_remainder)


# ----------------------------------------------------------------------------------------
# The choice of path.

@dataclasses.dataclass
class DataPlan:
    """``mode`` ("memory" or "stream"), why, the decoded size, and the streamed sets."""
    mode: str
    reason: str
    decoded_bytes: int | None = None
    sets: tuple | None = None


def _gib(n: int) -> str:
    return (f"{n / 2**30:.2f} GiB" if n >= 2**27 else f"{n / 2**20:.1f} MiB" if n >= 2**20
            else f"{n / 2**10:.1f} KiB")


def plan_data(mode: str, spec, *, image_shape, val_dataset=None, val_fraction=None,
              data_dir=None, seed: int = 0, augment=None, strict_images: bool = False,
              memory_bytes: int | None = None) -> DataPlan:
    """Which path reads ``spec``: ``"memory"`` (decoded once, fastest for small sets),
    ``"stream"``, or ``"auto"``: memory when the decoded set (images x H x W x C bytes as
    uint8) fits :data:`MEMORY_BUDGET` of this machine's memory, else stream. Digits and
    arrays are always in memory. A stream plan carries the opened sets. ``memory_bytes``:
    the memory to budget against (default this machine's; a multi-host run passes process
    0's, so that every host makes the same choice)."""
    if mode not in DATA_MODES:
        raise DataError(f"data mode must be one of {DATA_MODES}, got {mode!r}")
    streamable = not isinstance(spec, (tuple, list)) and spec != "digits"
    if mode == "memory" or (mode == "auto" and not streamable):
        return DataPlan("memory", "chosen with --data-mode memory" if mode == "memory"
                        else "the digits and arrays are always held in memory")
    with warnings.catch_warnings(record=True) as said:   # the listing's; load() repeats them
        warnings.simplefilter("always")
        listed = list_stream(spec, image_shape=image_shape, val_dataset=val_dataset,
                             val_fraction=val_fraction, data_dir=data_dir, seed=seed)
    need = sum(s.decoded_bytes() for s in listed)
    have = _memory_bytes() if memory_bytes is None else int(memory_bytes)
    count = sum(len(s) for s in listed)
    size = f"{count:,} images of {'x'.join(map(str, image_shape))} = {_gib(need)} decoded"
    if mode == "auto":
        if have is None:   # the in-memory loader lists again and warns itself
            return DataPlan("memory", f"{size}; this machine's memory is unknown", need)
        budget = int(have * MEMORY_BUDGET)
        if need <= budget:   # the in-memory loader lists again and warns itself
            return DataPlan("memory", f"{size} <= {_gib(budget)} ({MEMORY_BUDGET:.0%} of "
                            f"{_gib(have)} memory)", need)
        reason = f"{size} > {_gib(budget)} ({MEMORY_BUDGET:.0%} of {_gib(have)} memory)"
    else:
        reason = f"{size}, streamed as chosen with --data-mode stream"
    for w in said:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    sets = open_stream(spec, image_shape=image_shape, seed=seed, augment=augment,
                       strict_images=strict_images, listed=listed)
    return DataPlan("stream", reason, need, sets)
