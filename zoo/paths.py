"""Parameter paths: one name per tensor, ``"params/layer2/0/conv1/kernel"``, everywhere.

The same ``/`` path names a tensor in params and state, checkpoints, summaries, weight
conversion, ``--freeze`` patterns and fine-tuning. This module flattens and rebuilds
pytrees by path, selects paths with fnmatch patterns, reads, writes and compares nested
dicts by path, and loads a flat dict into a template with a full account of what did not
fit.
"""
from __future__ import annotations

import fnmatch
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import numpy as np

__all__ = ["diff", "flatten", "get", "load_into", "map_with_paths", "mask", "matches", "merge",
           "mismatch_message", "mismatches", "path_str", "set_path", "shape_tree", "unflatten"]


def _key_name(k) -> str:
    tu = jax.tree_util
    if isinstance(k, tu.DictKey):
        return str(k.key)
    if isinstance(k, tu.SequenceKey):
        return str(k.idx)
    if isinstance(k, tu.GetAttrKey):
        return str(k.name)
    if isinstance(k, tu.FlattenedIndexKey):
        return str(k.key)
    return str(k)


def path_str(path) -> str:
    """A ``jax.tree_util`` key path as ``a/b/0/mu``."""
    return "/".join(_key_name(k) for k in path)


def flatten(tree, prefix: str = "") -> dict[str, Any]:
    """``{"a/b/c": leaf}`` for every leaf of ``tree`` (dicts, lists, tuples, namedtuples,
    registered dataclasses such as optax states)."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = path_str(path)
        name = f"{prefix}/{name}" if prefix and name else (prefix or name)
        if name in flat:
            raise ValueError(f"two leaves flatten to the same path {name!r}")
        flat[name] = leaf
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict:
    """Nested dicts from ``{"a/b/c": leaf}`` (the inverse of :func:`flatten` for dict trees)."""
    tree: dict = {}
    for name, leaf in flat.items():
        node = tree
        *parents, last = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"path {name!r} runs through a leaf")
        node[last] = leaf
    return tree


def map_with_paths(tree, fn: Callable[[str, Any], Any]):
    """``tree`` with every leaf replaced by ``fn(path, leaf)``."""
    return jax.tree_util.tree_map_with_path(lambda p, x: fn(path_str(p), x), tree)


# ----------------------------------------------------------------------------------------
# Patterns.

def _prefixes(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def matches(path: str, patterns: Iterable[str]) -> bool:
    """``fnmatch`` of ``path`` or any of its parent layers (``conv1`` matches
    ``conv1/kernel``; ``layer1/*`` matches everything under ``layer1``)."""
    return any(fnmatch.fnmatchcase(p, pat) for pat in patterns for p in _prefixes(path))


def mask(tree, patterns: Sequence[str], *, what: str = "pattern", noun: str = "path"):
    """A pytree of Python bools: the leaves :func:`matches` selects. A pattern that selects
    nothing is a ``ValueError`` naming it (``what``) and the top-level layers."""
    patterns = tuple(patterns or ())
    paths = list(flatten(tree))
    for pat in patterns:
        if not any(matches(p, [pat]) for p in paths):
            layers = sorted({p.split("/")[0] for p in paths})
            raise ValueError(f"{what} {pat!r} matches no {noun}; top-level layers: "
                             f"{', '.join(layers)} (paths look like {paths[0]!r})")
    return map_with_paths(tree, lambda p, _: matches(p, patterns))


# ----------------------------------------------------------------------------------------
# Nested dicts by path (a path is a tuple of names).

def get(tree, path: Sequence[str]):
    """The subtree at ``path``, or None."""
    for name in path:
        if not isinstance(tree, Mapping) or name not in tree:
            return None
        tree = tree[name]
    return tree


def set_path(tree, path: Sequence[str], value):
    """A copy of nested dict ``tree`` with ``path`` set (``value=None``: removed, with the
    dicts it leaves empty)."""
    if not path:
        return value
    tree = dict(tree)
    head, rest = path[0], tuple(path[1:])
    if not rest:
        if value is None:
            tree.pop(head, None)
        else:
            tree[head] = value
    elif head in tree:
        sub = set_path(tree[head], rest, value)
        if sub:
            tree[head] = sub
        else:
            tree.pop(head)
    return tree


def shape_tree(tree):
    """``tree`` with every leaf replaced by its shape."""
    return jax.tree_util.tree_map(lambda a: tuple(np.shape(a)), tree)


def diff(a, b, path: str = "") -> list[str]:
    """Where two nested dicts differ: ``"x/y"`` for a key on one side only, ``"x/y: A vs B"``
    for different leaves."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}/{k}".lstrip("/"))
            else:
                out += diff(a[k], b[k], f"{path}/{k}")
        return out
    return [] if a == b else [f"{path.lstrip('/')}: {a} vs {b}"]


# ----------------------------------------------------------------------------------------
# Loading into a template.

def _shape(x) -> tuple:
    shape = getattr(x, "shape", None)
    return tuple(shape) if shape is not None else tuple(np.shape(x))


def _flat(loaded: Mapping[str, Any]) -> Mapping[str, Any]:
    if loaded and not all(isinstance(k, str) and not isinstance(v, Mapping)
                          for k, v in loaded.items()):
        return flatten(loaded)
    return loaded


def mismatches(template, loaded: Mapping[str, Any], *,
               source: str = "loaded") -> dict[str, list[str]]:
    """Why ``loaded`` (flat ``path -> array``, or a nested dict) does not fill ``template``
    leaf for leaf: ``{"missing": [...], "unexpected": [...], "mis-shaped": [...]}``, one line
    per path with its shapes (``source`` names the loaded side); all empty when it fits."""
    loaded = _flat(loaded)
    items = jax.tree_util.tree_flatten_with_path(template)[0]
    tshapes = {path_str(p): _shape(t) for p, t in items}
    return {
        "missing": [f"{n} {s}" for n, s in tshapes.items() if n not in loaded],
        "unexpected": [f"{n} {_shape(loaded[n])}" for n in sorted(set(loaded) - set(tshapes))],
        "mis-shaped": [f"{n}: model {s}, {source} {_shape(loaded[n])}" for n, s in tshapes.items()
                       if n in loaded and s != _shape(loaded[n])],
    }


def mismatch_message(what: str, found: Mapping[str, Sequence[str]], *,
                     limit: int | None = None) -> str:
    """``"<what> (2 missing, ...):"`` and the lines of ``found`` (:func:`mismatches`,
    possibly with more kinds), at most ``limit`` per kind."""
    counts = ", ".join(f"{len(lines)} {kind}" for kind, lines in found.items())
    out = [f"{what} ({counts}):"]
    for kind, lines in found.items():
        shown = lines if limit is None else lines[:limit]
        out += [f"  {kind:<11} {line}" for line in shown]
        if len(shown) < len(lines):
            out.append(f"  {kind:<11} ... and {len(lines) - len(shown)} more")
    return "\n".join(out)


def load_into(template, loaded: Mapping[str, Any], *, what: str = "checkpoint",
              prefix: str = "", cast: bool = True):
    """``loaded`` (flat ``path -> array``, or a nested dict) restored into ``template``'s
    structure. Every template leaf must be filled with the same shape and every loaded path
    used; otherwise a ``ValueError`` lists the missing, unexpected and mis-shaped paths
    (:func:`mismatches`). Leaves are cast to the template's dtype when ``cast``."""
    loaded = _flat(loaded)
    if prefix:
        loaded = {k[len(prefix) + 1:]: v for k, v in loaded.items() if k.startswith(prefix + "/")}
    found = mismatches(template, loaded)
    if any(found.values()):
        raise ValueError(mismatch_message(f"{what} does not match the model", found))
    items, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for p, t in items:
        v = loaded[path_str(p)]
        if cast and hasattr(t, "dtype"):
            v = np.asarray(v).astype(t.dtype, copy=False)
        leaves.append(v)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def merge(loaded, template, *, skip: Sequence[str] = (), what: str = "weights"):
    """``template``'s structure filled from ``loaded``, except the leaves under the ``skip``
    patterns (:func:`matches`), which keep the template's values (a fresh classifier when
    fine-tuning to another class count). Returns ``(merged, skipped paths)``; anything else
    that does not fit raises as :func:`load_into` does."""
    tflat = flatten(template)
    lflat = dict(flatten(loaded))
    skipped = [p for p in tflat if skip and matches(p, skip)]
    for p in skipped:
        lflat[p] = tflat[p]
    return load_into(template, lflat, what=what), skipped
