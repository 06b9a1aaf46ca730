"""zoo.paths: one '/' path per tensor; patterns, nested-dict edits, merge for fine-tuning."""
import numpy as np
import optax
import pytest

from zoo import paths


def _tree():
    return {"params": {"conv1": {"kernel": np.zeros((3, 3, 1, 4)), "bias": np.zeros(4)},
                       "layer1": {"0": {"conv1": {"kernel": np.ones((3, 3, 4, 4))}}},
                       "fc": {"kernel": np.ones((4, 10)), "bias": np.ones(10)}},
            "state": {"bn1": {"mean": np.zeros(4)}}}


def test_flatten_and_unflatten_round_trip_any_pytree():
    tree = _tree()
    flat = paths.flatten(tree)
    assert sorted(flat) == ["params/conv1/bias", "params/conv1/kernel", "params/fc/bias",
                            "params/fc/kernel", "params/layer1/0/conv1/kernel", "state/bn1/mean"]
    back = paths.unflatten(flat)
    assert paths.shape_tree(back) == paths.shape_tree(tree)
    opt = optax.adam(1e-3).init({"w": np.zeros(2)})   # namedtuples and dataclasses too
    assert set(paths.flatten(opt, "opt_state")) == {"opt_state/0/count", "opt_state/0/mu/w",
                                                    "opt_state/0/nu/w"}
    with pytest.raises(ValueError, match="runs through a leaf"):
        paths.unflatten({"a": 1, "a/b": 2})


def test_patterns_match_a_path_or_any_parent_layer():
    assert paths.matches("params/layer1/0/conv1/kernel", ["params/layer1"])
    assert paths.matches("params/layer1/0/conv1/kernel", ["*/layer?/*"])
    assert not paths.matches("params/fc/kernel", ["params/f"])
    m = paths.flatten(paths.mask(_tree()["params"], ["conv*", "fc/bias"]))
    assert m == {"conv1/bias": True, "conv1/kernel": True, "fc/bias": True, "fc/kernel": False,
                 "layer1/0/conv1/kernel": False}
    with pytest.raises(ValueError, match="--freeze 'layer9' matches no parameter; top-level "
                                         "layers: conv1, fc, layer1"):
        paths.mask(_tree()["params"], ["layer9"], what="--freeze", noun="parameter")


def test_get_set_and_diff_by_path():
    tree = _tree()
    assert paths.get(tree, ("params", "fc", "bias")).shape == (10,)
    assert paths.get(tree, ("params", "nope")) is None
    cut = paths.set_path(tree, ("params", "layer1", "0", "conv1"), None)
    assert "layer1" not in cut["params"] and "layer1" in tree["params"]   # a copy; empties pruned
    moved = paths.set_path(tree, ("params", "fc", "bias"), np.zeros(3))
    assert paths.diff(paths.shape_tree(tree), paths.shape_tree(moved)) == [
        "params/fc/bias: (10,) vs (3,)"]
    assert paths.diff(paths.shape_tree(tree), paths.shape_tree(cut)) == ["params/layer1"]


def test_merge_keeps_the_templates_values_under_skip_and_checks_the_rest():
    template = _tree()
    loaded = paths.set_path(_tree(), ("params", "fc"), {"kernel": np.full((4, 7), 2.0),
                                                        "bias": np.full(7, 2.0)})
    loaded = paths.set_path(loaded, ("params", "conv1", "bias"), np.full(4, 5.0))
    merged, skipped = paths.merge(loaded, template, skip=["params/fc"])
    assert sorted(skipped) == ["params/fc/bias", "params/fc/kernel"]
    assert np.all(merged["params"]["fc"]["kernel"] == 1.0)        # the template's
    assert np.all(merged["params"]["conv1"]["bias"] == 5.0)       # the loaded
    with pytest.raises(ValueError, match=r"(?s)2 mis-shaped.*params/fc/kernel: model \(4, 10\), "
                                         r"loaded \(4, 7\)"):
        paths.merge(loaded, template, what="weights")
