"""The streaming input pipeline on Grain: batches decoded, resized, augmented and
normalised in worker processes, as a pure function of ``(seed, epoch, index)``.

Every epoch has one order (a permutation drawn from ``(seed, epoch)`` in training, the
listing order in evaluation; the same as the in-memory :func:`batches`); global batch
``b`` holds positions ``b*B .. b*B+B-1`` of it, process ``i`` of ``n`` takes its rows
``np.array_split(range(B), n)[i]``, and example ``p`` of the order is augmented with
``example_rng(seed, epoch, p)``. A batch is therefore the same whatever the worker
count, the read-ahead or the process that makes it, and a run resumed at an epoch
boundary reads exactly what an uninterrupted one reads: the iterator's whole state is
``(seed, epoch, batch)``, which every checkpoint holds (its epoch and step). A training
run reads all its epochs from one :class:`RunStream`: the workers start once (a spawned
process imports its modules in about a second) and read ahead across the boundaries of
epochs and evaluations.

Transforms: evaluation (and ``augment="none"``) fits each image to the model's size as
the in-memory path does (:func:`zoo.images.fit_image`: resize to cover, centre crop);
``crop_flip`` fits then pads and crops; ``random_resized_crop`` crops the decoded image
and resizes the box. An unreadable image is skipped: its place in the batch goes to the
next readable image of the epoch's order, with a warning naming the file (an
:class:`ImageFileError` with ``strict_images``); a label always stays with its image.
"""
from __future__ import annotations

import atexit
import dataclasses
import gc
import os
import warnings

import numpy as np

from ..images import ImageError, fit_image
from .augment import augment_example, example_rng
from .batches import _channel_vector, channel_tiles
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
    """Batch ``b`` of epoch ``e`` for one shard: picklable, so Grain's workers run it.
    The rows of every batch (``positions``) are the same each epoch; the order is drawn
    from ``(seed, epoch)`` (training) or is the listing's (evaluation)."""

    def __init__(self, ds: StreamSet, positions, *, seed, augment, train, mean, std):
        self.reader, self.indices = ds.reader, ds.indices
        self.positions, self.shape, self.strict = positions, tuple(ds.image_shape), ds.strict_images
        self.seed, self.augment, self.train = seed, augment, train
        self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        self.warned, self._order, self._tiles = set(), (None, None), None

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's order of the set's examples (the last one is kept: a worker makes
        one epoch's batches after another)."""
        if self._order[0] != epoch:
            n = len(self.indices)
            self._order = (epoch, np.random.default_rng([self.seed, epoch, 0]).permutation(n)
                           if self.train else np.arange(n))
        return self._order[1]

    def _example(self, order, epoch: int, pos: int):
        """(pixels at the model's size, uint8 or float32 in [0, 1], label) of position
        ``pos``; an unreadable image gives way to the next readable one of the order."""
        n = len(order)
        rrc = self.train and self.augment == "random_resized_crop"
        for k in range(n):
            i = int(self.indices[order[(pos + k) % n]])
            try:
                pixels, label, _ = self.reader.read(i, draft=None if rrc else self.shape[1::-1],
                                                    pil=rrc)
                if not rrc:
                    pixels = fit_image(pixels, self.shape, what=self.reader.name(i))
                if self.train and self.augment != "none":
                    pixels = augment_example(self.augment, pixels, example_rng(
                        self.seed, epoch, pos), self.shape[:2])
                return pixels, label
            except (ImageError, OSError) as e:
                if self.strict:
                    raise ImageFileError(f"{e} (--strict-images: every image must be "
                                         f"readable)") from None
                if i not in self.warned:
                    self.warned.add(i)
                    warnings.warn(f"skipped an unreadable image, its place taken by the next "
                                  f"of the epoch (--strict-images makes this an error): {e}",
                                  stacklevel=2)
        raise ImageFileError(f"none of the {n} images can be read")

    def __call__(self, epoch: int, b: int, empty=np.empty):
        """``empty``: how the batch is allocated (in a worker: in the shared memory that
        carries it to the consumer, one 19 MB copy fewer per batch of 32 at 224)."""
        rows = self.positions[b]
        batch = empty((len(rows), *self.shape), np.float32)   # a short last batch: no rows
        x = batch.view(np.ndarray)
        y = np.empty((len(rows),), np.int32)
        order = self.order(epoch)
        if self._tiles is None:   # made in the worker: never pickled
            self._tiles = channel_tiles(self.mean, self.std, self.shape)
        mean, inv_std = self._tiles
        for k, p in enumerate(rows):   # straight into the batch, normalised while in cache
            pixels, y[k] = self._example(order, epoch, int(p))
            np.multiply(pixels, _UNIT[pixels.dtype == np.uint8], out=x[k])
            x[k] -= mean
            x[k] *= inv_std
        return batch, y

    def __getstate__(self):
        return dict(self.__dict__, _tiles=None)


#: the factor that takes pixels to [0, 1]: float ones are there already, uint8 ones / 255
_UNIT = (np.float32(1.0), np.float32(1 / 255))


class _Schedule:
    """Index ``g`` of a run of parts ``(maker, epoch, batches)`` laid end to end -> that
    part's batch: one Grain dataset (one set of workers) for many epochs."""

    def __init__(self, parts, *, shared: bool = False):
        self.parts = [(m, int(e), int(n)) for m, e, n in parts if n]
        self.starts = np.cumsum([0] + [n for _, _, n in self.parts])
        self.shared = shared   # batches made in Grain's shared memory (by worker processes)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __call__(self, g: int):
        k = int(np.searchsorted(self.starts, g, side="right")) - 1
        maker, epoch, _ = self.parts[k]
        if self.shared:
            return maker(epoch, int(g - self.starts[k]), empty=_shared_empty)
        return maker(epoch, int(g - self.starts[k]))


def _shared_empty(shape, dtype):
    """An array in shared memory that Grain hands to the consumer as it is (no copy)."""
    from grain._src.python.ipc.shared_memory_array import SharedMemoryArray

    if 0 in shape:   # shared memory cannot be empty
        return np.empty(shape, dtype)
    return SharedMemoryArray(shape, dtype)


def grain_module():
    """``grain.python``, its absl flags at their defaults where no ``absl.app`` parsed them."""
    import grain.python as grain
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    return grain


def _wait_for_freed_batches() -> None:
    """Free the batches Grain's closed iterators still hold in reference cycles, and wait
    until Grain has unlinked their shared memory: it does so in a background thread, which
    an exiting interpreter would outrun (the resource tracker then reports "leaked
    shared_memory objects")."""
    gc.collect()
    try:
        from grain._src.python.ipc.shared_memory_array import SharedMemoryArray
        pool = SharedMemoryArray._del_thread_pool   # one thread: tasks run in order
        if pool is not None:
            pool.apply_async(int).wait(timeout=10)
    except Exception:  # noqa: BLE001 - a private detail of Grain: never fail an exit on it
        pass


def _iterate(schedule: _Schedule, workers: int):
    """``(x, y)`` of every index of ``schedule`` in order, made by ``workers`` processes
    (0: in this process, no read-ahead: for debugging); a generator whose ``close()``
    stops the workers."""
    grain = grain_module()
    if workers:
        schedule = _Schedule(schedule.parts, shared=True)
    pipeline = grain.MapDataset.range(len(schedule)).map(schedule)
    if workers == 0:
        it = iter(pipeline.to_iter_dataset(grain.ReadOptions(num_threads=0,
                                                             prefetch_buffer_size=0)))
    else:   # each worker makes whole batches in its own thread, WORKER_BUFFER ahead in its
        # queue; no thread buffer inside it: a batch made there (in shared memory) would be
        # lost, unlinked by nobody, when the run stops the worker
        it = iter(pipeline.to_iter_dataset(grain.ReadOptions(
            num_threads=0, prefetch_buffer_size=0)).mp_prefetch(
            grain.MultiprocessingOptions(num_workers=workers,
                                         per_worker_buffer_size=WORKER_BUFFER)))
        atexit.unregister(_wait_for_freed_batches)   # registered once
        atexit.register(_wait_for_freed_batches)
    try:
        for x, y in it:   # copies (~1 ms a 19 MB batch): Grain's shared memory is freed at
            yield np.array(x), np.array(y)   # once, never outlived by a caller's arrays
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
            del it
            gc.collect()   # the iterators' cycles hold batches, each in shared memory


def _positions(n: int, batch_size: int, shard, drop: bool) -> list:
    """This shard's positions of every global batch: ``np.array_split`` of its rows."""
    index, count = shard
    stop = n - batch_size + 1 if drop else n
    return [np.array_split(np.arange(start, min(start + batch_size, n)), count)[index]
            for start in range(0, max(stop, 0), batch_size)]


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
        self.workers, self.train = _check_workers(workers), bool(train)
        positions = _positions(len(ds), self.batch_size, (int(index), int(count)),
                               train if drop_remainder is None else drop_remainder)
        self.maker = _MakeBatch(ds, positions, seed=self.seed, augment=augment, train=train,
                                mean=mean, std=std)

    def __len__(self) -> int:
        return len(self.maker.positions)

    def __iter__(self):
        return _iterate(_Schedule([(self.maker, self.epoch, len(self))]), self.workers)


class RunStream:
    """The batches of many epochs from one set of worker processes, started once: epoch
    after epoch, its training batches (:meth:`train`) then, when an evaluation set is
    given, its evaluation batches (:meth:`evaluation`), asked for in that order (a part
    left unfinished is skipped to its end when the next is asked for, never read as the
    next). The workers read ahead across the boundaries; :meth:`close` (or ``with``) stops
    them.

    ``train``/``evaluation``: :class:`StreamBatches` (their ``epoch`` is ignored; the
    workers are the training set's), ``epochs``: the epochs to stream, e.g.
    ``range(start, total)``. Batch for batch the same as each epoch's own
    :class:`StreamBatches`."""

    def __init__(self, train: StreamBatches, evaluation: StreamBatches | None, epochs):
        self.epochs = range(epochs.start, epochs.stop) if isinstance(epochs, range) else \
            range(int(epochs[0]), int(epochs[-1]) + 1)
        if self.epochs.start < 0:
            raise DataError(f"epochs must be >= 0, got {epochs!r}")
        self.train_batches, self.eval_batches = train, evaluation
        parts = []
        for e in self.epochs:
            parts.append((train.maker, e, len(train)))
            if evaluation is not None:
                parts.append((evaluation.maker, 0, len(evaluation)))
        self._schedule, self._it, self._left = _Schedule(parts), None, [0]
        self._expect = [(e, kind) for e in self.epochs
                        for kind in (("train", "eval") if evaluation is not None else ("train",))]

    def _take(self, epoch: int, kind: str, count: int):
        if not self._expect or self._expect[0] != (epoch, kind):
            want = (f"the {self._expect[0][1]} batches of epoch {self._expect[0][0]}"
                    if self._expect else "nothing more (every epoch was read)")
            raise RuntimeError(f"RunStream: asked for the {kind} batches of epoch {epoch}; "
                               f"the stream holds {want} next")
        self._expect.pop(0)
        if self._it is None:
            self._it = _iterate(self._schedule, self.train_batches.workers)
        for _ in range(self._left[0]):   # a part left unfinished: its rest is skipped, so
            next(self._it)               # that every part starts where it belongs
        self._left[0] = count
        return self._part(count)

    def _part(self, count: int):
        for _ in range(count):
            self._left[0] -= 1
            yield next(self._it)

    def train(self, epoch: int):
        """The training batches of ``epoch`` (the next epoch of the stream)."""
        return self._take(epoch, "train", len(self.train_batches))

    def evaluation(self, epoch: int):
        """The evaluation batches after the training of ``epoch``."""
        if self.eval_batches is None:
            raise RuntimeError("RunStream: no evaluation set was given")
        return self._take(epoch, "eval", len(self.eval_batches))

    def close(self) -> None:
        if self._it is not None:
            self._it.close()
            self._it = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


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
