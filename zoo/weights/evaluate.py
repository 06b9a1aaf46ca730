"""Weights evaluated on real data (``zoo evaluate --weights``): a labelled folder or TFDS
split streamed through the weights' own eval transform, in batches, by a bounded pool of
decoding threads; one jitted program scores every batch (the last one padded and masked).
Top-1, top-5, per-class accuracy and a confusion-matrix PNG."""
from __future__ import annotations

import collections
import concurrent.futures
import os
import sys
import time
import warnings

import numpy as np

from ..images import ImageError
from .load import load
from .specs import imagenet_classes

__all__ = ["evaluate_weights"]

TOP = 5
WORST = 5   # classes listed by name in the report


def _wnids(class_names: list[str]) -> list[str] | None:
    """WordNet ids in class order when the classes are ImageNet-1k's."""
    return imagenet_classes(wnids=True) if class_names == imagenet_classes() else None


def _source(dataset, class_names, *, labels, data_dir, split):
    from .. import data
    from ..data import layouts
    from ..data.tfds import TFDS_PREFIX

    wnids = _wnids(class_names)
    spec = os.fspath(dataset)
    path = os.path.expanduser(spec)
    if os.path.isdir(path) and not spec.startswith(TFDS_PREFIX):
        if split is not None:
            raise ValueError(f"--split names a TFDS split; {spec} is a folder")
        return layouts.labelled_files(path, class_names, wnids=wnids, labels=labels)
    name = spec[len(TFDS_PREFIX):] if spec.startswith(TFDS_PREFIX) else spec
    if spec.startswith(TFDS_PREFIX) or name.split("/")[0].split(":")[0] in \
            data.TFDS_DATASETS:
        if labels is not None:
            raise ValueError(f"--labels labels a flat image folder; TFDS dataset {name!r} has "
                             f"its own labels")
        return layouts.labelled_tfds(name, class_names, wnids=wnids, data_dir=data_dir,
                                     split=split)
    if os.path.exists(path):
        raise data.DataError(f"dataset {spec!r} is a file; give a folder of images (class "
                             f"subfolders, or a flat folder with --labels) or a TFDS name")
    raise FileNotFoundError(f"dataset {spec!r} is neither a folder nor a TFDS name "
                            f"('tfds:NAME' or one of {', '.join(data.TFDS_DATASETS)})")


def _items(source, limit):
    """``(image: path or array, label, what)`` in the source's order."""
    if hasattr(source, "files"):
        sub = source.subset(limit)
        return len(sub), ((f, int(y), f) for f, y in zip(sub.files, sub.labels))
    size = source.size if limit is None else min(limit, source.size or limit)
    where = f"{source.name}[{source.split}]"
    return size, ((x, y, f"{where} example {i}") for i, (x, y) in
                  enumerate(source.examples(limit)))


def _chunks(items, n: int):
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _prepare(chunk, transforms, channels: int, strict: bool):
    """One batch through the transform: ``(x, labels, failures)``; an unreadable image is
    left out and named in ``failures`` (``strict``: raised)."""
    xs, ys, failed = [], [], []
    for image, label, what in chunk:
        try:
            xs.append(transforms(image, channels))
            ys.append(label)
        except (ImageError, OSError) as e:
            if strict:
                raise
            failed.append(f"{what}: {e}" if what not in str(e) else str(e))
    return xs, ys, failed


def _batches(items, transforms, channels: int, batch_size: int, workers: int, strict: bool):
    """Batches decoded by ``workers`` threads, at most ``workers + 1`` batches in flight
    (the set is never held whole); in order."""
    pending: collections.deque = collections.deque()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:   # Pillow releases the GIL
        try:
            for chunk in _chunks(items, batch_size):
                pending.append(pool.submit(_prepare, chunk, transforms, channels, strict))
                if len(pending) > workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


def _check_output(output: str) -> None:
    """Before hours of evaluation: the PNG's folder exists (made if need be) and is writable."""
    folder = os.path.dirname(os.path.abspath(output))
    if os.path.isdir(output):
        raise IsADirectoryError(f"cannot write {output}: it is a folder; give a .png file path")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot write {output}: cannot make folder {folder} ({e.strerror or e})"
                      ) from None
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"cannot write {output}: {folder} is not writable")


def _label(text: str) -> str:
    base = os.path.basename(os.path.normpath(str(text))).split(":")[-1]
    base = os.path.splitext(base)[0] if base.endswith((".pth", ".pt", ".safetensors")) else base
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in base) or "weights"


def _plot(matrix, names, path: str, title: str) -> str:
    """The confusion-matrix PNG, written beside ``path`` and renamed over it (never half)."""
    from .. import visualize

    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), ".tmp-" + os.path.basename(path))
    if not tmp.lower().endswith(".png"):
        tmp += ".png"
    try:
        visualize.plot_confusion(matrix, names, tmp, title=title)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return os.fspath(path)


def evaluate_weights(weights, dataset, *, model=None, labels=None, data_dir=None, split=None,
                     batch_size: int = 64, limit: int | None = None, output: str | None = None,
                     workers: int | None = None, strict_images: bool = False,
                     progress: bool = True, policy: str = "tuned") -> dict:
    """Top-1/top-5 and per-class accuracy of ``weights`` (a tag or a file) on ``dataset``
    (a labelled folder, :func:`zoo.data.layouts.labelled_files`, with ``labels`` for a flat
    one; or a TFDS name, ``tfds:NAME``, read from ``data_dir``'s ``split``).

    Images go through the weights' own transforms (``load(..., with_info=True)``), decoded
    by ``workers`` threads (default: the CPU count, at most 8) at most a few batches ahead.
    ``limit``: that many images, spread evenly over a folder's listing (the first ones of a
    TFDS split). An unreadable image is skipped and named in one warning (``strict_images``:
    an error). The confusion matrix (true classes of the set x their predictions, plus
    "(other)" for predictions outside them) is written to ``output`` (default
    ``./confusion_<weights>-<dataset>.png``). ``policy``: the conv policy, 'tuned' (what
    ``zoo tune`` measured here), 'default' or 'xla'. Returns the report as a dict."""
    from .. import data, visualize
    from ..kernels import xla

    for flag, value, low in (("batch_size", batch_size, 1), ("limit", limit, 1),
                             ("workers", workers, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < low):
            raise ValueError(f"{flag} must be an integer >= {low}, got {value!r}")
    output = output or f"confusion_{_label(weights)}-{_label(dataset)}.png"
    _check_output(output)
    built, variables, info = load(weights, model, with_info=True, progress=progress)
    names, transforms = info["class_names"], info["transforms"]
    source = _source(dataset, names, labels=labels, data_dir=data_dir, split=split)
    total, items = _items(source, limit)
    if total == 0 and hasattr(source, "files"):
        raise data.DataError(f"dataset {dataset!r} holds no labelled images")
    bs = min(batch_size, total) if total else batch_size
    k = built.num_classes
    top = min(TOP, k)

    import jax

    params, state = variables["params"], variables.get("state", {})
    channels = built.input_shape[-1]
    shape = (bs, transforms.crop, transforms.crop, channels)
    from ..tuning import named_policy   # here: zoo.tuning's cache imports zoo.weights
    chosen, policy_line = named_policy(policy, built, shape)
    built = built.with_policy(chosen)
    t0 = time.perf_counter()   # compiled before the clock starts: images/s is the steady rate
    predict = xla.jit(lambda p, s, x: jax.lax.top_k(built.apply(p, s, x)[0], top)[1]).lower(
        params, state, jax.ShapeDtypeStruct(shape, np.float32)).compile()
    compile_seconds = time.perf_counter() - t0
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    from tqdm.auto import tqdm

    bar = tqdm(total=total or None, unit="img", file=sys.stderr, dynamic_ncols=True,
               disable=not progress, leave=False, desc=f"{info['tag'] or built.name}")
    true, preds, failures = [], [], []
    t0 = time.perf_counter()
    waiting = None    # the previous batch's device result: read after the next is dispatched

    def collect(result):
        idx, y = result
        preds.append(np.asarray(idx)[:len(y)])
        true.append(np.asarray(y, np.int64))

    try:
        for xs, ys, failed in _batches(items, transforms, channels, bs, workers,
                                       strict_images):
            failures += failed
            if xs:
                x = np.zeros(shape, np.float32)
                x[:len(xs)] = np.stack(xs)
                result = (predict(params, state, x), ys)   # padded rows masked: sliced off
                if waiting is not None:
                    collect(waiting)
                waiting = result
            bar.update(len(xs) + len(failed))
        if waiting is not None:
            collect(waiting)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    if failures:
        warnings.warn(f"skipped {len(failures)} unreadable image(s) (strict_images, "
                      f"--strict-images, to fail instead): {'; '.join(failures[:3])}"
                      + ("; ..." if len(failures) > 3 else ""), stacklevel=2)
    if not true:
        raise data.DataError(f"no image of {dataset!r} could be evaluated")
    y, p = np.concatenate(true), np.concatenate(preds)
    count = len(y)
    top1 = float(np.mean(p[:, 0] == y))
    top5 = float(np.mean(np.any(p == y[:, None], axis=1)))

    present = np.unique(y)
    full = visualize.confusion_matrix(y, p[:, 0], k)
    per_class = {names[c]: float(full[c, c] / full[c].sum()) for c in present}
    counts = {names[c]: int(full[c].sum()) for c in present}
    if len(present) == k:
        matrix, rows = full, list(names)
    else:   # the set's classes, and one column for predictions outside them
        matrix = np.zeros((len(present) + 1, len(present) + 1), np.int64)
        matrix[:-1, :-1] = full[np.ix_(present, present)]
        matrix[:-1, -1] = full[present].sum(1) - matrix[:-1, :-1].sum(1)
        rows = [names[c] for c in present] + ["(other)"]
    worst = sorted(per_class, key=lambda n: (per_class[n], n))[:WORST]
    title = (f"{info['tag'] or os.path.basename(info['path'])} on {_label(dataset)}\ntop-1 "
             f"{top1:.4f}, top-5 {top5:.4f} ({count} images)")
    png = _plot(matrix, rows, output, title)
    return {"weights": info["tag"] or info["path"], "model": built.name,
            "dataset": os.fspath(dataset), "layout": source.layout, "count": count,
            "skipped": len(failures), "skipped_files": failures, "top1": top1, "top5": top5,
            "top_k": top, "per_class_accuracy": per_class, "per_class_count": counts,
            "worst_classes": worst, "confusion_matrix": matrix.tolist(),
            "confusion_classes": rows, "confusion_png": png, "seconds": seconds,
            "compile_seconds": compile_seconds,
            "images_per_second": count / max(seconds, 1e-9), "batch_size": bs,
            "workers": workers, "policy": policy_line}
