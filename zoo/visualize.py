"""Pictures: score-map overlays, first-layer filter grids, activation maps.

Everything writes a PNG and returns its path. Weights are always a parameter (random,
trained or imported: the pictures do not care where they come from).

- :func:`save_score_map`: the image with one class's score map as a heat overlay, beside a
  grid of the top classes' maps; the title gives the map size and stride.
- :func:`filter_grid` / :func:`save_filter_grid`: a conv kernel (HWIO) as a grid of small
  images (Krizhevsky et al. 2012, fig. 3).
- :func:`layer_output` / :func:`save_activation_grid`: the output of a named layer for an
  image, one tile per channel.
"""
from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import images, nn
from .kernels import xla


# ----------------------------------------------------------------------------------------
# Score maps.

def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_score_map(image: np.ndarray, scores, path: str, *, stride: int, train_size=(224, 224),
                   class_names: Sequence[str] | None = None, cls: int | None = None, top: int = 4,
                   title: str | None = None, probabilities: bool = True, alpha: float = 0.55,
                   size_inches=(12.0, 5.0), dpi: int = 100) -> str:
    """A PNG of ``image`` (display-ready, (H, W[, 3]) in [0, 1] or uint8) with the score
    map of class ``cls`` (default: the top class of the pooled map) as a heat overlay, and
    a grid of the ``top`` classes' maps.

    ``scores``: (P, Q, K); cell (p, q) stands for the ``train_size`` crop at pixel
    ``(p*stride, q*stride)``, so it is drawn centred on that crop's centre, one stride wide.
    ``probabilities``: show per-cell softmax probabilities (else raw scores). The PNG is
    ``size_inches * dpi`` pixels.
    """
    plt = _pyplot()
    scores = np.asarray(scores, np.float32)
    if scores.ndim != 3:
        raise ValueError(f"scores must be (P, Q, K), got shape {scores.shape}")
    p_rows, q_cols, k = scores.shape
    maps = np.asarray(jax.nn.softmax(scores, axis=-1)) if probabilities else scores
    pooled = maps.mean(axis=(0, 1))
    order = [int(c) for c in np.argsort(-pooled)[:max(1, min(top, k))]]
    cls = order[0] if cls is None else int(cls)
    if not 0 <= cls < k:
        raise ValueError(f"class {cls} is out of range for {k} classes")
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    label = lambda c: f"{names[c]}" if names[c] == str(c) else f"{c}: {names[c]}"  # noqa: E731

    th, tw = train_size
    # Cell centres are at (tw/2 + q*stride); each cell spans one stride.
    extent = (tw / 2 - stride / 2, tw / 2 + (q_cols - 0.5) * stride,
              th / 2 + (p_rows - 0.5) * stride, th / 2 - stride / 2)
    img = np.asarray(image)
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    h, w = img.shape[:2]

    fig = plt.figure(figsize=size_inches, dpi=dpi)
    n_grid = len(order)
    if w / h > 1.6:  # a wide image: overlay on top, the class maps in rows below
        cols = min(n_grid, 3)
        rows = math.ceil(n_grid / cols)
        outer = fig.add_gridspec(2, 1, height_ratios=(1.3, 1.0), hspace=0.25)
    else:
        cols = math.ceil(math.sqrt(n_grid))
        rows = math.ceil(n_grid / cols)
        outer = fig.add_gridspec(1, 2, width_ratios=(1.25, 1.0), wspace=0.12)
    ax = fig.add_subplot(outer[0])
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, extent=(0, w, h, 0))
    vmax = float(maps[..., cls].max()) if probabilities else None
    heat = ax.imshow(maps[..., cls], cmap="jet", alpha=alpha, extent=extent,
                     interpolation="bilinear", vmin=0.0 if probabilities else None, vmax=vmax)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_title(f"class {label(cls)} (pooled {pooled[cls]:.3f})", fontsize=10)
    ax.axis("off")
    fig.colorbar(heat, ax=ax, fraction=0.035, pad=0.02)
    inner = outer[1].subgridspec(rows, cols, hspace=0.35, wspace=0.15)
    # One colour scale for the grid, so that the maps compare.
    lo, hi = (0.0, float(maps[..., order].max())) if probabilities else \
        (float(maps[..., order].min()), float(maps[..., order].max()))
    for i, c in enumerate(order):
        sub = fig.add_subplot(inner[i // cols, i % cols])
        sub.imshow(maps[..., c], cmap="viridis", interpolation="nearest", vmin=lo, vmax=hi)
        sub.set_title(f"{label(c)[:22]} {pooled[c]:.3f}", fontsize=8)
        sub.set_xticks([])
        sub.set_yticks([])
    head = title or "fully-convolutional score map"
    fig.suptitle(f"{head}\nmap {p_rows}x{q_cols}, stride {stride} px, image {h}x{w}, "
                 f"crop {th}x{tw}", fontsize=11)
    _save(fig, path, dpi)
    return path


def _save(fig, path, dpi):
    plt = _pyplot()
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


# ----------------------------------------------------------------------------------------
# Training curves and confusion matrices.

def plot_curves(history: Sequence[Mapping], path) -> str | None:
    """Loss and accuracy against epoch (matplotlib, Agg) into ``path``."""
    if not history:
        return None
    plt = _pyplot()

    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [r["loss"] for r in history], "o-", label="train")
    ax1.plot(epochs, [r["eval_loss"] for r in history], "o-", label="eval")
    ax1.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax2.plot(epochs, [r["train_accuracy"] for r in history], "o-", label="train")
    ax2.plot(epochs, [r["eval_accuracy"] for r in history], "o-", label="eval")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    from matplotlib.ticker import MaxNLocator
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), ".tmp-" + os.path.basename(path))
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return os.fspath(path)


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """Counts ``[true, predicted]``."""
    m = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(m, (np.asarray(labels, np.int64), np.asarray(predictions, np.int64)), 1)
    return m


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], path, title="") -> str:
    plt = _pyplot()

    k = len(matrix)
    size = min(max(4.0, 0.45 * k + 2), 30)
    fig, ax = plt.subplots(figsize=(size, size))
    rows = matrix.sum(1, keepdims=True)
    ax.imshow(matrix / np.maximum(rows, 1), cmap="Blues", vmin=0, vmax=1)
    if k <= 30:
        ax.set_xticks(range(k), class_names, rotation=90)
        ax.set_yticks(range(k), class_names)
        for i in range(k):
            for j in range(k):
                if matrix[i, j]:
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if matrix[i, j] > 0.5 * max(rows[i, 0], 1) else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return os.fspath(path)


# ----------------------------------------------------------------------------------------
# Filters and activations as image grids (NumPy + Pillow, no axes).

def _tile(tiles: np.ndarray, cols: int | None = None, pad: int = 1, fill: float = 1.0) -> np.ndarray:
    """(n, h, w[, 3]) in [0, 1] -> one grid image, ``pad`` pixels of ``fill`` between tiles."""
    n, h, w = tiles.shape[:3]
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    shape = (rows * (h + pad) + pad, cols * (w + pad) + pad) + tiles.shape[3:]
    grid = np.full(shape, fill, np.float32)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h,
             pad + c * (w + pad):pad + c * (w + pad) + w] = tiles[i]
    return grid


def _unit(a: np.ndarray, axes) -> np.ndarray:
    lo = a.min(axis=axes, keepdims=True)
    hi = a.max(axis=axes, keepdims=True)
    return (a - lo) / np.maximum(hi - lo, 1e-12)


def filter_grid(kernel, *, cols: int | None = None, per_filter: bool = True) -> np.ndarray:
    """A conv kernel (kh, kw, Cin, Cout) as a grid image in [0, 1]: one tile per output
    filter, RGB when ``Cin == 3``, grey for 1 (other widths: the mean over inputs).
    ``per_filter``: stretch each filter to the full range (else one range for all)."""
    k = np.asarray(kernel, np.float32)
    if k.ndim != 4:
        raise ValueError(f"expected an HWIO kernel, got shape {k.shape}")
    tiles = np.moveaxis(k, 3, 0)  # (Cout, kh, kw, Cin)
    if tiles.shape[-1] not in (1, 3):
        tiles = tiles.mean(axis=-1, keepdims=True)
    tiles = _unit(tiles, (1, 2, 3) if per_filter else (0, 1, 2, 3))
    if tiles.shape[-1] == 1:
        tiles = tiles[..., 0]
    return _tile(tiles, cols)


def _write_png(array: np.ndarray, path: str, scale: int = 1) -> str:
    from PIL import Image

    a = np.clip(np.asarray(array, np.float32), 0, 1)
    a = (a * 255 + 0.5).astype(np.uint8)
    if scale > 1:
        a = np.repeat(np.repeat(a, scale, axis=0), scale, axis=1)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(a).save(path)
    return path


def save_filter_grid(kernel, path: str, *, scale: int | None = None, cols: int | None = None) -> str:
    """:func:`filter_grid` as a PNG, each pixel ``scale`` x ``scale`` (default: tiles of
    about 40 pixels)."""
    grid = filter_grid(kernel, cols=cols)
    kh = np.shape(kernel)[0]
    return _write_png(grid, path, scale or max(1, 40 // kh))


def first_conv(model, params) -> tuple[str, np.ndarray]:
    """``(path, kernel)`` of the first conv layer in the network, HWIO (a masked conv's
    kernel is expanded to the dense form)."""
    for path, layer in nn.leaf_layers(model.network):
        if layer.kind == "conv":
            p = params
            for name in path:
                p = p[name]
            kernel = p["kernel"]
            if kernel.ndim == 3:  # LeNet-5's masked C3 style: (kh, kw, connections)
                raise ValueError(f"first conv '{'/'.join(path)}' is masked; not drawable")
            return "/".join(path), np.asarray(kernel)
    raise ValueError(f"{model.name} has no conv layer")


def activation_grid(acts, *, max_maps: int = 64, cols: int | None = None) -> np.ndarray:
    """Activations (H, W, C) as an RGB grid image: the first ``max_maps`` channels, each
    stretched to [0, 1] and coloured with viridis."""
    import matplotlib

    a = np.asarray(acts, np.float32)
    if a.ndim != 3:
        raise ValueError(f"expected (H, W, C) activations, got shape {a.shape}")
    tiles = _unit(np.moveaxis(a[..., :max_maps], 2, 0), (1, 2))
    rgb = matplotlib.colormaps["viridis"](tiles)[..., :3]
    return _tile(rgb, cols)


def save_activation_grid(acts, path: str, *, max_maps: int = 64, min_tile: int = 48,
                         max_tile: int = 128) -> str:
    """:func:`activation_grid` as a PNG: maps smaller than ``min_tile`` pixels are
    upscaled (nearest), maps larger than ``max_tile`` subsampled, to keep files small."""
    a = np.asarray(acts)
    h = a.shape[0]
    if h > max_tile:
        step = math.ceil(h / max_tile)
        a = a[::step, ::step]
    grid = activation_grid(a, max_maps=max_maps)
    return _write_png(grid, path, max(1, math.ceil(min_tile / a.shape[0])))


def layer_output(model, variables, x, layer: str):
    """The output of the layer named ``layer`` (``"conv1"``, ``"features/conv3_1"``,
    ``"layer2"``) for the input batch ``x`` (N, H, W, C), in eval mode."""
    net = nn.truncate(model.network, tuple(layer.split("/")))
    fn = xla.jit(lambda p, s, x: net.apply(p, s, x, policy=model.policy)[0])
    return fn(variables["params"], variables.get("state", {}), jnp.asarray(x))


def save_layer_activations(model, variables, image, layer: str, path: str, *, config=None,
                           size: int | None = None, invert: bool = False,
                           max_maps: int = 64, max_tile: int = 128) -> np.ndarray:
    """The activations of ``layer`` for ``image`` (a photo, resized so that its shorter side is
    ``size``; default: the model's training size, centre-cropped to it) as a PNG grid at
    ``path`` (:func:`save_activation_grid`); returns them, (H, W, C). ``config``: the
    model's metadata with the weights' mean/std (:func:`load_model`)."""
    config = config or model.metadata()
    th, tw, channels = model.input_shape
    x = images.prepare(image, channels=channels, mean=config["mean"], std=config["std"],
                       size=size or th, invert=invert)
    if size is None:
        top, left = (x.shape[0] - th) // 2, (x.shape[1] - tw) // 2
        x = x[top:top + th, left:left + tw]
    acts = np.asarray(layer_output(model, variables, x[None], layer))[0]
    if acts.ndim != 3:
        raise ValueError(f"layer {layer!r} outputs shape {acts.shape}, not a map; layers: "
                         f"{', '.join(layer_names(model))}")
    save_activation_grid(acts, path, max_maps=max_maps, max_tile=max_tile)
    return acts


def layer_names(model) -> list[str]:
    """The paths :func:`layer_output` accepts."""
    return nn.layer_names(model.network)


# ----------------------------------------------------------------------------------------
# Models with weights, and the score-map report behind `zoo visualize scoremap`.

def load_model(name: str, weights: str = "random", *, seed: int = 0, input_shape=None):
    """``(model, variables, class_names, config)``. ``weights``: ``"random"`` (an init from
    ``seed``), a weight tag (``"lenet5.digits"``, ``"vgg16.tv_in1k"``) or a file, loaded by
    :func:`zoo.weights.load`. ``config`` has the mean/std the weights expect."""
    import zoo

    if weights in ("random", "", None):
        model = zoo.create(name)
        shape = input_shape or model.default_input_shape()
        variables = xla.jit(model.init, static_argnums=1)(jax.random.key(seed), tuple(shape))
        k = model.num_classes
        names = _default_class_names(k)
        return model, variables, names, model.metadata()
    from . import weights as pretrained

    model, variables, info = pretrained.load(weights, name, input_shape=input_shape, with_info=True)
    config = model.metadata()
    transforms = info.get("transforms")
    if transforms is not None:
        config["mean"], config["std"] = tuple(transforms.mean), tuple(transforms.std)
    return model, variables, list(info["class_names"]), config


def _default_class_names(k: int) -> list[str]:
    if k == 1000:
        try:
            from . import weights as pretrained

            return list(pretrained.imagenet_classes())
        except Exception:  # noqa: BLE001 - names are a nicety
            pass
    return [str(i) for i in range(k)]


def score_map_report(model, variables, image: np.ndarray, out: str, *, config=None,
                     size: int | None = 384, stride: int | None = None,
                     scales: Sequence[float] = (1.0,), cls: int | None = None, top: int = 5,
                     class_names: Sequence[str] | None = None, title: str | None = None,
                     invert: bool = False) -> dict:
    """Convert ``model``, compute the score map of ``image`` (uint8 photo; shorter side
    resized to ``size``), write the PNG ``out`` and return ``{"top": [(class, name,
    probability)], "map", "stride", "receptive_field", "compile_seconds", "run_seconds",
    "png", "fcn"}``. Probabilities are the softmax of the position-averaged scores."""
    from . import fully_conv

    config = config or model.metadata()
    fcn, fvars = fully_conv.convert(model, variables)
    x = images.prepare(image, channels=config["input_shape"][-1], mean=config["mean"],
                       std=config["std"], size=size, invert=invert)
    th, tw = fcn.train_size
    if x.shape[0] < th or x.shape[1] < tw:
        raise ValueError(f"the image is {x.shape[0]}x{x.shape[1]} after resizing, smaller than "
                         f"{fcn.name}'s {th}x{tw} crop; use a larger --size")
    sm = fully_conv.score_map(fcn, fvars, x, stride=stride, scales=scales)
    k = sm.scores.shape[-1]
    names = list(class_names) if class_names is not None else _default_class_names(k)
    probs = np.asarray(jax.nn.softmax(sm.pooled()))
    order = [int(c) for c in np.argsort(-probs)[:top]]
    fh, fw = sm.image_size
    shown = images.display(x[:fh, :fw], config["mean"], config["std"])
    head = title or (f"{fcn.name} fully convolutional (receptive field {fcn.receptive_field}, "
                     f"network stride {fcn.stride})")
    save_score_map(shown, sm.scores, out, stride=sm.stride, train_size=fcn.train_size,
                   class_names=names, cls=cls, top=min(top, 6), title=head)
    return {"top": [(c, names[c], float(probs[c])) for c in order],
            "map": tuple(sm.scores.shape[:2]), "stride": sm.stride,
            "network_stride": fcn.stride, "receptive_field": fcn.receptive_field,
            "image_size": sm.image_size, "compile_seconds": sm.compile_seconds,
            "run_seconds": sm.run_seconds, "png": out, "fcn": fcn}
