"""Walking and rewriting a Layer tree by the names of its layers.

A *sequence* is a layer applied as its children in order: a :func:`Sequential`, or a trunk
with side heads (:func:`WithSideHeads`), whose main output is its trunk's. The *main path*
of a network is the layers reached through nested sequences, in order; side heads are not
on it. Rewrites keep every name, so the rewritten net takes the original params tree.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from .combinators import Sequential
from .layer import Layer


def leaf_layers(layer: Layer, path: tuple[str, ...] = ()):
    """``(path, layer)`` for every leaf layer of the tree, in order."""
    if not layer.children:
        yield path, layer
    for name, child in layer.children:
        yield from leaf_layers(child, path + (name,))


def side_heads(layer: Layer) -> set[str]:
    """Names of a layer's children that are side heads (``config["taps"]``)."""
    taps = layer.config.get("taps") if isinstance(layer.config, Mapping) else None
    return set(taps) if taps else set()


def is_sequence(layer: Layer) -> bool:
    return layer.kind == "sequential" or (layer.kind.startswith("sequential")
                                          and bool(side_heads(layer)))


def main_path(layer: Layer, path: tuple[str, ...] = ()):
    """``(path, layer, is_head)`` for every layer reached through nested sequences, in
    order; side heads are yielded with ``is_head=True`` and not descended into."""
    if not is_sequence(layer):
        yield path, layer, False
        return
    heads = side_heads(layer)
    for name, child in layer.children:
        if name in heads:
            yield path + (name,), child, True
        else:
            yield from main_path(child, path + (name,))


def rebuild(layer: Layer, replace: Mapping, path: tuple[str, ...] = ()) -> Layer:
    """The same tree with layers of the main path replaced (``replace[path]``: a Layer, or
    None to drop it); sequences become Sequentials (a trunk whose heads were dropped is
    one), keeping their ``scan`` mark."""
    if not is_sequence(layer):
        return replace.get(path, layer)
    items = []
    for name, child in layer.children:
        sub = path + (name,)
        if sub in replace and replace[sub] is None:
            continue
        items.append((name, rebuild(child, replace, sub)))
    return Sequential(items, scan=layer.config.get("scan", False))


def split(network: Layer, n: int) -> tuple[Layer, Layer]:
    """``(trunk, head)``: the first ``n`` layers of the main path and the rest, each keeping
    the original nesting and names, so both take the whole params tree. Side heads belong
    to neither."""
    leaves = [(path, head) for path, _, head in main_path(network)]
    main = [path for path, head in leaves if not head]
    drop_heads = {path: None for path, head in leaves if head}
    trunk = rebuild(network, {**drop_heads, **{p: None for p in main[n:]}})
    rest = rebuild(network, {**drop_heads, **{p: None for p in main[:n]}})
    return trunk, rest


def truncate(layer: Layer, path: Sequence[str], where: tuple[str, ...] = ()) -> Layer:
    """The network up to and including the layer at ``path`` ("layer2" or "layer2/0"),
    descending through sequences; it takes the original params (unused entries ignored)."""
    if not path:
        return layer
    if not is_sequence(layer):
        raise ValueError(f"'{'/'.join(where) or '<network>'}' is a {layer.kind!r} layer; "
                         f"only the layers of sequences can be reached by name")
    heads = side_heads(layer)
    names = [n for n, _ in layer.children if n not in heads]
    if path[0] not in names:
        raise ValueError(f"no layer {path[0]!r} in '{'/'.join(where) or '<network>'}'; "
                         f"layers: {', '.join(names)}")
    items = []
    for name, child in layer.children:
        if name in heads:
            continue
        if name == path[0]:
            items.append((name, truncate(child, path[1:], where + (name,))))
            break
        items.append((name, child))
    return Sequential(items, scan=layer.config.get("scan", False))


def layer_names(network: Layer) -> list[str]:
    """Every path :func:`truncate` accepts, in order (sequences and what they hold)."""
    out = []

    def visit(layer, path):
        if not is_sequence(layer):
            return
        heads = side_heads(layer)
        for name, child in layer.children:
            if name not in heads:
                out.append("/".join(path + (name,)))
                visit(child, path + (name,))

    visit(network, ())
    return out
