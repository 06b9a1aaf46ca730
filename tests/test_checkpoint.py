"""zoo.checkpoint: the zoo weight format, load-into-template errors, training checkpoints,
atomic writes."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import optax
import pytest
import safetensors

import zoo
from zoo import checkpoint as ckpt
from zoo import paths

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _lenet_variables(num_classes=10):
    model = zoo.create("lenet5", num_classes=num_classes)
    return model, model.init(jax.random.PRNGKey(0), (1, 32, 32, 1))


def _bn_variables():
    net = zoo.nn.Sequential([("conv1", zoo.nn.Conv(4, 3, padding=1)), ("bn1", zoo.nn.BatchNorm()),
                             ("flatten", zoo.nn.Flatten()), ("fc", zoo.nn.Dense(3))])
    _, params, state = net.init(jax.random.PRNGKey(1), (1, 4, 4, 2))
    return {"params": params, "state": state}


def test_round_trip_paths_and_metadata(tmp_path):
    variables = _bn_variables()
    meta = {"model": "tiny", "config": {"input_shape": (4, 4, 2), "num_classes": 3},
            "num_classes": 3, "input_shape": [4, 4, 2], "mean": [0.5, 0.5], "std": [0.2, 0.2]}
    path = ckpt.save_weights(variables, tmp_path / "w.safetensors", meta)
    with safetensors.safe_open(path, framework="numpy") as f:
        keys = set(f.keys())
        header = f.metadata()
    assert keys == {"params/conv1/kernel", "params/conv1/bias", "params/bn1/scale",
                    "params/bn1/bias", "params/fc/kernel", "params/fc/bias",
                    "state/bn1/mean", "state/bn1/var"}
    assert header["format"] == ckpt.WEIGHTS_FORMAT
    loaded, lmeta = ckpt.load_weights(path)
    assert lmeta["model"] == "tiny" and lmeta["num_classes"] == 3
    assert lmeta["config"]["input_shape"] == [4, 4, 2]
    assert lmeta["mean"] == [0.5, 0.5] and lmeta["zoo_version"] == zoo.__version__
    flat_a, flat_b = paths.flatten(variables), paths.flatten(loaded)
    assert flat_a.keys() == flat_b.keys()
    for k in flat_a:
        np.testing.assert_array_equal(np.asarray(flat_a[k]), flat_b[k])
        assert flat_b[k].dtype == np.asarray(flat_a[k]).dtype
    restored = paths.load_into(variables, loaded)
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(variables)


def test_load_into_lists_mismatched_paths(tmp_path):
    _, variables = _lenet_variables(10)
    path = ckpt.save_weights(variables, tmp_path / "lenet.safetensors", {"model": "lenet5"})
    loaded, _ = ckpt.load_weights(path)
    # another class count: the classifier is mis-shaped, named with both shapes
    five, _ = zoo.create("lenet5", num_classes=5).abstract_init((1, 32, 32, 1))
    with pytest.raises(ValueError) as e:
        paths.load_into(five, loaded)
    msg = str(e.value)
    assert "params/fc3/kernel: model (84, 5), loaded (84, 10)" in msg
    assert "params/fc3/bias: model (5,), loaded (10,)" in msg
    assert "conv1" not in msg
    # another architecture: missing and unexpected paths, with shapes
    other, _ = zoo.create("lenet5_1998").abstract_init((1, 32, 32, 1))
    with pytest.raises(ValueError) as e:
        paths.load_into(other, loaded)
    msg = str(e.value)
    assert "missing     params/c1/kernel (5, 5, 1, 6)" in msg
    assert "unexpected  params/conv1/kernel (5, 5, 1, 6)" in msg
    ok = paths.load_into(variables, loaded)
    np.testing.assert_array_equal(ok["params"]["fc3"]["kernel"], variables["params"]["fc3"]["kernel"])


def test_optimizer_state_round_trip(tmp_path):
    variables = _bn_variables()
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3, weight_decay=1e-4))
    opt_state = tx.init(variables["params"])
    grads = jax.tree_util.tree_map(lambda p: p * 0 + 0.1, variables["params"])
    _, opt_state = tx.update(grads, opt_state, variables["params"])
    tree = {"params": variables["params"], "state": variables["state"], "opt_state": opt_state,
            "step": np.int32(7), "rng": jax.random.PRNGKey(3)}
    manager = ckpt.CheckpointManager(tmp_path / "ckpts", keep=1)
    manager.save(7, tree, {"epoch": 1, "metrics": [{"epoch": 1, "loss": 0.5}], "eval_accuracy": 0.5})
    template = {**tree, "opt_state": tx.init(variables["params"])}
    restored, meta = manager.restore(template)
    assert meta["epoch"] == 1 and meta["metrics"] == [{"epoch": 1, "loss": 0.5}]
    assert meta["format"] == ckpt.TRAIN_FORMAT
    assert jax.tree_util.tree_structure(restored["opt_state"]) == jax.tree_util.tree_structure(opt_state)
    for a, b in zip(jax.tree_util.tree_leaves(opt_state), jax.tree_util.tree_leaves(restored["opt_state"])):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert int(restored["step"]) == 7
    # a training checkpoint is also a weights file
    weights, _ = ckpt.load_weights(manager.latest())
    assert set(weights) == {"params", "state"}


def test_manager_keeps_last_k_and_best(tmp_path):
    manager = ckpt.CheckpointManager(tmp_path, keep=2)
    tree = {"params": {"w": np.zeros(3, np.float32)}}
    for step, acc in zip(range(1, 6), [0.5, 0.9, 0.6, 0.7, 0.8]):
        manager.save(step, tree, {"eval_accuracy": acc})
    assert manager.steps() == [2, 4, 5]
    assert manager.best() == manager.path(2)
    assert manager.latest() == manager.path(5)


def test_interrupted_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    manager = ckpt.CheckpointManager(tmp_path, keep=3)
    good = {"params": {"w": np.arange(1000, dtype=np.float32)}}
    manager.save(1, good, {"eval_accuracy": 0.5})

    # fail after the new bytes were written but before the rename
    def broken_fsync(fd):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="simulated"):
        manager.save(2, {"params": {"w": np.full(1000, 7, np.float32)}}, {"eval_accuracy": 0.9})
    monkeypatch.undo()
    # fail in the rename itself (e.g. a KeyboardInterrupt at that moment)
    def broken_replace(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_weights(good, manager.path(1), {})
    monkeypatch.undo()

    assert manager.steps() == [1]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]
    restored, _ = manager.restore({"params": {"w": np.zeros(1000, np.float32)}})
    np.testing.assert_array_equal(restored["params"]["w"], good["params"]["w"])


_WRITER = textwrap.dedent("""
    import sys, numpy as np
    sys.path.insert(0, {repo!r})
    from zoo import checkpoint as ckpt
    manager = ckpt.CheckpointManager({directory!r}, keep=2)
    step = 0
    while True:
        step += 1
        big = np.full((4, 1 << 20), step, np.float32)          # 16 MB per checkpoint
        manager.save(step, {{"params": {{"w": big}}, "step": np.int32(step)}}, {{"epoch": step}})
        print(step, flush=True)
""")


def test_killed_writer_leaves_a_loadable_checkpoint(tmp_path):
    """SIGKILL a process that writes checkpoints back to back, at several moments: the newest
    checkpoint on disk always loads and is complete."""
    directory = str(tmp_path / "ckpts")
    proc = subprocess.Popen([sys.executable, "-c", _WRITER.format(repo=REPO, directory=directory)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "1"      # one checkpoint is complete
        time.sleep(0.35)                                    # kill in the middle of later saves
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    manager = ckpt.CheckpointManager(directory)
    steps = manager.steps()
    assert steps and len(steps) <= 3
    flat, meta = ckpt.load_flat(manager.latest())
    assert int(flat["step"]) == meta["epoch"] == steps[-1]
    assert flat["params/w"].shape == (4, 1 << 20)
    assert np.all(flat["params/w"] == steps[-1])
