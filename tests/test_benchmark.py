"""The benchmark harness keeps working: the smallest smoke run (one model, one repetition)
through ``zoo benchmark``, and its JSON. Not a measurement."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo import bench, cli, kernels

def test_smoke_run_writes_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    assert cli.main(["benchmark", "--targets", "lenet5:infer:32:2", "--reps", "1",
                     "--min-rep-s", "0", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    m = data["machine"]
    assert m["jax"] == jax.__version__ and m["cores"] >= 1
    assert m["kind"] == f"{m['cpu']} (family {m['family']}, model {m['model']})"
    assert set(m["isa"]) <= set(zoo.machine.ISA_FLAGS)
    assert data["peaks"]["float32"] > 0 and data["peaks"]["bfloat16"] > 0   # both peaks
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
    assert t["target"] == "lenet5 infer 32px b2 float32"
    assert data["args"]["targets"] == ["lenet5:infer:32:2"] and data["wall_s"] > 0


def test_jit_option_is_checked_and_reaches_the_jax_runner(tmp_path, monkeypatch):
    """``--jit jax``: the runner compiles with plain jax.jit, recorded in the JSON args."""
    from zoo.bench import runners, suite
    assert runners._jit("jax") is jax.jit and runners._jit("zoo") is zoo.jit
    low = runners._jit("zoo", low_precision=True)     # bfloat16 runners: the CPU's bf16 dots
    assert low.func is zoo.jit and low.keywords == {"low_precision": True}
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs.get("jit"))
        return runners.jax_runner(*args, **kwargs)

    monkeypatch.setattr(suite, "jax_runner", spy)
    out = tmp_path / "bench.json"
    assert cli.main(["benchmark", "--targets", "lenet5:infer:32:2", "--reps", "1",
                     "--min-rep-s", "0", "--no-peak", "--jit", "jax", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert calls == ["jax"] and data["args"]["jit"] == "jax"
    assert data["xla_flags"] == os.environ.get("XLA_FLAGS", "")
    assert data["targets"][0]["runners"]["jax"]["img_s_median"] > 0
    assert bench.Options().jit == "zoo"
    with pytest.raises(ValueError, match="--jit 'flax': choose from zoo, jax"):
        bench.Options(jit="flax").validate()
    with pytest.raises(ValueError, match="--jit applies to the JAX runners"):
        bench.Options(jit="jax", targets=[]).validate()
    with pytest.raises(ValueError, match="jit must be one of zoo, jax, got 'flax'"):
        bench.jax_runner(zoo.create("lenet5"), "infer", 1, 32, jit="flax")


def test_train_runner_steps_and_threads_state():
    model = zoo.create("lenet5")
    runner = bench.jax_runner(model, "train", 4, 32, optimizer="adam")
    first, second = float(runner.step()), float(runner.step())
    assert np.isfinite(first) and np.isfinite(second) and first != second


def test_nnx_runner_is_timed_beside_the_pure_train_step(tmp_path):
    """``--nnx``: the model as a zoo.flax.NNX module, its nnx.jit step in the same rounds."""
    from zoo.bench import runners
    nnx = runners.nnx_runner(zoo.create("lenet5"), 4, 32, optimizer="sgd")
    losses = [float(nnx.step()) for _ in range(3)]
    assert all(np.isfinite(losses)) and losses[2] < losses[0]   # the module learns
    out = tmp_path / "bench.json"
    assert cli.main(["benchmark", "--targets", "lenet5:train:32:4", "--reps", "1",
                     "--min-rep-s", "0", "--no-peak", "--nnx", "--json", str(out)]) == 0
    target = json.loads(out.read_text())["targets"][0]
    assert set(target["runners"]) == {"jax", "nnx"} and target["runners"]["nnx"]["img_s_median"] > 0
    assert len(target["ratios"]["jax/nnx"]["rounds"]) == 1


def test_bfloat16_conv_accumulates_in_float32():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 32))
    w = jax.random.normal(jax.random.key(1), (3, 3, 32, 32))
    ref = kernels.conv2d(x, w, padding=1, impl="xla")
    for impl in ("xla", "im2col", "auto"):
        y = kernels.conv2d(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), padding=1, impl=impl)
        assert y.dtype == jnp.bfloat16
        err = float(jnp.max(jnp.abs(y.astype(jnp.float32) - ref)) / jnp.max(jnp.abs(ref)))
        assert err < 2e-2, (impl, err)


def test_has_scanned_runs_tells_which_programs_hold_a_scan():
    resnet152 = zoo.create("resnet152", num_classes=10)
    assert bench.has_scanned_runs(resnet152, (1, 32, 32, 3))
    assert not bench.has_scanned_runs(zoo.create("resnet50", num_classes=10), (1, 32, 32, 3))
    unrolled = resnet152.with_policy(resnet152.policy.replace(scan_min_run=0))
    assert not bench.has_scanned_runs(unrolled, (1, 32, 32, 3))


def _photo_folder(root, n=12, classes=2):
    from PIL import Image
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"c{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(d / f"{i}.jpg")
    return root


def test_input_pipeline_smoke_reports_both_rates_and_the_ratio(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    folder = _photo_folder(tmp_path / "photos")
    out = tmp_path / "bench.json"
    assert cli.main(["benchmark", "--input-pipeline", str(folder), "--workers", "0", "--reps", "1",
                     "--pipeline-batches", "2", "--pipeline-batch-size", "4",
                     "--pipeline-train", "lenet5", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["targets"] == [] and data["peaks"] == {}   # the pipeline alone
    p = data["input_pipeline"]
    assert (p["images"], p["torch_images"], p["workers"], p["batches"], p["rounds"]) == \
        (12, 12, 0, 2, 1)
    for name in ("zoo", "torch"):
        assert p[name]["img_s"]["median"] > 0 and len(p[name]["img_s"]["rounds"]) == 1
        assert p[name]["start_s"]["median"] > 0 and len(p[name]["start_s"]["rounds"]) == 1
        assert p["stages_ms_per_image"][name]["decode_ms"] > 0
    assert p["ratio"]["median"] > 0 and len(p["ratio"]["rounds"]) == 1
    fed = data["fed_step"]   # lenet5's trainer fed from the folder against its bare step
    assert (fed["model"], fed["size"], fed["batch_size"], fed["rounds"]) == ("lenet5", 32, 4, 1)
    assert fed["fed_img_s"]["median"] > 0 and fed["bare_img_s"]["median"] > 0
    assert fed["ratio"]["rounds"] == [
        pytest.approx(fed["fed_img_s"]["median"] / fed["bare_img_s"]["median"])]


@pytest.mark.parametrize("options, error, match", [
    (dict(workers=4), ValueError, "--workers applies only with --input-pipeline"),
    (dict(pipeline_batches=5), ValueError,
     "--pipeline-batches applies only with --input-pipeline"),
    (dict(input_pipeline="/no/such/folder"), FileNotFoundError,
     "'/no/such/folder': no such folder"),
    (dict(input_pipeline=".", workers=-1), ValueError, "--workers must be an integer >= 0, got -1"),
    (dict(pipeline_train="resnet18"), ValueError,
     "--pipeline-train applies only with --input-pipeline"),
    (dict(input_pipeline=".", pipeline_train="resnet7"), ValueError, "--pipeline-train"),
    (dict(input_pipeline=".", pipeline_batches=1), ValueError,
     "--pipeline-batches must be an integer >= 2, got 1"),
])
def test_input_pipeline_options_are_checked_before_measuring(options, error, match):
    with pytest.raises(error, match=match):
        bench.Options(**options).validate()


def test_input_pipeline_too_few_images_is_an_error(tmp_path, capsys):
    pytest.importorskip("torchvision")
    folder = _photo_folder(tmp_path / "photos", n=6)
    assert cli.main(["benchmark", "--input-pipeline", str(folder), "--workers", "0",
                     "--pipeline-batch-size", "4"]) == 2
    err = capsys.readouterr().err
    assert "error: --input-pipeline" in err and "6 images make 1 batch(es)" in err
    assert "Traceback" not in err


def test_interleaving_times_each_call_settled_and_calibrated_past_its_first():
    """A fake clock: each call costs its time, plus a switch cost when another call ran just
    before it; the first call of each is slow (a compile)."""
    from zoo.tuning.measure import interleave
    cost = {"short": 0.010, "long": 0.600}
    now, last, seen, log = [0.0], [None], set(), []

    def make(name):
        def call():
            now[0] += cost[name] + (0.005 if last[0] not in (None, name) else 0.0) \
                + (1.0 if name not in seen else 0.0)
            seen.add(name)
            last[0] = name
            log.append(name)
        return call

    out = interleave({n: make(n) for n in cost}, rounds=4, min_rep_s=0.105,
                     block=lambda r: r, clock=lambda: now[0])
    # calibrated on warm calls: 10 calls of 10 ms make a 0.1 s repetition, not 1
    assert out["calls"] == {"short": 10, "long": 1}
    assert out["settled"] == {"short": True, "long": False}
    # the settling call absorbs the switch: the short call reads its own cost every round
    assert out["times"]["short"] == pytest.approx([0.010] * 4)
    # the long one (no settling call) carries the 5 ms switch, under 1% of its time, in the
    # rounds where the short one ran just before it (rounds 2 and 4 follow its own call)
    assert out["times"]["long"] == pytest.approx([0.605, 0.600, 0.605, 0.600])
    # warm-up 1, calibration 2 (short) or 1 (long), then 4 rounds of (1 + 10) or 1 calls
    assert log.count("short") == 1 + 2 + 4 * 11 and log.count("long") == 1 + 1 + 4
    # the order rotates: each round starts with the next call
    short, long = ["short"] * 11, ["long"]
    assert log[5:] == short + long + long + short + short + long + long + short
    # nothing timed before the rounds when asked for none
    again = interleave({"long": make("long")}, rounds=2, min_rep_s=0, warmup=0,
                       settle_below_s=0, block=lambda r: r, clock=lambda: now[0])
    assert again["calls"] == {"long": 1} and len(again["times"]["long"]) == 2
