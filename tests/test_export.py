"""zoo.export and ``zoo export``: each format's program, loaded by its own runtime (a process
without zoo for StableHLO, TensorFlow, ONNX Runtime), gives the zoo model's logits for two
batch sizes; bad arguments fail before anything is exported."""
import functools
import importlib.util
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo import cli, export, nn

TOL = 1e-4


@functools.cache
def lenet():
    """lenet5 with the weights that ship with the zoo, and its logits for 3 images."""
    model, variables = zoo.weights.load("lenet5.digits")
    x = np.random.default_rng(0).standard_normal((3, 32, 32, 1), dtype=np.float32)
    return model, variables, x, np.asarray(model.apply(variables["params"], variables["state"],
                                                       jnp.asarray(x))[0])


def _tensorflow():
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("TensorFlow is not installed (pip install -e '.[data]')")
    return export._import_tensorflow()[0]  # triton first: the other order crashes


# A process that imports jax and numpy only: argv is the exported file, the inputs (.npy) and
# where to write each batch's logits.
RUN_EXPORTED = """
import sys, jax, numpy as np
exported = jax.export.deserialize(open(sys.argv[1], "rb").read())
x = np.load(sys.argv[2])
for n, out in zip((2, 3), sys.argv[3:]):
    np.save(out, np.asarray(exported.call(x[:n])))
print(sorted(m for m in sys.modules if m.split(".")[0] in ("zoo", "tensorflow", "torch")))
"""


def test_stablehlo_runs_in_a_process_without_zoo(tmp_path):
    model, variables, x, expected = lenet()
    data = export.stablehlo(model, variables, (32, 32, 1))
    exported = jax.export.deserialize(data)
    assert exported.platforms == ("cpu", "cuda")
    assert str(exported.in_avals[0].shape) == "(b, 32, 32, 1)"
    assert str(exported.out_avals[0].shape) == "(b, 10)"
    (tmp_path / "lenet5.stablehlo").write_bytes(data)
    np.save(tmp_path / "x.npy", x)
    outs = [str(tmp_path / f"y{n}.npy") for n in (2, 3)]
    run = subprocess.run([sys.executable, "-c", RUN_EXPORTED, str(tmp_path / "lenet5.stablehlo"),
                          str(tmp_path / "x.npy"), *outs], capture_output=True, text=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
    for n, out in zip((2, 3), outs):
        y = np.load(out)
        assert y.shape == (n, 10)
        np.testing.assert_allclose(y, expected[:n], atol=TOL, rtol=0)


def test_stablehlo_fixed_batch_and_platform():
    model, variables, x, expected = lenet()
    exported = jax.export.deserialize(export.stablehlo(model, variables, None, batch=2,
                                                       platforms="cpu"))
    assert exported.platforms == ("cpu",)
    assert exported.in_avals[0].shape == (2, 32, 32, 1)
    np.testing.assert_allclose(np.asarray(exported.call(x[:2])), expected[:2], atol=TOL, rtol=0)
    with pytest.raises(ValueError, match="shape"):
        exported.call(x)
    assert export.signature(model, batch=2) == ((2, 32, 32, 1), (2, 10))


def test_bad_arguments_fail_before_exporting(tmp_path):
    model, variables, _, _ = lenet()
    with pytest.raises(ValueError, match=r"one image's \(H, W, C\)"):
        export.stablehlo(model, variables, (1, 32, 32, 1))
    with pytest.raises(ValueError, match="takes 1 channel"):
        export.stablehlo(model, variables, (32, 32, 3))
    for batch in (0, "dynamic", True):
        with pytest.raises(ValueError, match="batch must be"):
            export.stablehlo(model, variables, batch=batch)
    with pytest.raises(TypeError, match="variables must be"):
        export.stablehlo(model, variables["params"])
    with pytest.raises(ValueError, match="platforms"):
        export.stablehlo(model, variables, platforms=())
    (tmp_path / "file").write_text("x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export.check_output(tmp_path / "missing" / "m.onnx", "onnx")
    with pytest.raises(NotADirectoryError, match="is a file, not a directory"):
        export.check_output(tmp_path / "file" / "m.onnx", "onnx")
    with pytest.raises(IsADirectoryError):
        export.check_output(tmp_path, "stablehlo")
    with pytest.raises(ValueError, match="holds no SavedModel"):
        export.saved_model(model, variables, None, tmp_path / "other")
    with pytest.raises(ValueError, match="not a directory"):
        export.check_output(tmp_path / "file", "savedmodel")
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"


def test_saved_model_round_trip_and_replace(tmp_path, monkeypatch):
    tf = _tensorflow()
    model, variables, x, expected = lenet()
    path = str(tmp_path / "lenet5")
    fresh = model.init(jax.random.key(1))
    export.saved_model(model, fresh, None, path)           # replaced below
    assert export.saved_model(model, variables, (32, 32, 1), path) == path
    assert sorted(os.listdir(tmp_path)) == ["lenet5"]      # no temporary or old directory left
    serve = tf.saved_model.load(path).signatures["serving_default"]
    spec = serve.structured_input_signature[1]["images"]
    assert spec.shape.as_list() == [None, 32, 32, 1] and spec.dtype == tf.float32
    for n in (2, 3):
        y = serve(images=tf.constant(x[:n]))["logits"].numpy()
        assert y.shape == (n, 10)
        np.testing.assert_allclose(y, expected[:n], atol=TOL, rtol=0)

    def killed(module, tmp, signatures):  # a write that dies half-way
        with open(os.path.join(tmp, "saved_model.pb"), "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(tf.saved_model, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        export.saved_model(model, fresh, None, path)
    assert sorted(os.listdir(tmp_path)) == ["lenet5"]      # the good export is kept, whole
    y = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(x[:2]))
    np.testing.assert_allclose(y["logits"].numpy(), expected[:2], atol=TOL, rtol=0)


def _onnx_runtime():
    pytest.importorskip("jax2onnx")
    return pytest.importorskip("onnxruntime")


def _onnx_logits(ort, path, x):
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.shape, out.name) == ("images", ["b", *x.shape[1:]], "logits")
    return [session.run(["logits"], {"images": x[:n]})[0] for n in (2, 3)]


def test_onnx_round_trip(tmp_path):
    ort = _onnx_runtime()
    model, variables, x, expected = lenet()
    path = export.onnx(model, variables, (32, 32, 1), str(tmp_path / "lenet5.onnx"))
    for n, y in zip((2, 3), _onnx_logits(ort, path, x)):
        np.testing.assert_allclose(y, expected[:n], atol=TOL, rtol=0)


def test_onnx_strided_pools_and_floor_convs(tmp_path):
    """A conv whose floor rule drops an input row (negative padding to XLA) and a padded
    stride-2 max pool: both become what ONNX Runtime accepts, with the same outputs."""
    ort = _onnx_runtime()
    layers = [("conv", nn.Conv(4, 3, stride=2, rounding="floor")), ("relu", nn.Relu()),
              ("pool", nn.MaxPool(3, 2, padding=1, rounding="floor")), ("flatten", nn.Flatten()),
              ("fc", nn.Dense(3))]
    model = zoo.Model(nn.Sequential(layers), dict(name="tiny", input_shape=(10, 10, 1),
                                                  mean=(0.5,), std=(0.5,), num_classes=3))
    variables = model.init(jax.random.key(0))
    x = np.random.default_rng(1).standard_normal((3, 10, 10, 1), dtype=np.float32)
    expected = np.asarray(model.apply(variables["params"], variables["state"], x)[0])
    path = export.onnx(model, variables, None, str(tmp_path / "tiny.onnx"))
    for n, y in zip((2, 3), _onnx_logits(ort, path, x)):
        np.testing.assert_allclose(y, expected[:n], atol=TOL, rtol=0)


def test_onnx_resnet18(tmp_path):
    ort = _onnx_runtime()
    model = zoo.create("resnet18", num_classes=5)
    variables = model.init(jax.random.key(0), (1, 64, 64, 3))
    x = np.random.default_rng(2).standard_normal((3, 64, 64, 3), dtype=np.float32)
    expected = np.asarray(model.apply(variables["params"], variables["state"], x)[0])
    path = export.onnx(model, variables, (64, 64, 3), str(tmp_path / "resnet18.onnx"))
    for n, y in zip((2, 3), _onnx_logits(ort, path, x)):
        np.testing.assert_allclose(y, expected[:n], atol=TOL, rtol=0)


def test_cli_writes_stablehlo_that_matches_the_model(tmp_path, capsys):
    model, _, x, expected = lenet()
    out = str(tmp_path / "lenet5.stablehlo")
    assert cli.main(["export", "lenet5", "--weights", "lenet5.digits", "--format", "stablehlo",
                     "--out", out]) == 0
    said = capsys.readouterr()
    assert said.err == ""
    assert f"wrote {out} (" in said.out and "lenet5 with weights lenet5.digits" in said.out
    assert "(b, 32, 32, 1)" in said.out and "(b, 10): 10 classes" in said.out
    exported = jax.export.deserialize(open(out, "rb").read())
    for n in (2, 3):
        np.testing.assert_allclose(np.asarray(exported.call(x[:n])), expected[:n], atol=TOL,
                                   rtol=0)


def test_cli_random_weights_warn(tmp_path, capsys):
    out = str(tmp_path / "lenet5.stablehlo")
    assert cli.main(["export", "lenet5", "--format", "stablehlo", "--out", out, "--batch", "2",
                     "--num-classes", "4", "--platforms", "cpu"]) == 0
    said = capsys.readouterr()
    assert said.err.startswith("warning: no --weights: lenet5 is exported with freshly "
                               "initialised, random weights")
    exported = jax.export.deserialize(open(out, "rb").read())
    assert exported.in_avals[0].shape == (2, 32, 32, 1) and exported.out_avals[0].shape == (2, 4)
    assert exported.platforms == ("cpu",)


@pytest.mark.parametrize("argv,message", [
    (["lenet5", "--format", "tflite", "--out", "{tmp}/m"], "invalid choice: 'tflite'"),
    (["lenet5", "--format", "stablehlo", "--out", "{tmp}/missing/m"], "missing does not exist"),
    (["lenet_5", "--format", "stablehlo", "--out", "{tmp}/m"], "unknown model 'lenet_5'"),
    (["lenet5", "--format", "stablehlo", "--out", "{tmp}/m", "--batch", "0"], "--batch"),
    (["lenet5", "--weights", "lenet5.digits", "--num-classes", "3", "--format", "stablehlo",
      "--out", "{tmp}/m"], "have 10 classes"),
    (["resnet18", "--weights", "lenet5.digits", "--format", "stablehlo", "--out", "{tmp}/m"],
     "are for lenet5, not resnet18"),
])
def test_cli_bad_input_exits_2(tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert cli.main(["export", *argv]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err and "Traceback" not in err
    assert os.listdir(tmp_path) == []
