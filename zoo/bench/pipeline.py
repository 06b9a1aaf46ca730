"""The input-pipeline benchmark: zoo's streaming loader (:func:`zoo.data.stream_batches`)
against torch's ``DataLoader`` over torchvision's ``ImageFolder``, the same folder,
transforms (decode, random resized crop, flip, normalise), batch size and worker count
(``zoo benchmark --input-pipeline FOLDER``).

A round is one fresh iterator (new workers, a new epoch) of each loader, the loaders
alternating which goes first and never running at once: the time until its first batch is
in the consumer's hands (the workers' start: a training run pays it once, as it holds one
set of workers for all its epochs, :class:`zoo.data.RunStream`), then the time of the next
``batches`` batches (the stream). The ratio is zoo time / torch time of the stream per
round: below 1.0 zoo is faster.

Where the time goes is measured alone, one image at a time in this process: decode, crop +
resize + flip, to float + normalise, and the batch's passage from the workers (a batch
already made, carried by each loader's own worker machinery)."""
from __future__ import annotations

import os
import statistics
import time
import warnings
from typing import Callable

import numpy as np

from ..images import IMAGENET_MEAN, IMAGENET_STD

#: images per loader timed for each stage of the breakdown
STAGE_SAMPLE = 48


def _spread(values) -> dict:
    return dict(median=statistics.median(values), min=min(values), max=max(values),
                rounds=list(values))


def check_folder(folder) -> str:
    if not isinstance(folder, (str, os.PathLike)):
        raise ValueError(f"--input-pipeline takes a folder of class subfolders, got {folder!r}")
    folder = os.fspath(folder)
    if not os.path.exists(folder):
        raise FileNotFoundError(f"--input-pipeline {folder!r}: no such folder")
    if not os.path.isdir(folder):
        raise ValueError(f"--input-pipeline {folder!r} is not a folder (it takes a folder of "
                         f"class subfolders of images)")
    return folder


class ZooLoader:
    """zoo's streaming loader over every image of ``folder``: random_resized_crop to
    ``size``, flip, the ImageNet normalisation."""

    name = "zoo"

    def __init__(self, folder, *, size, batch_size, workers, seed):
        from ..data import stream_batches

        self.kw = dict(batch_size=batch_size, image_size=size, train=True,
                       augment="random_resized_crop", seed=seed, workers=workers,
                       mean=IMAGENET_MEAN, std=IMAGENET_STD)
        with warnings.catch_warnings():   # the train/val split's notes: every image is read
            warnings.simplefilter("ignore")
            first = stream_batches(folder, **self.kw)   # lists the folder once
        self.set, self.images, self.batches = first.ds, len(first.ds), len(first)

    def fresh(self, k: int):
        """A new iterator of epoch ``k`` (new workers) and its close."""
        from ..data import stream_batches

        it = iter(stream_batches(self.set, epoch=k, **self.kw))
        return it, it.close


class TorchLoader:
    """``DataLoader(ImageFolder(folder, RandomResizedCrop, RandomHorizontalFlip, ToTensor,
    Normalize), shuffle=True, drop_last=True)`` with ``workers`` worker processes."""

    name = "torch"

    def __init__(self, folder, *, size, batch_size, workers, seed):
        try:
            import torch
            from torchvision import datasets, transforms as T
        except ImportError as e:
            raise ImportError(f"--input-pipeline compares with torchvision's ImageFolder and "
                              f"torch's DataLoader: install torch and torchvision ({e})") from None
        self.torch, self.seed = torch, seed
        tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(),
                        T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        self.dataset = datasets.ImageFolder(folder, transform=tf)
        self.batch_size, self.workers = batch_size, workers
        self.images = len(self.dataset)
        self.batches = self.images // batch_size

    def fresh(self, k: int):
        """A new iterator of epoch ``k`` (new workers) and its close."""
        g = self.torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + k)
        loader = self.torch.utils.data.DataLoader(
            self.dataset, batch_size=self.batch_size, shuffle=True, drop_last=True,
            num_workers=self.workers, generator=g)
        return _torch_iter(loader)


def _torch_iter(loader):
    """``(iterator, close)`` of a torch DataLoader."""
    with warnings.catch_warnings():   # its forked workers run torch only, never JAX
        warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
        it = iter(loader)
    return it, getattr(it, "_shutdown_workers", lambda: None)


def time_round(loader, epoch: int, batches: int) -> dict:
    """Seconds from a fresh iterator to its first batch, and of the ``batches`` after it."""
    t0 = time.perf_counter()
    it, close = loader.fresh(epoch)
    try:
        next(it)
        t1 = time.perf_counter()
        for _ in range(batches):
            x, _ = next(it)
        return dict(start_s=t1 - t0, stream_s=time.perf_counter() - t1, shape=tuple(x.shape))
    finally:
        close()


# ----------------------------------------------------------------------------------------
# Where the time goes.

def _per_image_ms(fn, items) -> tuple[float, list]:
    t0 = time.perf_counter()
    out = [fn(a) for a in items]
    return 1e3 * (time.perf_counter() - t0) / len(items), out


def stage_costs(zoo: ZooLoader, tl: TorchLoader, size: int, batch_size: int,
                seed: int = 0, repeats: int = 3) -> dict:
    """Milliseconds per image of each stage, one image at a time in this process (torch on
    one thread, as in its workers), on the same :data:`STAGE_SAMPLE` files read by each
    library's own code; the least of ``repeats`` passes, the libraries alternating."""
    import torch
    from torchvision import transforms as T
    from torchvision.datasets.folder import default_loader

    from ..data.augment import random_resized_crop
    from ..data.batches import channel_tiles

    reader = zoo.set.reader
    pick = np.random.default_rng(seed).choice(len(reader), min(STAGE_SAMPLE, len(reader)),
                                              replace=False)
    files = [reader.name(int(i)) for i in pick]
    for f in files:   # from the page cache for both
        with open(f, "rb") as fh:
            fh.read()
    mean, inv_std = channel_tiles(IMAGENET_MEAN, IMAGENET_STD, (size, size, 3))

    def zoo_pass():   # as the loader's workers do: crop the Pillow image, then one array
        z, rngs = {}, [np.random.default_rng([seed, int(i)]) for i in pick]
        z["decode_ms"], pixels = _per_image_ms(lambda i: reader.read(int(i), pil=True)[0],
                                               pick)
        z["crop_resize_flip_ms"], crops = _per_image_ms(
            lambda a: random_resized_crop(a[0], a[1], (size, size)), list(zip(pixels, rngs)))
        t0 = time.perf_counter()   # to float straight into the batch, normalised in place
        for s in range(0, len(crops), batch_size):
            part = crops[s:s + batch_size]
            x = np.empty((len(part), *part[0].shape), np.float32)
            for k, c in enumerate(part):
                np.multiply(c, np.float32(1 / 255), out=x[k])
                x[k] -= mean
                x[k] *= inv_std
        z["normalise_ms"] = 1e3 * (time.perf_counter() - t0) / len(crops)
        z["collate_ms"] = 0.0   # each image is written into its batch by the step above
        return z

    crop_flip = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip()])
    to_norm = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def torch_pass():
        t = {}
        torch.manual_seed(seed)
        t["decode_ms"], ims = _per_image_ms(default_loader, files)
        t["crop_resize_flip_ms"], crops = _per_image_ms(crop_flip, ims)
        t["normalise_ms"], tensors = _per_image_ms(to_norm, crops)
        t0 = time.perf_counter()
        for s in range(0, len(tensors), batch_size):
            torch.stack(tensors[s:s + batch_size])
        t["collate_ms"] = 1e3 * (time.perf_counter() - t0) / len(tensors)
        return t

    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # as in DataLoader's workers
    passes = dict(zoo=[], torch=[])
    try:
        for r in range(repeats):
            for name, fn in ((("zoo", zoo_pass), ("torch", torch_pass)) if r % 2 == 0 else
                             (("torch", torch_pass), ("zoo", zoo_pass))):
                passes[name].append(fn())
    finally:
        torch.set_num_threads(threads)
    out = {name: {k: min(p[k] for p in ps) for k in ps[0]} for name, ps in passes.items()}
    for d in out.values():
        d["total_ms"] = sum(d.values())
    return out


class _MadeBatch:
    """A batch already made (zeros of the loader's shape): what remains is its passage."""

    def __init__(self, shape):
        self.shape = tuple(shape)

    def __call__(self, epoch, b, empty=np.empty):   # allocated as the stream's batches are
        x = empty(self.shape, np.float32)
        x.view(np.ndarray)[...] = 0
        return x, np.zeros(self.shape[:1], np.int32)


class _MadeImage:
    def __init__(self, shape, n):
        self.shape, self.n = tuple(shape), n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        import torch
        return torch.zeros(self.shape), 0


def transfer_costs(workers: int, batch_shape, batches: int) -> dict:
    """Milliseconds per image for ``batches`` made batches of ``batch_shape`` (N, H, W, C)
    to reach this process through each loader's worker machinery (Grain's processes and
    shared memory as :class:`zoo.data.stream.StreamBatches` sets them up; torch's
    DataLoader collating in its workers), the workers' start excluded."""
    import torch

    from ..data.stream import _iterate, _Schedule

    n = batch_shape[0]
    chw = (batch_shape[3], batch_shape[1], batch_shape[2])

    def zoo():
        it = _iterate(_Schedule([(_MadeBatch(batch_shape), 0, batches + 1)]), workers)
        return it, it.close

    def torch_():   # started only when its turn comes: never beside zoo's workers
        return _torch_iter(torch.utils.data.DataLoader(
            _MadeImage(chw, (batches + 1) * n), batch_size=n, num_workers=workers))

    out = {}
    for name, start in (("zoo", zoo), ("torch", torch_)):
        it, close = start()
        try:
            next(it)   # the workers' start, excluded
            t0 = time.perf_counter()
            for _ in range(batches):
                next(it)
            out[name] = 1e3 * (time.perf_counter() - t0) / (batches * n)
        finally:
            close()
    return out


# ----------------------------------------------------------------------------------------

def run_input_pipeline(folder, *, workers: int = 2, batch_size: int = 32, batches: int = 20,
                       rounds: int = 5, size: int = 224, seed: int = 0, breakdown: bool = True,
                       log: Callable = print) -> dict:
    """zoo's streaming loader against torch's DataLoader on ``folder``, ``rounds`` rounds
    (:func:`time_round`: a fresh iterator's first batch, then ``batches`` batches),
    alternating which goes first. Returns the stream's images/s and the start's seconds
    (median, min, max, per round) of each, and per round the ratio zoo time / torch time of
    the stream; with ``breakdown`` the per-stage costs (:func:`stage_costs`,
    :func:`transfer_costs`)."""
    folder = check_folder(folder)
    kw = dict(size=size, batch_size=batch_size, workers=workers, seed=seed)
    loaders = [ZooLoader(folder, **kw), TorchLoader(folder, **kw)]
    zl, tl = loaders
    if zl.images != tl.images:
        log(f"   note: zoo lists {zl.images} images, torchvision's ImageFolder {tl.images}")
    available = min(zl.batches, tl.batches) - 1   # the first batch, then the timed ones
    if available < 1:
        raise ValueError(f"--input-pipeline {folder!r}: {min(zl.images, tl.images)} images make "
                         f"{available + 1} batch(es) of --pipeline-batch-size {batch_size}; the "
                         f"benchmark needs at least 2 (a first batch and one after it)")
    if batches > available:
        log(f"   {batches} batches asked after the first, the folder makes {available} more "
            f"of {batch_size}: timing {available}")
        batches = available
    log(f"\n== input pipeline: {folder} ({zl.images} images), a first batch then {batches} "
        f"batches of {batch_size} at {size}px per round, {workers} worker(s), {rounds} "
        f"round(s)")
    for f in zl.set.reader.files:   # every round reads from the page cache
        with open(f, "rb") as fh:
            fh.read()
    times = {lo.name: [] for lo in loaders}
    for k in range(rounds):
        for lo in (loaders if k % 2 == 0 else loaders[::-1]):
            times[lo.name].append(time_round(lo, k, batches))
    images = batches * batch_size
    result = dict(folder=folder, images=zl.images, torch_images=tl.images, workers=workers,
                  batch_size=batch_size, batches=batches, rounds=rounds, size=size)
    for name, rs in times.items():
        result[name] = dict(img_s=_spread([images / r["stream_s"] for r in rs]),
                            start_s=_spread([r["start_s"] for r in rs]))
    result["ratio"] = _spread([a["stream_s"] / b["stream_s"]
                               for a, b in zip(times["zoo"], times["torch"])])
    for name in ("zoo", "torch"):
        s = result[name]
        log(f"   {name:6s} {s['img_s']['median']:7.1f} img/s (min {s['img_s']['min']:.1f}, max "
            f"{s['img_s']['max']:.1f}) after the first batch; the first batch "
            f"{s['start_s']['median']:.2f} s")
    v = result["ratio"]
    log(f"   time zoo/torch after the first batch: {v['median']:.2f}  (rounds: "
        f"{' '.join(f'{x:.2f}' for x in v['rounds'])})")
    if breakdown:
        result["stages_ms_per_image"] = stage_costs(zl, tl, size, batch_size, seed)
        shape = times["zoo"][0]["shape"]
        result["transfer_ms_per_image"] = transfer_costs(workers, shape, min(batches, 10))
        for name in ("zoo", "torch"):
            st = result["stages_ms_per_image"][name]
            log(f"   {name:6s} ms/image in one process: " + ", ".join(
                f"{k[:-3]} {v:.2f}" for k, v in st.items()) +
                f"; made batch passed from {workers} worker(s): "
                f"{result['transfer_ms_per_image'][name]:.2f}")
    return result
