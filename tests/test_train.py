"""zoo.train, zoo train and zoo evaluate: the default run, resume, data
parallelism, the NaN guard, freezing, auxiliary losses, bad inputs."""
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import zoo
from zoo import checkpoint as ckpt
from zoo import paths
from zoo import data as zdata
from zoo import cli, nn
from zoo import train as T

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_model(num_classes=10, channels=1, dropout=0.0):
    """conv-BN-relu x2 (+ dropout) and a dense head on 8x8 inputs: compiles in a moment."""
    layers = [("conv1", nn.Conv(8, 3, padding=1)), ("bn1", nn.BatchNorm()), ("relu1", nn.Relu()),
              ("conv2", nn.Conv(8, 4, stride=2, padding=1)), ("bn2", nn.BatchNorm()),
              ("relu2", nn.Relu()), ("flatten", nn.Flatten())]
    if dropout:
        layers.append(("drop", nn.Dropout(dropout)))
    layers.append(("fc", nn.Dense(num_classes)))
    return zoo.Model(nn.Sequential(layers), dict(
        name="tiny", input_shape=(8, 8, channels), mean=(0.5,) * channels,
        std=(0.5,) * channels, num_classes=num_classes, classifier="fc"))


def _latest_flat(run_dir):
    manager = ckpt.CheckpointManager(os.path.join(run_dir, "checkpoints"))
    return ckpt.load_flat(manager.latest())[0]


def _metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


# ----------------------------------------------------------------------------------------
# The default run (lenet5 on the digits), shared by several tests.

@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """One 3-epoch default run, shared by the pytest-xdist workers (under a file lock in
    their common temporary root) so that it is trained once."""
    import fcntl

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent          # this session's root, common to its workers
    out = str(root / "zoo-default-run")
    with open(root / "zoo-default-run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not os.path.exists(os.path.join(out, "summary.json")):
                T.run(epochs=3, output_dir=out, progress=False, verbose=False)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    with open(os.path.join(out, "summary.json")) as f:
        return out, json.load(f)


def test_default_run_learns_digits(default_run):
    out, summary = default_run
    # measured 0.978 after 3 epochs (the 10-epoch default reaches ~0.98-0.99)
    assert summary["eval_accuracy"] >= 0.93
    assert summary["best_eval_accuracy"] >= summary["eval_accuracy"]
    assert summary["model"] == "lenet5" and summary["dataset"] == "digits"
    assert summary["epochs"] == 3 and summary["eval_split"] == "test"


def test_run_directory_contents(default_run):
    out, summary = default_run
    for name in ("config.json", "metrics.jsonl", "curves.png", "summary.json"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    assert config["settings"]["optimizer"] == "adam" and config["settings"]["batch_size"] == 64
    assert config["resolved"]["num_classes"] == 10 and config["resolved"]["image_shape"] == [32, 32, 1]
    rows = _metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert {"loss", "train_accuracy", "eval_accuracy", "lr", "images_per_second", "seconds"} <= set(rows[0])
    assert rows[-1]["loss"] < rows[0]["loss"]
    with open(os.path.join(out, "summary.json")) as f:
        saved = json.load(f)
    assert saved["checkpoint"] == summary["checkpoint"] and os.path.exists(saved["checkpoint"])
    assert saved["best_eval_accuracy"] == max(r["eval_accuracy"] for r in rows)
    # the best checkpoint is a zoo weights file with the model's metadata
    _, meta = ckpt.load_weights(saved["checkpoint"])
    assert meta["model"] == "lenet5" and meta["input_shape"] == [32, 32, 1]
    assert meta["eval_accuracy"] == saved["best_eval_accuracy"]


def test_evaluate_script_writes_confusion_matrix(default_run, capsys):
    out, summary = default_run
    assert cli.main(["evaluate", "--run", out]) == 0
    text = capsys.readouterr().out
    assert f"{summary['best_eval_accuracy']:.4f}" in text
    assert "per-class accuracy" in text and text.count("images)") >= 10
    assert os.path.getsize(os.path.join(out, "confusion_matrix.png")) > 0


def test_a_run_directory_written_before_the_model_metadata_split_still_loads(default_run, tmp_path):
    """Checkpoints written before ``Model.config`` was split from its metadata record one
    merged ``config`` with the classifier as a string (as the shipped lenet5.digits does):
    such a run evaluates to the same accuracy."""
    import shutil

    old = str(tmp_path / "old-run")
    shutil.copytree(default_run[0], old)
    manager = ckpt.CheckpointManager(os.path.join(old, "checkpoints"))
    for step in manager.steps():
        flat, meta = ckpt.load_flat(manager.path(step))
        meta["config"] = dict(meta["config"], classifier="fc3")
        meta.pop("format")
        ckpt.save_flat(manager.path(step), flat, meta, fmt=ckpt.TRAIN_FORMAT)
    model, variables, meta = T.load_run(old)
    assert meta["config"]["classifier"] == "fc3"
    assert model.classifier == ("fc3",) and model.num_classes == 10
    assert T.evaluate_run(old, output=str(tmp_path / "cm.png"))["accuracy"] == \
        default_run[1]["best_eval_accuracy"]


def test_resume_equals_uninterrupted(default_run, tmp_path):
    ref, _ = default_run
    out = str(tmp_path / "resumed")
    partial = T.run(epochs=3, output_dir=out, progress=False, verbose=False, stop_after_epoch=1)
    assert partial["epochs_completed"] == 1 and not partial["completed"]
    summary = T.run(resume=out, progress=False, verbose=False)
    assert summary["completed"] and summary["epochs_completed"] == 3
    a, b = _latest_flat(ref), _latest_flat(out)
    assert a.keys() == b.keys() and any(k.startswith("opt_state/") for k in a)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)      # bit-identical
    strip = lambda rows: [{k: v for k, v in r.items() if k not in T.TIMING_KEYS} for r in rows]  # noqa: E731
    assert strip(_metrics(ref)) == strip(_metrics(out))


# ----------------------------------------------------------------------------------------
# Multi-device: one SPMD program over 8 (forced) CPU devices equals one device.

_MULTI = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
    import jax, numpy as np
    from test_train import tiny_model
    from zoo import train as T
    assert len(jax.devices()) == 8
    model = tiny_model(dropout=0.25)
    variables = model.init(jax.random.PRNGKey(0), (1, 8, 8, 1))
    rs = np.random.RandomState(0)
    xs = rs.randn(4, 16, 8, 8, 1).astype(np.float32)
    ys = rs.randint(0, 10, (4, 16)).astype(np.int32)
    cfg = T.as_config(batch_size=16, optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True,
                      weight_decay=1e-3, label_smoothing=0.1, clip_norm=5.0, epochs=1)
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        trainer = T.Trainer(model, cfg, 4, devices=devices, params_template=variables["params"])
        ts = trainer.init_state(variables, seed=0)
        losses = []
        for x, y in zip(xs, ys):
            ts, m = trainer.train_step(ts, *trainer.put_batch(x, y))
            losses.append(float(m["loss"]))
        assert len(ts.params["fc"]["kernel"].sharding.device_set) == len(devices)
        results.append((losses, jax.device_get(ts)))
    (l1, s1), (l8, s8) = results
    np.testing.assert_allclose(l1, l8, rtol=0, atol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(s1), jax.tree_util.tree_leaves(s8)):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=0, atol=1e-5)
    # BN statistics came from the global batch: they moved identically
    np.testing.assert_allclose(s1.state["bn1"]["mean"], s8.state["bn1"]["mean"], atol=1e-6)
    try:
        T.Trainer(model, T.as_config(batch_size=12), 1, devices=jax.devices())
    except T.ConfigError as e:
        assert "not divisible by the 8 devices" in str(e), e
    else:
        raise AssertionError("batch 12 on 8 devices was accepted")
    print("OK", l1[-1], l8[-1])
""")


def test_eight_devices_equal_one_device():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _MULTI.format(repo=REPO, tests=os.path.dirname(__file__))],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK" in proc.stdout


# ----------------------------------------------------------------------------------------
# The NaN guard.

def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    """NaN pixels injected into the 3rd batch of epoch 2: the script exits 1 naming the step,
    epoch 1's checkpoint stays loadable, nothing of epoch 2 is written."""
    real = zdata.batches

    def poisoned(ds, batch_size, *, train, epoch, **kw):
        for i, (x, y) in enumerate(real(ds, batch_size, train=train, epoch=epoch, **kw)):
            if train and epoch == 1 and i == 2:
                x = np.full_like(x, np.nan)
            yield x, y

    monkeypatch.setattr(zdata, "batches", poisoned)
    out = str(tmp_path / "nan")
    code = cli.main(["train", "--epochs", "3", "--output-dir", out, "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    spe = zdata.steps_per_epoch(1438, 64)
    assert f"loss became nan at step {spe + 3} (epoch 2, batch 3)" in err
    manager = ckpt.CheckpointManager(os.path.join(out, "checkpoints"))
    assert manager.steps() == [spe]
    assert manager.path(spe) in err
    flat, meta = ckpt.load_flat(manager.latest())
    assert meta["epoch"] == 1 and all(np.all(np.isfinite(v)) for v in flat.values())
    assert len(_metrics(out)) == 1


# ----------------------------------------------------------------------------------------
# Fine-tuning controls.

def _digits8():
    return zdata.load("digits", image_shape=(8, 8, 1), seed=0)


def test_freeze_keeps_params_and_bn_statistics_bit_identical(tmp_path):
    model = tiny_model()
    out = str(tmp_path / "freeze")
    summary = T.run(model=model, data=_digits8(), epochs=1, batch_size=32, lr=1e-2,
                    weight_decay=1e-2, optimizer="adamw", freeze=("conv1", "bn1"),
                    output_dir=out, progress=False, verbose=False)
    assert summary["completed"]
    init = model.init(jax.random.PRNGKey(0), (1, 8, 8, 1))   # run() initialises from seed 0
    flat = _latest_flat(out)
    before = paths.flatten(init)
    for path in ("params/conv1/kernel", "params/conv1/bias", "params/bn1/scale",
                 "params/bn1/bias", "state/bn1/mean", "state/bn1/var"):
        np.testing.assert_array_equal(flat[path], np.asarray(before[path]), err_msg=path)
    for path in ("params/conv2/kernel", "params/bn2/scale", "state/bn2/mean", "params/fc/kernel"):
        assert not np.array_equal(flat[path], np.asarray(before[path])), path
    # frozen params carry no optimizer state
    assert not any("conv1" in k or "bn1" in k for k in flat if k.startswith("opt_state/"))


def test_finetune_from_pretrained_checkpoint_with_frozen_convs(default_run, tmp_path):
    """--pretrained takes a zoo checkpoint (through zoo.pretrained.load_for_finetuning);
    frozen layers stay bit-identical to the pretrained weights."""
    ref, summary = default_run
    out = str(tmp_path / "finetune")
    tuned = T.run(pretrained=summary["checkpoint"], freeze=("conv*",), epochs=1, lr=1e-3,
                  output_dir=out, progress=False, verbose=False)
    assert tuned["eval_accuracy"] >= 0.9
    start, _ = ckpt.load_flat(summary["checkpoint"])
    flat = _latest_flat(out)
    for path in ("params/conv1/kernel", "params/conv2/kernel", "params/conv2/bias"):
        np.testing.assert_array_equal(flat[path], start[path], err_msg=path)
    assert not np.array_equal(flat["params/fc1/kernel"], start["params/fc1/kernel"])


def test_freeze_pattern_matching_nothing_is_an_error():
    params = tiny_model().abstract_init()[0]["params"]
    with pytest.raises(T.ConfigError, match="matches no parameter.*conv1"):
        T.frozen_mask(params, ["layer9/*"])
    mask = paths.flatten(T.frozen_mask(params, ["conv*", "fc/bias"]))
    assert mask["conv1/kernel"] and mask["conv2/bias"] and mask["fc/bias"]
    assert not mask["fc/kernel"] and not mask["bn1/scale"]


def test_optimizer_groups_decay_mask_and_backbone_lr():
    params = tiny_model().abstract_init()[0]["params"]
    decay = paths.flatten(T.decay_mask(params))
    assert decay["conv1/kernel"] and decay["fc/kernel"]
    assert not decay["conv1/bias"] and not decay["bn1/scale"] and not decay["bn1/bias"]
    labels = paths.flatten(T.param_labels(params, "fc", T.frozen_mask(params, ["conv1"])))
    assert labels["fc/kernel"] == "head" and labels["conv1/kernel"] == "frozen"
    assert labels["bn2/scale"] == "backbone"
    # backbone lr scale: one SGD step moves the backbone by exactly scale x the head's rate
    cfg = T.as_config(optimizer="sgd", momentum=0.0, lr=0.1, schedule="constant",
                      backbone_lr_scale=0.25)
    real = jax.tree_util.tree_map(lambda s: jnp.ones(s.shape), params)
    tx, _ = T.make_optimizer(cfg, 10, real, classifier="fc")
    updates, _ = tx.update(real, tx.init(real), real)
    assert float(updates["fc"]["kernel"][0, 0]) == pytest.approx(-0.1)
    assert float(updates["conv2"]["kernel"][0, 0, 0, 0]) == pytest.approx(-0.025)


def test_schedules_and_label_smoothing():
    cfg = T.as_config(lr=1.0, epochs=10, warmup_epochs=2, schedule="cosine")
    s = T.make_schedule(cfg, 10)
    assert float(s(0)) == pytest.approx(0.05) and float(s(19)) == pytest.approx(0.9525)
    assert float(s(20)) == pytest.approx(1.0) and float(s(60)) == pytest.approx(0.5)
    assert float(s(100)) == pytest.approx(0.0, abs=1e-6)
    step = T.make_schedule(T.as_config(lr=1.0, epochs=4, schedule="step"), 10)
    assert [float(step(i)) for i in (19, 20, 29, 30)] == pytest.approx([1.0, 0.1, 0.1, 0.01])
    logits = jax.random.normal(jax.random.PRNGKey(0), (5, 7))
    labels = jnp.arange(5)
    smooth = optax.smooth_labels(jax.nn.one_hot(labels, 7), 0.1)
    np.testing.assert_allclose(T.cross_entropy(logits, labels, 0.1),
                               optax.softmax_cross_entropy(logits, smooth), rtol=1e-6)


def test_bfloat16_computes_in_bf16_with_float32_params():
    model = tiny_model()
    variables = model.init(jax.random.PRNGKey(0), (1, 8, 8, 1))
    x = np.random.RandomState(0).randn(16, 8, 8, 1).astype(np.float32)
    y = np.arange(16, dtype=np.int32) % 10
    losses = {}
    for dtype in ("float32", "bfloat16"):
        trainer = T.Trainer(model, T.as_config(batch_size=16, dtype=dtype), 1,
                            params_template=variables["params"])
        ts, m = trainer.train_step(trainer.init_state(variables), x, y)
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves((ts.params, ts.state)))
        losses[dtype] = float(m["loss"])
        hlo = trainer._train_step.lower(trainer.init_state(variables), x, y).as_text()
        assert ("bf16" in hlo) == (dtype == "bfloat16")
    assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=0.05)


def test_aux_classifier_losses_are_trained():
    """A network with side heads (GoogLeNet's aux classifiers) trains its heads with the aux
    loss, weighted by the model's ``aux_loss_weight`` unless the config overrides it; weight
    0 leaves them untouched."""
    layers = [("conv1", nn.Conv(4, 3, padding=1)), ("relu1", nn.Relu()),
              ("conv2", nn.Conv(4, 3, padding=1)), ("relu2", nn.Relu()),
              ("flatten", nn.Flatten()), ("fc", nn.Dense(10))]
    head = nn.Sequential([("flatten", nn.Flatten()), ("fc", nn.Dense(10))])
    net = nn.WithSideHeads(layers, {"aux1": head}, {"aux1": "relu1"})
    model = zoo.Model(net, dict(name="auxnet", input_shape=(8, 8, 1), mean=(0.5,), std=(0.5,),
                                num_classes=10, classifier="fc", aux_loss_weight=0.3))
    variables = model.init(jax.random.PRNGKey(0), (1, 8, 8, 1))
    x = np.random.RandomState(0).randn(8, 8, 8, 1).astype(np.float32)
    y = np.arange(8, dtype=np.int32)
    for weight, moves in ((None, True), (0.0, False)):
        trainer = T.Trainer(model, T.as_config(batch_size=8, aux_loss_weight=weight), 1,
                            params_template=variables["params"])
        ts, _ = trainer.train_step(trainer.init_state(variables), x, y)
        moved = not np.array_equal(ts.params["aux1"]["fc"]["kernel"], variables["params"]["aux1"]["fc"]["kernel"])
        assert moved == moves


# ----------------------------------------------------------------------------------------
# Image folders, and bad input.

def _image_folder(root, classes=("cat", "dog"), per_class=5, size=(12, 10)):
    from PIL import Image

    rs = np.random.RandomState(0)
    for k, name in enumerate(classes):
        os.makedirs(os.path.join(root, name))
        for i in range(per_class):
            base = np.zeros((*size, 3), np.uint8)
            base[..., k] = 200
            img = np.clip(base + rs.randint(0, 50, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(os.path.join(root, name, f"{i}.png"))
    return root


def test_image_folder_run_then_evaluate(tmp_path, capsys):
    folder = _image_folder(str(tmp_path / "pets"))
    out = str(tmp_path / "run")
    summary = T.run(dataset=folder, epochs=1, batch_size=8, output_dir=out, progress=False,
                    verbose=False)
    assert summary["dataset"] == "pets" and summary["eval_size"] == 2
    rows = _metrics(out)
    assert rows[0]["step"] == 1          # 8 training images, batch 8: one step
    assert cli.main(["evaluate", "--run", out]) == 0
    text = capsys.readouterr().out
    assert "cat" in text and "dog" in text
    assert os.path.exists(os.path.join(out, "confusion_matrix.png"))


def test_tfds_mock_mnist_and_cifar10_through_training_and_evaluation(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=16):
        out = str(tmp_path / "mnist")
        summary = T.run(dataset="mnist", data_dir=str(tmp_path / "tfds"), epochs=1,
                        batch_size=16, output_dir=out, progress=False, verbose=False)
        assert summary["completed"] and summary["eval_split"] == "test"
        assert summary["eval_size"] == 16 and _metrics(out)[0]["step"] == 1
        report = T.evaluate_run(out, log=lambda *a: None)
        assert report["count"] == 16 and os.path.exists(report["confusion_png"])
        out = str(tmp_path / "cifar10")
        summary = T.run(model=tiny_model(channels=3), dataset="cifar10", epochs=1, batch_size=16,
                        data_dir=str(tmp_path / "tfds"), output_dir=out, progress=False,
                        verbose=False)
        assert summary["completed"] and summary["dataset"] == "cifar10"


@pytest.mark.parametrize("argv, expected", [
    (["--model", "lenet7"], "unknown model 'lenet7'; choose from: "),
    (["--dataset", "nosuchdata"], "unknown dataset 'nosuchdata'; choose from: digits"),
    (["--batch-size", "5000"], "batch size 5000 is larger than"),
    (["--image-size", "12"], "12x12x1 images cannot be fed to lenet5"),
    (["--optimizer", "adam", "--warmup-epochs", "20", "--epochs", "2"], "warmup_epochs"),
])
def test_bad_input_exits_2_with_a_clear_message(argv, expected, tmp_path, capsys):
    code = cli.main(["train", *argv, "--output-dir", str(tmp_path / "x"), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err
    assert "Traceback" not in err
    if "model" in expected:
        assert "lenet5" in err and "lenet5_1998" in err


def test_bad_folders_and_resume_mistakes(tmp_path, default_run):
    one = _image_folder(str(tmp_path / "one"), classes=("only",))
    with pytest.raises(T.ConfigError, match="only one class"):
        T.run(dataset=one, output_dir=str(tmp_path / "r1"), verbose=False)
    ref, _ = default_run
    with pytest.raises(T.ConfigError, match="already holds a run"):
        T.run(output_dir=ref, verbose=False)
    with pytest.raises(T.ConfigError, match="cannot change lr"):
        T.run(resume=ref, lr=0.5, verbose=False)
    with pytest.raises(T.ConfigError, match="no config.json"):
        T.run(resume=str(tmp_path), verbose=False)
