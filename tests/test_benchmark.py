"""The benchmark harness keeps working: the smallest smoke run (one model, one repetition)
through scripts/benchmark.py's main, and its JSON. Not a measurement."""
import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

import zoo
from conftest import normal
from zoo import bench, nn

ROOT = os.path.join(os.path.dirname(__file__), "..")


def load_script():
    spec = importlib.util.spec_from_file_location("benchmark", os.path.join(ROOT, "scripts", "benchmark.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_run_writes_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    results = load_script().main(["--targets", "lenet5:infer:32:2", "--reps", "1", "--min-rep-s", "0",
                                  "--json", str(out)])
    data = json.loads(out.read_text())
    assert data["machine"]["jax"] == jax.__version__ and data["machine"]["cores"] >= 1
    assert data["peaks"]["float32"] > 0
    (t,) = data["targets"]
    assert (t["model"], t["mode"], t["size"], t["batch"], t["dtype"]) == ("lenet5", "infer", 32, 2, "float32")
    # lenet5: conv1 28*28*25*6 + conv2 10*10*150*16 + fc 400*120 + 120*84 + 84*10 MACs
    assert t["macs_per_image"] == 117_600 + 240_000 + 48_000 + 10_080 + 840
    assert t["flops_per_call"] == 2 * t["macs_per_image"] * 2
    r = t["runners"]["jax"]
    for key in ("img_s_median", "img_s_min", "img_s_max", "gflops", "fraction_of_peak", "compile_s",
                "seconds"):
        assert key in r, key
    assert r["reps"] == 1 and r["img_s_min"] <= r["img_s_median"] <= r["img_s_max"]
    assert r["compile_s"] > 0
    assert sum(t["conv_choices"].values()) == 2
    assert results["targets"][0]["target"] == t["target"]


def test_train_runner_steps_and_threads_state():
    model = zoo.create("lenet5")
    runner = bench.jax_runner(model, "train", 4, 32, optimizer="adam")
    first, second = float(runner.step()), float(runner.step())
    assert np.isfinite(first) and np.isfinite(second) and first != second


def test_auto_policy_matches_xla_values_and_gradients(winograd_as_shipped):
    """Every lever of the 'auto' policy, on the shapes where it acts, equals XLA's conv."""
    cases = [((4, 12, 12, 32), (3, 3, 32, 32), 1, 1, "xla+mmgrad"),  # under weight_grad='matmul'
             ((2, 4, 4, 8), (3, 3, 8, 8), 1, 1, "im2col"),           # small map
             ((2, 9, 9, 8), (1, 1, 8, 16), 2, 0, "im2col"),          # pointwise, strided
             ((2, 12, 12, 1), (5, 5, 1, 6), 1, 0, "taps"),           # single channel
             ((4, 11, 11, 32), (3, 3, 32, 40), 1, 1, "winograd"),    # odd map: cropped tiles
             ((6, 12, 12, 32), (3, 3, 32, 32), 1, 0, "winograd"),    # unpadded
             ((2, 13, 13, 8), (3, 3, 8, 16), 2, 1, "xla+stored")]    # the rest
    for shape, wshape, stride, pad, impl in cases:
        x = normal(0, shape)
        w = normal(1, wshape)
        run = lambda impl: (lambda x, w: nn.conv2d(x, w, stride=stride, padding=pad, rounding="floor",
                                                     impl=impl))
        probe = normal(2, run("xla")(x, w).shape)
        with nn.conv_levers(weight_grad="matmul", chunk_bytes=1), \
                nn.recording_conv_choices() as chosen:  # chunked (scanned) weight grad
            ya, ga = jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(run("auto")(x, w) * probe),
                                                argnums=(0, 1)))(x, w)
        assert [c[1] for c in chosen] == [impl]
        yx, gx = jax.value_and_grad(lambda x, w: jnp.sum(run("xla")(x, w) * probe), argnums=(0, 1))(x, w)
        np.testing.assert_allclose(ya, yx, rtol=1e-4)
        np.testing.assert_allclose(ga[0], gx[0], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(ga[1], gx[1], rtol=1e-4, atol=1e-4)


def test_policy_choices_by_shape(winograd_as_shipped):
    choose = lambda x, w, out, stride=(1, 1): nn.conv_policy(x, w, stride, (1, 1), 1, out)
    assert choose((8, 4, 4, 256), (3, 3, 256, 256), (4, 4)) == "im2col"
    assert choose((8, 56, 56, 64), (1, 1, 64, 256), (56, 56)) == "im2col"
    assert choose((8, 56, 56, 64), (3, 3, 64, 64), (56, 56)) == "xla+stored"
    with nn.conv_levers(store_input=False):
        assert choose((8, 56, 56, 64), (3, 3, 64, 64), (56, 56)) == "xla"
    with nn.conv_levers(weight_grad="matmul"):
        assert choose((8, 56, 56, 64), (3, 3, 64, 64), (56, 56)) == "xla+mmgrad"
        assert choose((8, 14, 14, 6), (5, 5, 6, 16), (10, 10)) == "xla+stored"
        assert choose((8, 8, 8, 64), (3, 3, 64, 64), (8, 8)) == "xla+stored"
    rows = bench.conv_choices(zoo.create("lenet5"), (1, 32, 32, 1))
    assert [r[1] for r in rows] == ["taps", "xla+stored"]
    with nn.conv_levers(single_channel=False, store_input=False):
        rows = bench.conv_choices(zoo.create("lenet5"), (1, 32, 32, 1))
    assert [r[1] for r in rows] == ["xla", "xla"]


def test_bfloat16_conv_accumulates_in_float32():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 32))
    w = jax.random.normal(jax.random.key(1), (3, 3, 32, 32))
    ref = nn.conv2d(x, w, padding=1, impl="xla")
    for impl in ("xla", "im2col", "auto"):
        y = nn.conv2d(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), padding=1, impl=impl)
        assert y.dtype == jnp.bfloat16
        err = float(jnp.max(jnp.abs(y.astype(jnp.float32) - ref)) / jnp.max(jnp.abs(ref)))
        assert err < 2e-2, (impl, err)


def test_has_scanned_runs_tells_which_programs_hold_a_scan():
    assert bench.has_scanned_runs(zoo.create("resnet152", num_classes=10), (1, 32, 32, 3))
    assert not bench.has_scanned_runs(zoo.create("resnet50", num_classes=10), (1, 32, 32, 3))
    with nn.scan_repeats(0):
        assert not bench.has_scanned_runs(zoo.create("resnet152", num_classes=10), (1, 32, 32, 3))
