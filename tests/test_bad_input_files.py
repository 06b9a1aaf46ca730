"""Bad weight files and checkpoints: every way a file can be bad is an error naming the path
and the fault, checkpoints prove their integrity with a content hash, ``--resume`` falls
back to the newest checkpoint that verifies, and pruning never reads tensors.

Case ids start with the class of fault they belong to: ``c1`` checkpoint integrity,
``c5`` absurd sizes in a weights file's metadata, ``c6`` weight files. Most cases build
no model and compile nothing."""
import os
import re
import shutil
import time

import numpy as np
import pytest

from zoo import checkpoint as ckpt
from zoo import cli, integrity, registry
from zoo import weights as W

ASSET = W.fetch("lenet5.digits")
NEVER_SUGGESTED = ("weights_only=False", "set to `False`", "likely succeed")


@pytest.fixture(scope="module")
def lenet():
    """The shipped lenet5.digits tensors and metadata (a 247 KB file: room for a 64 KB hole)."""
    flat, meta = ckpt.load_flat(ASSET)
    meta.pop("format")
    return flat, meta


def _zoo_file(path, lenet, **meta_changes):
    flat, meta = lenet
    meta = {k: v for k, v in {**meta, **meta_changes}.items() if v is not _DROP}
    return ckpt.save_flat(path, flat, meta, fmt=ckpt.WEIGHTS_FORMAT)


_DROP = object()


def _raises(exc, match, path, fn, *args, **kwargs):
    """``fn(*args)`` raises ``exc`` whose message matches ``match`` and names ``path``."""
    with pytest.raises(exc, match=match) as e:
        fn(*args, **kwargs)
    assert str(path) in str(e.value), str(e.value)
    for phrase in NEVER_SUGGESTED:
        assert phrase not in str(e.value)
    return str(e.value)


def _header_end(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little")


# ----------------------------------------------------------------------------------------
# Corrupt zoo files (class 1): the content hash, the header checks.

def _zero_64k(data):
    mid = len(data) // 2
    return data[:mid - 32768] + bytes(65536) + data[mid + 32768:]


def _flip(where):
    def corrupt(data):
        at = where(data)
        return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]
    return corrupt


def _replace(old, new):
    def corrupt(data):
        end = _header_end(data)
        assert data[:end].count(old) >= 1 and len(old) == len(new)
        return data[:end].replace(old, new, 1) + data[end:]
    return corrupt


def _digest_garbled(data):
    end = _header_end(data)
    digest = re.search(rb'"zoo-sha256":"([0-9a-f]{64})"', data[:end]).group(1)
    return data[:end].replace(digest, b"g" * 64) + data[end:]


CORRUPT = {
    "c1-zero-64k-middle": (_zero_64k, "corrupt: content hash mismatch"),
    "c1-flip-first-data-byte": (_flip(_header_end), "corrupt: content hash mismatch"),
    "c1-flip-middle-byte": (_flip(lambda d: len(d) // 2), "corrupt: content hash mismatch"),
    "c1-flip-last-byte": (_flip(lambda d: len(d) - 1), "corrupt: content hash mismatch"),
    "c1-flip-metadata-accuracy": (_replace(b'accuracy\\": 0.', b'accuracy\\": 1.'),
                                  "corrupt: content hash mismatch"),
    "c1-flip-tensor-name": (_replace(b'"params/conv1/bias"', b'"params/conv1/bia$"'),
                            "corrupt: content hash mismatch"),
    "c1-digest-garbled": (_digest_garbled, "corrupt: its zoo-sha256 entry is malformed"),
    "c1-truncated-4-bytes": (lambda d: d[:4], "truncated"),
    "c1-truncated-mid-header": (lambda d: d[:_header_end(d) // 2], "truncated"),
    "c1-truncated-after-header": (lambda d: d[:_header_end(d)], "truncated"),
    "c1-truncated-mid-data": (lambda d: d[:len(d) // 2], "truncated"),
    "c1-truncated-last-byte": (lambda d: d[:-1], "truncated"),
    "c1-trailing-bytes": (lambda d: d + b"\0" * 100, "100 bytes after the data"),
    "c1-header-json-broken": (lambda d: d[:8] + b"X" + d[9:], "header is not valid JSON"),
    "c1-header-length-garbage": (lambda d: b"\xff" * 8 + d[8:], "not a safetensors file"),
    "c1-metadata-json-broken": (_replace(b'"zoo":"{', b'"zoo":"['),
                                "zoo metadata is not valid JSON"),
}

LOADERS = {
    "load_flat": ckpt.load_flat,
    "load_weights": ckpt.load_weights,
    "weights.load": W.load,
    "restore": lambda p: ckpt.CheckpointManager(os.path.dirname(p)).restore({}, p),
}


@pytest.mark.parametrize("loader", ["load_flat", "load_weights", "weights.load", "restore"])
@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_zoo_file_is_refused_naming_it(case, loader, lenet, tmp_path):
    corrupt, match = CORRUPT[case]
    path = _zoo_file(tmp_path / "w.safetensors", lenet)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(corrupt(data))
    _raises(ValueError, match, path, LOADERS[loader], path)


def test_c1_unhashed_older_file_still_loads(lenet, tmp_path):
    """A file written before hashes existed (no zoo-sha256) loads unchecked."""
    import json

    import safetensors.numpy

    flat, meta = lenet
    path = tmp_path / "old.safetensors"
    safetensors.numpy.save_file(flat, str(path), metadata={
        "format": ckpt.WEIGHTS_FORMAT, "zoo": json.dumps(meta)})
    assert not integrity.verify(path)
    loaded, lmeta = ckpt.load_flat(path)
    assert lmeta["model"] == "lenet5" and loaded.keys() == flat.keys()


def test_c1_every_zoo_file_is_sealed_and_the_shipped_one_verifies(lenet, tmp_path):
    assert integrity.verify(ASSET)
    path = _zoo_file(tmp_path / "w.safetensors", lenet)
    assert integrity.verify(path)
    header = integrity.read_header(path)
    assert re.fullmatch("[0-9a-f]{64}", header.metadata[integrity.HASH_KEY])
    manager = ckpt.CheckpointManager(tmp_path / "ckpts")
    assert integrity.verify(manager.save(1, {"params": lenet[0]}, {"epoch": 1}))


# ----------------------------------------------------------------------------------------
# Files of the wrong kind (class 6).

def _text(path):
    path.write_text("these are not the weights you are looking for\n")
    return path


def _garbage(path):
    path.write_bytes(bytes(range(7, 256)) * 40)
    return path


def _empty(path):
    path.write_bytes(b"")
    return path


def _directory(path):
    path.mkdir()
    return path


def _missing(path):
    return path


def _torchvision_st(path):
    import safetensors.numpy

    safetensors.numpy.save_file({"fc.weight": np.ones((2, 3), np.float32)}, str(path))
    return path


KINDS = {
    "c6-missing": (_missing, FileNotFoundError, "no .*file.* at"),
    "c6-directory": (_directory, IsADirectoryError, "is a directory"),
    "c6-empty": (_empty, ValueError, r"is empty \(0 bytes\)"),
    "c6-text": (_text, ValueError, "is a text file"),
    "c6-garbage": (_garbage, ValueError, "not a safetensors file"),
}


@pytest.mark.parametrize("loader", ["load_flat", "load_weights", "weights.load",
                                    "weights.load-model", "read_state_dict", "load_torchvision"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_bad_safetensors_file(kind, loader, tmp_path):
    make, exc, match = KINDS[kind]
    path = make(tmp_path / "w.safetensors")
    fn = {"load_flat": ckpt.load_flat, "load_weights": ckpt.load_weights, "weights.load": W.load,
          "weights.load-model": lambda p: W.load(p, "resnet18"),
          "read_state_dict": W.read_state_dict,
          "load_torchvision": lambda p: W.load_torchvision("resnet18", p)}[loader]
    message = _raises(exc, match, path, fn, path)
    assert "does not say which model" not in message


PTH = {
    "c6-pth-missing": (_missing, FileNotFoundError, "no weights file at"),
    "c6-pth-directory": (_directory, IsADirectoryError, "is a directory"),
    "c6-pth-empty": (_empty, ValueError, r"is empty \(0 bytes\)"),
    "c6-pth-text": (_text, ValueError, "is a text file .*, not PyTorch weights"),
    "c6-pth-garbage": (_garbage, ValueError, "not a PyTorch weights file: neither a zip"),
}


@pytest.mark.parametrize("loader", ["weights.load", "read_state_dict"])
@pytest.mark.parametrize("kind", list(PTH))
def test_bad_pth_file_needs_no_torch_to_diagnose(kind, loader, tmp_path):
    make, exc, match = PTH[kind]
    path = make(tmp_path / "resnet18.pth")
    fn = (lambda p: W.load(p, "resnet18")) if loader == "weights.load" else W.read_state_dict
    _raises(exc, match, path, fn, path)


def _torch_file(torch, path, cut=None, obj=None):
    torch.save(obj if obj is not None else {"fc.weight": torch.ones(300, 300)}, str(path))
    if cut is not None:
        data = path.read_bytes()
        path.write_bytes(data[:cut(len(data))])
    return path


@pytest.mark.parametrize("case,cut", [("c6-pth-truncated-half", lambda n: n // 2),
                                      ("c6-pth-truncated-100-bytes", lambda n: 100),
                                      ("c6-pth-truncated-last-kb", lambda n: n - 1024)])
def test_truncated_pth_is_damaged(case, cut, tmp_path):
    torch = pytest.importorskip("torch")
    path = _torch_file(torch, tmp_path / "w.pth", cut)
    _raises(ValueError, "damaged or truncated PyTorch file", path, W.read_state_dict, path)


EVIL_RAN = []


def _evil_payload():
    EVIL_RAN.append(True)


class _Evil:
    def __reduce__(self):
        return (_evil_payload, ())


def test_c6_malicious_pth_is_refused_without_suggesting_weights_only_false(tmp_path):
    torch = pytest.importorskip("torch")
    path = _torch_file(torch, tmp_path / "evil.pth", obj={"fc.weight": torch.zeros(2), "x": _Evil()})
    _raises(ValueError, r"refused by torch.load\(weights_only=True\)", path,
            W.read_state_dict, path)
    assert not EVIL_RAN


def test_c6_load_weights_on_a_torchvision_file_points_to_weights_load(tmp_path):
    path = _torchvision_st(tmp_path / "resnet18.safetensors")
    for fn in (ckpt.load_weights, ckpt.load_flat):
        _raises(ValueError, r"not a zoo weights file.*zoo\.weights\.load", path, fn, path)


def test_c6_load_weights_on_a_pth_is_not_safetensors(tmp_path):
    torch = pytest.importorskip("torch")
    path = _torch_file(torch, tmp_path / "w.pth")
    _raises(ValueError, r"not a safetensors file.*PyTorch file.*zoo\.weights\.load", path,
            ckpt.load_weights, path)


def test_c6_unreadable_dtype_is_named(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(_torchvision_st(tmp_path / "x.safetensors").read_bytes()
                     .replace(b'"F32"', b'"F8X"'))
    _raises(ValueError, "dtype 'F8X', which NumPy cannot read", path, W.read_state_dict, path)


# ----------------------------------------------------------------------------------------
# NaN and inf weights (class 6): refused by default, listing the tensors.

@pytest.mark.parametrize("case,value", [("c6-nan", np.nan), ("c6-inf", np.inf),
                                        ("c6-neg-inf", -np.inf)])
@pytest.mark.parametrize("loader", ["load_weights", "weights.load"])
def test_nonfinite_zoo_weights_are_refused(case, value, loader, lenet, tmp_path):
    flat, meta = lenet
    bad = dict(flat)
    bad["params/conv1/kernel"] = flat["params/conv1/kernel"].copy()
    bad["params/conv1/kernel"][0, 0, 0, :3] = value
    bad["params/fc3/bias"] = np.full_like(flat["params/fc3/bias"], value)
    path = ckpt.save_flat(tmp_path / "w.safetensors", bad, meta, fmt=ckpt.WEIGHTS_FORMAT)
    fn = ckpt.load_weights if loader == "load_weights" else W.load
    message = _raises(ValueError, "2 weight tensor.* hold NaN or inf", path, fn, path)
    assert "params/conv1/kernel (" in message and "params/fc3/bias (" in message
    variables = fn(path, allow_nonfinite=True)[1 if loader == "weights.load" else 0]
    assert not np.all(np.isfinite(np.asarray(variables["params"]["fc3"]["bias"])))


def test_c6_nonfinite_torchvision_state_dict_is_refused(tmp_path):
    import safetensors.numpy

    path = tmp_path / "resnet18.safetensors"
    safetensors.numpy.save_file({"fc.weight": np.full((2, 3), np.nan, np.float32),
                                 "bn.num_batches_tracked": np.array(3, np.int64)}, str(path))
    _raises(ValueError, r"fc\.weight \(6 NaN, 0 inf of 6\)", path, W.read_state_dict, path)
    assert np.isnan(W.read_state_dict(path, allow_nonfinite=True)["fc.weight"]).all()


# ----------------------------------------------------------------------------------------
# Metadata checked before anything is built (classes 5 and 6).

META = {
    "c5-num-classes-10**12": (dict(num_classes=10 ** 12), "num_classes 1000000000000"),
    "c5-num-classes-over-max": (dict(num_classes=registry.MAX_CLASSES + 1), "num_classes"),
    "c5-num-classes-negative": (dict(num_classes=-1), "num_classes -1"),
    "c5-num-classes-zero": (dict(num_classes=0), "num_classes 0"),
    "c5-num-classes-text": (dict(num_classes="ten"), "num_classes 'ten'"),
    "c5-num-classes-float": (dict(num_classes=2.5), "num_classes 2.5"),
    "c5-num-classes-bool": (dict(num_classes=True), "num_classes True"),
    "c5-config-num-classes-10**12": (dict(num_classes=_DROP, config={"num_classes": 10 ** 12}),
                                     "config.num_classes 1000000000000"),
    "c5-input-shape-huge": (dict(input_shape=[10 ** 9, 32, 1]), "input_shape"),
    "c5-input-shape-text": (dict(input_shape="32x32"), "input_shape '32x32'"),
    "c5-input-shape-2d": (dict(input_shape=[32, 32]), r"input_shape \[32, 32\]"),
    "c6-mean-text": (dict(mean="grey"), "mean 'grey'"),
    "c6-std-zero": (dict(std=[0.0]), r"std \[0.0\]"),
    "c6-config-not-object": (dict(config=[1, 2]), "config is a list"),
    "c6-no-model": (dict(model=_DROP), "names no model.*no 'model' key"),
    "c6-model-null": (dict(model=None), "names no model.*model None"),
    "c6-model-unknown": (dict(model="lenet6"), "unknown model 'lenet6'"),
}


@pytest.mark.parametrize("case", list(META))
def test_weights_metadata_is_checked_before_building(case, lenet, tmp_path):
    changes, match = META[case]
    path = _zoo_file(tmp_path / "w.safetensors", lenet, **changes)
    t0 = time.perf_counter()
    _raises(ValueError, match, path, W.load, path)
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize("case,zoo", [("c6-metadata-json-broken", "{'model': 'lenet5'"),
                                      ("c6-metadata-not-object", "[1, 2]")])
def test_broken_metadata_json(case, zoo, lenet, tmp_path):
    path = tmp_path / "w.safetensors"
    ckpt.write_sealed(path, lenet[0], {"format": ckpt.WEIGHTS_FORMAT, "zoo": zoo})
    for fn in (W.load, ckpt.load_weights, ckpt.read_metadata):
        _raises(ValueError, "corrupt: its zoo metadata is", path, fn, path)


@pytest.mark.parametrize("case,argv", [
    ("c1-cli-predict-corrupt", ["--weights", "{corrupt}"]),
    ("c6-cli-predict-text", ["--weights", "{text}"]),
    ("c6-cli-predict-pth-directory", ["--model", "resnet18", "--weights", "{dir_pth}"]),
    ("c5-cli-predict-num-classes", ["--weights", "{huge}"]),
])
def test_cli_reports_bad_weights_without_traceback(case, argv, lenet, tmp_path, capsys):
    files = {"corrupt": tmp_path / "corrupt.safetensors", "text": _text(tmp_path / "t.safetensors"),
             "dir_pth": _directory(tmp_path / "d.pth"), "huge": tmp_path / "huge.safetensors"}
    _zoo_file(files["huge"], lenet, num_classes=10 ** 12)
    data = open(_zoo_file(files["corrupt"], lenet), "rb").read()
    files["corrupt"].write_bytes(_zero_64k(data))
    args = [a.format(**files) for a in argv]
    assert cli.main(["predict", *args, str(tmp_path / "digit.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert os.fspath(files[argv[-1][1:-1]]) in err


# ----------------------------------------------------------------------------------------
# Checkpoint managers: fallback to the newest checkpoint that verifies, pruning (class 1).

def _tree(lenet, step):
    flat, _ = lenet
    params = {k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith("params/")}
    from zoo.paths import unflatten

    return {"params": unflatten(params), "step": np.int32(step)}


def _manager_with(lenet, directory, steps=(1, 2, 3), keep=3):
    manager = ckpt.CheckpointManager(directory, keep=keep)
    for step in steps:
        manager.save(step, _tree(lenet, step), {"epoch": step, "eval_accuracy": step / 10})
    return manager


def _damage(path, how):
    data = open(path, "rb").read()
    if how == "corrupt":
        open(path, "wb").write(_flip(lambda d: len(d) // 2)(data))
    elif how == "truncated":
        open(path, "wb").write(data[:len(data) // 3])
    elif how == "empty":
        open(path, "wb").close()
    elif how == "text":
        open(path, "w").write("oops\n")
    elif how == "directory":
        os.unlink(path)
        os.mkdir(path)


FALLBACK = {"corrupt": "corrupt: content hash mismatch", "truncated": "truncated",
            "empty": r"empty \(0 bytes\)", "text": "is a text file", "directory": "is a directory"}


@pytest.mark.parametrize("how", list(FALLBACK))
def test_c1_restore_falls_back_to_the_newest_that_verifies(how, lenet, tmp_path):
    manager = _manager_with(lenet, tmp_path / "ckpts")
    _damage(manager.path(3), how)
    lines = []
    tree, meta, path, skipped = manager.restore_latest_valid(_tree(lenet, 0), log=lines.append)
    assert path == manager.path(2) and meta["epoch"] == 2 and int(tree["step"]) == 2
    assert [p for p, _ in skipped] == [manager.path(3)]
    assert len(lines) == 1 and manager.path(3) in lines[0] and re.search(FALLBACK[how], lines[0])
    # pruning reads headers only and never crashes on it; an unreadable header is never the
    # best (a damaged data section is only seen on loading, as here)
    if how != "corrupt":
        assert manager.best() == manager.path(2)
    manager.save(4, _tree(lenet, 4), {"epoch": 4, "eval_accuracy": 0.0})


def test_c1_restore_skips_nonfinite_and_other_structure(lenet, tmp_path):
    manager = _manager_with(lenet, tmp_path / "ckpts")
    nan = _tree(lenet, 3)
    nan["params"]["fc3"]["bias"] = np.full(10, np.nan, np.float32)
    manager.save(3, nan, {"epoch": 3})
    other = {"params": {"w": np.zeros(3, np.float32)}, "step": np.int32(4)}
    manager.save(4, other, {"epoch": 4})
    lines = []
    _, meta, path, skipped = manager.restore_latest_valid(_tree(lenet, 0), log=lines.append)
    assert path == manager.path(2) and len(skipped) == 2
    assert "does not match the model" in lines[0] and "hold NaN or inf" in lines[1]


def test_c1_restore_with_no_valid_checkpoint_lists_each(lenet, tmp_path):
    manager = _manager_with(lenet, tmp_path / "ckpts")
    for step, how in zip((1, 2, 3), ("empty", "truncated", "corrupt")):
        _damage(manager.path(step), how)
    with pytest.raises(ValueError, match="none of the 3 checkpoints") as e:
        manager.restore_latest_valid(_tree(lenet, 0))
    message = str(e.value)
    for step, match in zip((1, 2, 3), ("empty", "truncated", "content hash mismatch")):
        assert re.search(f"ckpt-0000000{step}.safetensors: .*{match}", message), message
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        ckpt.CheckpointManager(tmp_path / "none").restore_latest_valid({})


def test_c1_check_rejects_metadata(lenet, tmp_path):
    manager = _manager_with(lenet, tmp_path / "ckpts", steps=(1, 2))

    def needs_epoch_1(meta):
        if meta["epoch"] != 1:
            raise ValueError(f"epoch {meta['epoch']}")

    _, meta, path, skipped = manager.restore_latest_valid(_tree(lenet, 0), check=needs_epoch_1)
    assert path == manager.path(1) and skipped == [(manager.path(2), "epoch 2")]


@pytest.mark.parametrize("how", ["empty", "text", "truncated", "directory"])
def test_c1_unreadable_older_checkpoint_neither_crashes_pruning_nor_is_best(how, lenet, tmp_path):
    manager = _manager_with(lenet, tmp_path / "ckpts", steps=(1, 2), keep=2)
    _damage(manager.path(1), how)
    assert manager.best() == manager.path(2)
    manager.save(3, _tree(lenet, 3), {"epoch": 3, "eval_accuracy": 0.05})
    manager.save(4, _tree(lenet, 4), {"epoch": 4, "eval_accuracy": 0.01})
    kept = manager.steps()
    assert kept[-2:] == [3, 4] and 2 in kept       # ckpt 2 is the best
    assert (1 in kept) == (how == "directory")    # removed once older, unless not a file


def test_c1_metadata_of_another_type_is_never_best(tmp_path):
    manager = ckpt.CheckpointManager(tmp_path, keep=1)
    tree = {"params": {"w": np.zeros(3, np.float32)}}
    for step, acc in ((1, "high"), (2, float("nan")), (3, 0.5), (4, None)):
        manager.save(step, tree, {"eval_accuracy": acc})
    assert manager.best() == manager.path(3)


# ----------------------------------------------------------------------------------------
# --resume end to end (class 1): a corrupted latest checkpoint is skipped, and said so.

def test_c1_resume_skips_a_corrupt_latest_checkpoint(tmp_path, capsys):
    from zoo import data as zdata
    from zoo import nn
    import zoo
    from zoo import train as T

    def tiny():
        layers = [("conv1", nn.Conv(4, 3, padding=1)), ("relu1", nn.Relu()),
                  ("flatten", nn.Flatten()), ("fc", nn.Dense(10))]
        return zoo.Model(nn.Sequential(layers), dict(
            name="tiny", input_shape=(8, 8, 1), mean=(0.5,), std=(0.5,), num_classes=10,
            classifier="fc"))

    data = zdata.load("digits", image_shape=(8, 8, 1), seed=0)
    out = str(tmp_path / "run")
    settings = dict(epochs=3, batch_size=64, lr=1e-2, progress=False)
    T.run(model=tiny(), data=data, output_dir=out, stop_after_epoch=2, verbose=False, **settings)
    manager = ckpt.CheckpointManager(os.path.join(out, "checkpoints"))
    first, latest = manager.path(manager.steps()[0]), manager.latest()
    broken = str(tmp_path / "broken")
    shutil.copytree(out, broken)
    _damage(latest, "corrupt")
    capsys.readouterr()
    summary = T.run(model=tiny(), data=data, resume=out, verbose=True, **settings)
    text = capsys.readouterr().out
    assert f"skipped checkpoint {latest}: corrupt: content hash mismatch" in text
    assert f"resumed {first}: epoch 1" in text
    assert summary["completed"] and summary["epochs_completed"] == 3
    assert integrity.verify(manager.latest())

    # every checkpoint damaged: a ConfigError listing each, before any training
    bad = ckpt.CheckpointManager(os.path.join(broken, "checkpoints"))
    for step, how in zip(bad.steps(), ("truncated", "empty")):
        _damage(bad.path(step), how)
    with pytest.raises(T.ConfigError, match=f"--resume {re.escape(broken)}: none of the 2") as e:
        T.run(model=tiny(), data=data, resume=broken, verbose=False, **settings)
    assert "truncated" in str(e.value) and "empty (0 bytes)" in str(e.value)
