"""The streaming input pipeline (zoo.data.stream): batches as a pure function of
(seed, epoch, index) whatever the worker count, shards that partition every epoch, the
image modes, unreadable images, TFDS through data_source, the choice of path, and a
streamed run resumed bit-identically with another worker count."""
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from zoo import checkpoint as ckpt
from zoo import cli
from zoo import data
from zoo import train as T
from zoo.data import stream as S


def _write_folder(root, classes=("a", "b", "c"), per_class=8, size=(16, 16), seed=0):
    """classes x per_class RGB PNGs, every other one in a nested subfolder."""
    rng = np.random.default_rng(seed)
    for c in classes:
        for i in range(per_class):
            sub = os.path.join(root, c, "nested") if i % 2 else os.path.join(root, c)
            os.makedirs(sub, exist_ok=True)
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(sub, f"{i}.png"))
    return str(root)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _write_folder(tmp_path_factory.mktemp("stream") / "folder", size=(16, 20))


@pytest.fixture(scope="module")
def sets(folder):
    return data.open_stream(folder, image_shape=(16, 16, 3), seed=0, augment="crop_flip")


def _epoch(ds, **kw):
    kw = dict(dict(batch_size=4, image_size=16, train=True, seed=3, epoch=1, workers=0), **kw)
    return list(data.stream_batches(ds, **kw))


# ---- batches ----------------------------------------------------------------------------

def test_batches_shapes_classes_and_eval_values(sets, folder):
    train, ev = sets
    assert (len(train), len(ev)) == (19, 5) and train.class_names == ["a", "b", "c"]
    it = data.stream_batches(train, batch_size=4, image_size=16, train=True, workers=0)
    assert it.class_names == ["a", "b", "c"] and len(it) == 4        # last partial dropped
    x, y = next(iter(it))
    assert x.shape == (4, 16, 16, 3) and x.dtype == np.float32 and y.dtype == np.int32
    # Evaluation: in order, every image, the in-memory path's fit, mean/std as given.
    out = _epoch(ev, train=False, mean=0.0, std=1.0)
    assert [len(b[1]) for b in out] == [4, 1]
    files = [train.reader.files[i] for i in ev.indices]
    want = np.stack([data.fit_image(np.asarray(Image.open(f).convert("RGB")), (16, 16, 3))
                     for f in files]).astype(np.float32) / 255
    np.testing.assert_allclose(np.concatenate([b[0] for b in out]), want, atol=1e-6)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in out]),
                                  train.reader.labels[ev.indices])


def test_same_seed_same_batches_whatever_the_workers(sets):
    train, _ = sets
    ref = _epoch(train)
    again = _epoch(train)
    two = _epoch(train, workers=2)           # the one run through Grain's worker processes
    for a, b, c in zip(ref, again, two):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[0], c[0])
        np.testing.assert_array_equal(a[1], c[1])
    other = _epoch(train, epoch=2)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(ref, other))


def test_run_stream_is_each_epochs_batches_from_one_iterator(sets):
    train, ev = sets
    kw = dict(batch_size=4, image_size=16, seed=3, workers=0)
    rs = data.RunStream(data.stream_batches(train, train=True, epoch=9, **kw),
                        data.stream_batches(ev, train=False, **kw), range(1, 3))
    with rs:
        for epoch in (1, 2):
            for got, want in zip(list(rs.train(epoch)), _epoch(train, epoch=epoch)):
                np.testing.assert_array_equal(got[0], want[0])
                np.testing.assert_array_equal(got[1], want[1])
            got, want = list(rs.evaluation(epoch)), _epoch(ev, train=False)
            assert [len(b[1]) for b in got] == [4, 1]
            np.testing.assert_array_equal(np.concatenate([b[0] for b in got]),
                                          np.concatenate([b[0] for b in want]))
        with pytest.raises(RuntimeError, match=r"nothing more \(every epoch was read\)"):
            rs.train(3)
    with data.RunStream(data.stream_batches(train, train=True, **kw), None, range(2)) as part:
        next(part.train(0))   # an epoch left after one batch: the next starts where it belongs
        for got, want in zip(list(part.train(1)), _epoch(train, epoch=1)):
            np.testing.assert_array_equal(got[0], want[0])
    again = data.RunStream(data.stream_batches(train, train=True, **kw), None, range(2))
    with pytest.raises(RuntimeError, match=r"asked for the train batches of epoch 1; the stream "
                                           r"holds the train batches of epoch 0 next"):
        again.train(1)
    with pytest.raises(RuntimeError, match="no evaluation set was given"):
        again.evaluation(0)


_WORKERS_SCRIPT = """
import sys
import numpy as np
from zoo import data
from zoo.data.tfds import _import_tfds

tfds = _import_tfds()   # TensorFlow after triton, as zoo imports them


class ZooTinyImages(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 3)),
            "label": tfds.features.ClassLabel(names=["a", "b", "c"])}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(12, 0), "test": self._generate_examples(6, 1)}

    def _generate_examples(self, n, seed):
        rng = np.random.default_rng(seed)
        for i in range(n):
            yield i, {"image": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "label": i % 3}


if __name__ == "__main__":
    ZooTinyImages(data_dir=sys.argv[1], file_format="array_record").download_and_prepare()
    tr, ev = data.open_stream("tfds:zoo_tiny_images", image_shape=(8, 8, 3), data_dir=sys.argv[1])
    kw = dict(batch_size=4, image_size=8, train=True, seed=1)
    ref = list(data.stream_batches(tr, workers=0, **kw))
    rs = data.RunStream(data.stream_batches(tr, workers=2, **kw),
                        data.stream_batches(ev, batch_size=4, image_size=8, train=False, workers=2),
                        range(3))
    got = list(rs.train(0)) + [len(list(rs.evaluation(0)))]
    first = next(rs.train(1))   # then closed in the middle of an epoch
    rs.close()
    same = all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
               for a, b in zip(ref, got[:-1]))
    print("same", same, len(ref), got[-1], first[0].shape)
"""


def test_tfds_files_read_by_worker_processes_and_closed_mid_epoch(tmp_path):
    """A prepared TFDS set (no mock: the workers are other processes) read by 2 workers
    equals the in-process batches; a run's stream closed in the middle of an epoch leaves
    no shared memory behind and says nothing at exit."""
    pytest.importorskip("tensorflow_datasets")
    import subprocess
    import sys
    script = tmp_path / "tiny_tfds.py"
    script.write_text(_WORKERS_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(
        __file__))), TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "tfds")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "same True 3 2 (4, 8, 8, 3)" in done.stdout, done.stdout + done.stderr[-3000:]
    for noise in ("leaked shared_memory", "Exception ignored", "Traceback"):
        assert noise not in done.stderr, done.stderr[-3000:]


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("train", [True, False])
def test_shards_partition_every_epoch(sets, n, train):
    ds = sets[0] if train else sets[1]
    full = _epoch(ds, train=train)
    shards = [_epoch(ds, train=train, shard=(i, n)) for i in range(n)]
    assert all(len(s) == len(full) for s in shards)
    for b, (x, y) in enumerate(full):   # each global batch is the shards' rows, in order
        np.testing.assert_array_equal(np.concatenate([s[b][0] for s in shards]), x)
        np.testing.assert_array_equal(np.concatenate([s[b][1] for s in shards]), y)


def test_labels_follow_their_images(sets):
    """With augment none, each streamed image equals its file's: no label is ever shifted."""
    train, _ = sets
    it = data.stream_batches(train, batch_size=4, image_size=16, train=True, augment="none",
                             mean=0.0, std=1.0, workers=0, seed=5)
    order = np.random.default_rng([5, 0, 0]).permutation(len(train))
    x, y = next(iter(it))
    for row in range(4):
        i = train.indices[order[row]]
        img = data.fit_image(np.asarray(Image.open(train.reader.files[i]).convert("RGB")),
                             (16, 16, 3)).astype(np.float32) / 255
        np.testing.assert_allclose(x[row], img, atol=1e-6)
        assert y[row] == train.reader.labels[i]


def test_random_resized_crop_and_a_path_source(folder):
    out = list(data.stream_batches(folder, batch_size=5, image_size=(12, 12), train=True,
                                   augment="random_resized_crop", workers=0, seed=1))
    assert len(out) == 4 and out[0][0].shape == (5, 12, 12, 3)   # the whole folder: 24 images
    again = list(data.stream_batches(folder, batch_size=5, image_size=(12, 12), train=True,
                                     augment="random_resized_crop", workers=0, seed=1))
    np.testing.assert_array_equal(out[2][0], again[2][0])


def test_modes_converted_and_16_bit_scaled(tmp_path):
    root = tmp_path / "modes"
    for c in ("x", "y"):
        (root / c).mkdir(parents=True)
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(root / "x" / "wide.png")  # I;16
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(root / "x" / "clear.png")   # over white
    Image.new("P", (8, 8), 3).save(root / "x" / "palette.png")
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(root / "y" / "cmyk.jpg")
    Image.new("L", (8, 8), 255).save(root / "y" / "gray.bmp")
    Image.new("RGB", (8, 8), (255, 255, 255)).save(root / "y" / "white.webp", lossless=True)
    for channels in (1, 3):
        train, ev = data.open_stream(str(root), image_shape=(8, 8, channels), val_fraction=0.5)
        x = np.concatenate([b[0] for b in data.stream_batches(
            ev, batch_size=8, image_size=8, train=False, mean=0.0, std=1.0, workers=0)] +
            [b[0] for b in data.stream_batches(
             train, batch_size=8, image_size=8, train=False, mean=0.0, std=1.0, workers=0)])
        assert x.shape == (6, 8, 8, channels)
        values = sorted(round(float(v), 3) for v in x.mean(axis=(1, 2, 3)))
        assert round(128 / 255, 3) in values and values[-1] == 1.0   # 32768/65535 -> 128/255


def test_unreadable_image_skipped_with_a_warning_or_strict_error(tmp_path):
    root = _write_folder(tmp_path / "bad", per_class=4)
    bad = os.path.join(root, "b", "0.png")
    with open(bad, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n not really")
    train, _ = data.open_stream(root, image_shape=(16, 16, 3), val_fraction=0.25, augment="none")
    with pytest.warns(UserWarning, match=r"skipped an unreadable image.*b/0\.png"):
        out = _epoch(train, batch_size=3, mean=0.0, std=1.0)
    assert sum(len(b[1]) for b in out) == 9
    strict, _ = data.open_stream(root, image_shape=(16, 16, 3), val_fraction=0.25,
                                 strict_images=True)
    with pytest.raises(data.ImageFileError, match=r"b/0\.png.*--strict-images"):
        _epoch(strict, batch_size=3)


# ---- bad input: a catalogue, none of it compiles or decodes much ------------------------

@pytest.mark.parametrize("kw, match", [
    (dict(workers=-1), r"workers must be an integer >= 0.*-1"),
    (dict(workers="2"), r"workers must be an integer >= 0.*'2'"),
    (dict(workers=True), r"workers must be an integer"),
    (dict(shard=(2, 2)), r"shard must be \(i, n\) with 0 <= i < n.*\(2, 2\)"),
    (dict(shard=(0, 0)), r"shard must be .*\(0, 0\)"),
    (dict(batch_size=0), r"batch size must be a positive integer, got 0"),
    (dict(augment="rotate"), r"augment must be one of .*'rotate'"),
    (dict(epoch=-1), r"epoch must be >= 0, got -1"),
    (dict(seed=-3), r"seed must be a non-negative integer, got -3"),
    (dict(std=0.0), r"std must be positive"),
    (dict(mean=(0.5, 0.5)), r"mean has 2 values for 3-channel images"),
])
def test_stream_batches_bad_arguments(sets, kw, match):
    with pytest.raises(data.DataError, match=match):
        data.stream_batches(sets[0], **dict(dict(batch_size=4, image_size=16, train=True,
                                                 workers=0), **kw))


@pytest.mark.parametrize("spec, kw, match", [
    ("digits", {}, r"streaming reads image folders and TFDS datasets.*--data-mode memory"),
    ("empty", {}, r"has no class subfolders"),
    ("one", {}, r"only one class subfolder \('only'\)"),
    ("missing", {}, r"does not exist"),
    ("folder", dict(image_shape=(16, 16, 4)), r"1 \(grayscale\) or 3 \(RGB\) channels.*4"),
    ("folder", dict(val_fraction=0.3, val_dataset="x"), r"either val_dataset or val_fraction"),
])
def test_open_stream_bad_sources(tmp_path, folder, spec, kw, match):
    (tmp_path / "empty").mkdir()
    (tmp_path / "one" / "only").mkdir(parents=True)
    Image.new("L", (4, 4)).save(tmp_path / "one" / "only" / "a.png")
    path = {"digits": "digits", "folder": folder}.get(spec, str(tmp_path / spec) + os.sep)
    kw = dict(dict(image_shape=(16, 16, 3)), **kw)
    with pytest.raises(data.DataError, match=match):
        data.open_stream(path, **kw)


# ---- the choice of path -----------------------------------------------------------------

def test_plan_data_auto_memory_stream(folder, monkeypatch):
    plan = data.plan_data("auto", folder, image_shape=(16, 16, 3))
    assert plan.mode == "memory" and plan.sets is None and plan.decoded_bytes == 24 * 16 * 16 * 3
    assert "25% of" in plan.reason
    assert data.plan_data("auto", "digits", image_shape=(8, 8, 1)).mode == "memory"
    assert data.plan_data("memory", folder, image_shape=(16, 16, 3)).mode == "memory"
    monkeypatch.setattr(S, "_memory_bytes", lambda: 4 * 24 * 16 * 16 * 3 - 4)  # budget: 1 short
    plan = data.plan_data("auto", folder, image_shape=(16, 16, 3))
    assert plan.mode == "stream" and len(plan.sets[0]) == 19 and "> " in plan.reason
    with pytest.raises(data.DataError, match="data mode must be one of"):
        data.plan_data("disk", folder, image_shape=(16, 16, 3))


@pytest.mark.parametrize("argv, match", [
    (["--data-mode", "disk"], r"invalid choice: 'disk'"),
    (["--workers", "-1"], r"--workers must be from 0 to 1,024, got -1"),
    (["--workers", "two"], r"invalid int value: 'two'"),
    (["--data-mode", "stream"], r"streaming reads image folders and TFDS datasets"),
])
def test_cli_flags(argv, match, capsys, tmp_path):
    assert cli.main(["train", "--output-dir", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    assert re.search(match, err), err


def test_config_fields_and_workers_warning():
    with pytest.raises(T.ConfigError, match=r"--data-mode 'disk' is not a data mode"):
        T.as_config(data_mode="disk")
    with pytest.raises(T.ConfigError, match=r"--workers must be an integer"):
        T.as_config(workers=1.5)
    cfg = T.as_config(data_mode="memory", workers=2)
    from zoo.train.config import check_given
    assert any("--workers is ignored" in w for w in check_given(cfg, {"workers"}))
    assert "workers" in T.RESUME_OVERRIDES and "data_mode" not in T.RESUME_OVERRIDES


# ---- TFDS through data_source (mocked; never downloads) ---------------------------------

def test_tfds_data_source_streamed(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with pytest.raises(ValueError, match=r"'mnist' is not prepared"):
        data.open_stream("mnist", image_shape=(32, 32, 1), data_dir=str(tmp_path))
    with tfds.testing.mock_data(num_examples=12):
        train, ev = data.open_stream("mnist", image_shape=(32, 32, 1), data_dir=str(tmp_path))
        assert (len(train), len(ev), ev.split, train.augment) == (12, 12, "test", "none")
        assert train.labels is None and train.class_names == [str(k) for k in range(10)]
        out = _epoch(train, batch_size=5, image_size=32)
        assert len(out) == 2 and out[0][0].shape == (5, 32, 32, 1)
        assert all(0 <= v < 10 for b in out for v in b[1])
        np.testing.assert_array_equal(out[1][0], _epoch(train, batch_size=5, image_size=32)[1][0])
        tr, va = data.open_stream("cifar10", image_shape=(16, 16, 3), val_fraction=0.25)
        assert (len(tr), len(va)) == (9, 3)
        assert len(_epoch(va, train=False, batch_size=2)) == 2


# ---- training: the header, and resume bit-identical with another worker count -----------

def _flat(run_dir):
    manager = ckpt.CheckpointManager(os.path.join(run_dir, "checkpoints"))
    return ckpt.load_flat(manager.latest())


def test_streamed_run_resumes_bit_identical_with_other_workers(tmp_path, capsys):
    root = _write_folder(tmp_path / "digits", per_class=6, size=(20, 20))
    base = dict(model="lenet5", dataset=root, image_size=32, batch_size=4, epochs=2,
                data_mode="stream", workers=0, progress=False, label_smoothing=0.0)
    ref = str(tmp_path / "ref")
    T.run(dict(base, output_dir=ref))
    out = capsys.readouterr().out
    assert "input: stream with 0 worker process(es)" in out and "streamed as chosen" in out
    part = str(tmp_path / "part")
    T.run(dict(base, output_dir=part), stop_after_epoch=1, verbose=False)
    summary = T.run({"resume": part, "workers": 2}, verbose=False)
    assert summary["completed"] and summary["epochs_completed"] == 2
    (a, _), (b, meta_b) = _flat(ref), _flat(part)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)      # bit-identical
    assert meta_b["data"] == {"mode": "stream", "seed": 0, "batch_in_epoch": 0}
    strip = lambda rows: [{k: v for k, v in r.items() if k not in T.TIMING_KEYS}  # noqa: E731
                          for r in rows]
    rows = [[json.loads(line) for line in open(os.path.join(d, "metrics.jsonl"))]
            for d in (ref, part)]
    assert strip(rows[0]) == strip(rows[1])
    with open(os.path.join(part, "config.json")) as f:
        assert json.load(f)["resolved"]["data_mode"] == "stream"
