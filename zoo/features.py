"""Features from inside a model: activations captured by name, headless models
(``num_classes=0``: the pooled features) and feature extractors (``features_only=True``:
the outputs of the family's stages, with :attr:`zoo.Model.feature_info`).

Capturing never rebuilds or reruns the net: the combinators report each named child's
output while the one program is traced (:func:`zoo.nn.capturing`), so ``capture=`` works
in train and eval mode, under ``jit`` and ``grad``. A name is a path of the main path,
as :func:`zoo.nn.layer_names` lists them ("layer2", "layer2/0", "pool5"). A path inside a
ResNet stage, whose identical blocks run as one ``lax.scan``, is captured with the scan
unrolled for that call (the same values; the compile takes longer).

A headless model drops the family's classifier layer (``classifier[0]``: ResNet's ``fc``,
VGG's ``fc8``); its output is what fed it (2048 pooled features for ResNet-50, VGG's 4096
after ``fc7``). A feature extractor is the net truncated after the family's last stage
(``register(..., features=...)``); its output is ``{stage: activation}``. Both take the
params of the full model's trunk at the same paths, so pretrained weights load into them
(:func:`zoo.weights.load_for_finetuning` leaves out what they lack).
"""
from __future__ import annotations

import difflib
from typing import Sequence

from . import nn


def check_capture(network: nn.Layer, capture, model: str = "model") -> tuple[str, ...]:
    """``capture`` as a tuple of layer paths of ``network``; an unknown one is an error
    listing the nearest names."""
    if capture is None:
        return ()
    if isinstance(capture, str):
        capture = (capture,)
    names = tuple(capture)
    known = nn.layer_names(network)
    for name in names:
        if not isinstance(name, str) or name not in known:
            near = difflib.get_close_matches(str(name), known, n=5, cutoff=0.5)
            raise ValueError(f"{model}: no layer {name!r} to capture"
                             + (f"; did you mean {', '.join(map(repr, near))}?" if near else "")
                             + f" (zoo.nn.layer_names(model.network) lists all "
                             f"{len(known)}: {', '.join(known[:12])}, ...)")
    return names


def run_capturing(network: nn.Layer, params, state, x, names: Sequence[str], *, train, rng,
                  policy):
    """``(y, new_state, {name: activation})`` of one application of ``network``."""
    if any("/" in n for n in names) and policy.scan_min_run:
        policy = policy.replace(scan_min_run=0)   # a scanned block reports no single output
    with nn.capturing(names) as got:
        y, new_state = network.apply(params, state, x, train=train, rng=rng, policy=policy)
    missing = [n for n in names if n not in got]
    if missing:   # a layer applied inside another's own loop (a lax.map, a scan)
        raise ValueError(f"layers {missing} ran inside a loop of their parent and cannot be "
                         f"captured; capture the enclosing layer")
    return y, new_state, {n: got[n] for n in names}


def headless(network: nn.Layer, classifier: Sequence[str], model: str) -> nn.Layer:
    """``network`` without its classifier layer (the first ``classifier`` path); side heads
    (auxiliary classifiers) are dropped with it."""
    if not classifier:
        raise ValueError(f"{model} registers no classifier layer, so num_classes=0 has "
                         f"nothing to remove")
    drop = {path: None for path, _, head in nn.main_path(network) if head}
    drop[tuple(classifier[0].split("/"))] = None
    return nn.rebuild(network, drop)


def extractor(network: nn.Layer, stages: Sequence[str], model: str) -> nn.Layer:
    """``network`` truncated after the last of ``stages`` (side heads dropped)."""
    if not stages:
        raise ValueError(f"{model} registers no feature stages (register(..., features=...)); "
                         f"use capture= with layer names instead")
    return nn.truncate(network, stages[-1].split("/"))


def feature_info(network: nn.Layer, input_shape, stages: Sequence[str]) -> list[dict]:
    """Per stage: name, channels, reduction (its stride from the input), receptive field
    and output shape (H, W, C) at ``input_shape`` (N, H, W, C), from the summary's
    arithmetic (:class:`zoo.nn.Recorder`): nothing is allocated."""
    import jax

    with nn.recording() as rec:
        jax.eval_shape(lambda k: network.init(k, tuple(input_shape)), jax.random.key(0))
    out = []
    for name in stages:
        shape, rf, jump = rec.ends[name]
        out.append(dict(name=name, channels=int(shape[-1]), stride=int(jump),
                        receptive_field=int(rf), shape=tuple(int(s) for s in shape[1:])))
    return out
