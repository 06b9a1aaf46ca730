"""zoo evaluate --weights: labelled folders in every layout (class subfolders by WordNet id,
index or name; a flat folder with a CSV or a label per line), TFDS through mock data, the
accuracy against the model applied directly, and the errors of bad layouts and flags."""
import json
import os

import numpy as np
import pytest
from PIL import Image

import zoo
from zoo import checkpoint as ckpt
from zoo import cli
from zoo.data import DataError
from zoo.data.layouts import ClassIndex, labelled_files
from zoo.data.sources import _digits_arrays
from zoo.weights import evaluate_weights, imagenet_classes

TAG = "lenet5.digits"
WNIDS = imagenet_classes(wnids=True)


def _digit_images(per_class=3):
    x, y = _digits_arrays()
    for k in range(10):
        for i in np.flatnonzero(y == k)[:per_class]:
            yield k, int(i), np.rint(x[i] * 255 / 16).astype(np.uint8)


def _write_folders(root, name=str):
    """10 classes x 3 sklearn digits as PNGs, one subfolder per class named ``name(k)``."""
    for k, i, pixels in _digit_images():
        os.makedirs(root / name(k), exist_ok=True)
        Image.fromarray(pixels).save(root / name(k) / f"d{i:04d}.png")
    return root


def _write_flat(root):
    """The same 30 digits in one folder; returns [(file name, class)] in sorted name order."""
    root.mkdir(exist_ok=True)
    rows = []
    for k, i, pixels in _digit_images():
        Image.fromarray(pixels).save(root / f"img{i:04d}.png")
        rows.append((f"img{i:04d}.png", k))
    return sorted(rows)


def _direct_top1(weights, files, labels):
    """Accuracy of the model applied directly to the same preprocessed images."""
    model, variables, info = zoo.weights.load(weights, with_info=True)
    x = np.stack([info["transforms"](f, model.input_shape[-1]) for f in files])
    logits = np.asarray(zoo.jit(lambda p, s, x: model.apply(p, s, x)[0])(
        variables["params"], variables["state"], x))
    return float(np.mean(np.argmax(logits, 1) == np.asarray(labels)))


@pytest.fixture(scope="module")
def imagenet_weights(tmp_path_factory):
    """A random 1000-class LeNet-5 saved as zoo weights with ImageNet's class names."""
    import jax

    model = zoo.create("lenet5", num_classes=1000)
    variables = model.init(jax.random.PRNGKey(0))
    path = str(tmp_path_factory.mktemp("w") / "lenet_in1k.safetensors")
    ckpt.save_weights({"params": variables["params"], "state": variables["state"]}, path,
                      {"model": "lenet5", "num_classes": 1000, "input_shape": [32, 32, 1],
                       "mean": [0.5], "std": [0.5], "class_names": imagenet_classes()})
    return path


def _eval(capsys, *argv, stderr=False):
    code = cli.main(["evaluate", "--no-progress", "--json", *argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Traceback" not in err
    report = json.loads(out.strip().splitlines()[-1])
    return (report, out, err) if stderr else (report, out)


# ----------------------------------------------------------------------------------------
# Layouts that evaluate.

def test_class_name_folders_match_the_model_applied_directly(tmp_path, capsys):
    root = _write_folders(tmp_path / "digits")
    report, out = _eval(capsys, "--weights", TAG, "--dataset", str(root),
                        "--output", str(tmp_path / "cm.png"), "--batch-size", "8")
    files = labelled_files(root, [str(k) for k in range(10)])
    assert report["count"] == 30 and report["layout"] == "class folders by class name"
    assert report["top1"] == pytest.approx(_direct_top1(TAG, files.files, files.labels), abs=1e-9)
    assert report["top1"] >= 0.9 and report["top5"] >= report["top1"]
    assert set(report["per_class_accuracy"]) == {str(k) for k in range(10)}
    assert np.asarray(report["confusion_matrix"]).sum() == 30
    assert os.path.getsize(tmp_path / "cm.png") > 0 and "top-1" in out and "cm.png" in out
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]


def test_index_folders_and_a_subset_of_the_classes(tmp_path, capsys):
    root = _write_folders(tmp_path / "idx", name=lambda k: f"{k:03d}")
    for k in range(4, 10):   # four classes left: the matrix gets an "(other)" column
        for f in os.listdir(root / f"{k:03d}"):
            os.remove(root / f"{k:03d}" / f)
        os.rmdir(root / f"{k:03d}")
    report, _ = _eval(capsys, "--weights", TAG, "--dataset", str(root),
                      "--output", str(tmp_path / "cm.png"))
    assert report["layout"] == "class folders by class index" and report["count"] == 12
    assert report["confusion_classes"] == ["0", "1", "2", "3", "(other)"]
    assert np.asarray(report["confusion_matrix"]).sum() == 12


def test_wordnet_id_folders_and_csv_labels_under_imagenet_classes(tmp_path, capsys,
                                                                  imagenet_weights):
    root = _write_folders(tmp_path / "wn", name=lambda k: WNIDS[k])
    report, _ = _eval(capsys, "--weights", imagenet_weights, "--dataset", str(root),
                      "--output", str(tmp_path / "cm.png"))
    files = labelled_files(root, imagenet_classes(), wnids=WNIDS)
    assert report["layout"] == "class folders by WordNet id"
    assert sorted(set(files.labels.tolist())) == list(range(10))
    assert report["top1"] == pytest.approx(_direct_top1(imagenet_weights, files.files,
                                                        files.labels), abs=1e-9)
    assert list(report["per_class_accuracy"]) == imagenet_classes()[:10]
    # the ImageNet localisation CSV: ImageId without extension, "WNID x y x y ..." labels
    rows = _write_flat(tmp_path / "flat")
    csv = tmp_path / "LOC_val_solution.csv"
    csv.write_text("ImageId,PredictionString\n" + "".join(
        f"{os.path.splitext(n)[0]},{WNIDS[k]} 1 2 30 31 {WNIDS[k]} 0 0 5 5\n" for n, k in rows))
    flat = labelled_files(tmp_path / "flat", imagenet_classes(), wnids=WNIDS, labels=csv)
    assert flat.labels.tolist() == [k for _, k in rows]


@pytest.mark.parametrize("style", ["csv-index", "csv-name-no-header", "lines", "pairs"])
def test_flat_folder_with_a_labels_file(tmp_path, capsys, style):
    rows = _write_flat(tmp_path / "flat")
    if style == "csv-index":
        labels = tmp_path / "labels.csv"
        labels.write_text("image,label\n" + "".join(f"{n},{k}\n" for n, k in rows[::-1]))
    elif style == "csv-name-no-header":   # one image unlabelled: left out, with a warning
        labels = tmp_path / "labels.csv"
        labels.write_text("".join(f"{n},{k}\n" for n, k in rows[1:]))
        rows = rows[1:]
    elif style == "lines":   # inside the folder: the labels file is not an image
        labels = tmp_path / "flat" / "labels.txt"
        labels.write_text("".join(f"{k}\n" for _, k in rows) + "\n")
    else:
        labels = tmp_path / "val.txt"
        labels.write_text("".join(f"{n} {k}\n" for n, k in rows))
    report, _, err = _eval(capsys, "--weights", TAG, "--dataset", str(tmp_path / "flat"),
                           "--labels", str(labels), "--output", str(tmp_path / "cm.png"),
                           stderr=True)
    assert ("1 image(s) have no label" in err) == (style == "csv-name-no-header"), err
    files = [str(tmp_path / "flat" / n) for n, _ in rows]
    assert report["count"] == len(rows)
    assert report["top1"] == pytest.approx(_direct_top1(TAG, files, [k for _, k in rows]),
                                           abs=1e-9)


def test_limit_spreads_over_the_classes(tmp_path, capsys):
    root = _write_folders(tmp_path / "digits")
    report, _ = _eval(capsys, "--weights", TAG, "--dataset", str(root), "--limit", "10",
                      "--output", str(tmp_path / "new" / "cm.png"))
    assert report["count"] == 10 and len(report["per_class_accuracy"]) == 10
    assert (tmp_path / "new" / "cm.png").is_file()


def test_unreadable_images_are_skipped_and_named_or_fail_when_strict(tmp_path, capsys):
    root = _write_folders(tmp_path / "digits")
    (root / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (root / "3" / "notes.txt").write_text("not an image")
    report, out, err = _eval(capsys, "--weights", TAG, "--dataset", str(root),
                             "--output", str(tmp_path / "cm.png"), stderr=True)
    assert report["count"] == 30 and report["skipped"] == 1 and "1 unreadable skipped" in out
    assert "warning: skipped 1 unreadable image(s)" in err and "broken.png" in err
    assert "warning: " in err and "skipped 1 file(s) that are not images" in err
    assert "broken.png" in report["skipped_files"][0]
    code = cli.main(["evaluate", "--weights", TAG, "--dataset", str(root), "--strict-images",
                     "--no-progress", "--output", str(tmp_path / "cm2.png")])
    err = capsys.readouterr().err
    assert code == 2 and "error:" in err and "broken.png" in err and "Traceback" not in err


def test_tfds_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        report = evaluate_weights(TAG, "mnist", batch_size=5, output=str(tmp_path / "cm.png"),
                                  progress=False)
        from zoo.data.layouts import labelled_tfds

        examples = list(labelled_tfds("mnist", [str(k) for k in range(10)]).examples())
    assert report["count"] == 12 and report["layout"] == "TFDS mnist[test]"
    assert report["top1"] == pytest.approx(
        _direct_top1(TAG, [x for x, _ in examples], [y for _, y in examples]), abs=1e-9)


def test_torchvision_weights_when_on_disk(tmp_path, capsys):
    path = os.path.join(zoo.weights.cache_dir(), zoo.weights.get_weights("resnet18.tv_in1k").file)
    if not os.path.exists(path):
        pytest.skip(f"{path} is not on disk (never downloaded in tests)")
    pytest.importorskip("torch")
    root = tmp_path / "wn"
    for k in (0, 1):
        (root / WNIDS[k]).mkdir(parents=True)
        Image.fromarray(np.full((40, 50, 3), 40 * k, np.uint8)).save(root / WNIDS[k] / "a.png")
    report, _ = _eval(capsys, "--weights", "resnet18.tv_in1k", "--dataset", str(root),
                      "--output", str(tmp_path / "cm.png"))
    assert report["count"] == 2 and report["layout"] == "class folders by WordNet id"


# ----------------------------------------------------------------------------------------
# Bad layouts, labels and flags: errors naming the problem, before anything compiles.

def _digits_folder(tmp_path):
    return _write_folders(tmp_path / "digits")


def _flat_with(tmp_path, text, name="labels.csv"):
    rows = _write_flat(tmp_path / "flat")
    path = tmp_path / name
    path.write_text(text(rows)) if isinstance(text(rows), str) else path.write_bytes(text(rows))
    return tmp_path / "flat", path


LAYOUT_ERRORS = [
    ("unknown-class-folders", lambda t: (_rename(_digits_folder(t), {"3": "cat", "7": "dog"}), None),
     DataError, r"dataset folder .*digits': 2 of 10 class folders are not among the weights' 10 "
                r"classes: 'cat', 'dog'; name each class by class index \(0\.\.9\) or class name"),
    ("many-unknown-folders", lambda t: (_rename(_digits_folder(t), {str(k): f"c{k}" for k in range(8)}),
                                        None), DataError, r"8 of 10 class folders .*'c4' and 3 more"),
    ("out-of-range-index", lambda t: (_rename(_digits_folder(t), {"9": "10"}), None),
     DataError, r"'10'.*class index \(0\.\.9\)"),
    ("flat-without-labels", lambda t: (_write_flat(t / "flat") and t / "flat", None),
     DataError, r"no class subfolders.*--labels"),
    ("csv-unknown-images", lambda t: _flat_with(t, lambda r: "".join(
        f"{n},{k}\n" for n, k in r) + "ghost1.png,3\nghost2.jpg,4\n"),
     DataError, r"names 2 image\(s\) that are not image files in .*'ghost1.png', 'ghost2.jpg'"),
    ("csv-image-twice", lambda t: _flat_with(t, lambda r: f"{r[0][0]},1\n{r[0][0]},1\n"),
     DataError, r"labelled twice \(lines 1 and 2\)"),
    ("csv-unknown-label", lambda t: _flat_with(t, lambda r: "".join(
        f"{n},{'zebra' if i == 4 else k}\n" for i, (n, k) in enumerate(r))),
     DataError, r"1 of 11 labels are not among .*'zebra'"),
    ("csv-one-field", lambda t: _flat_with(t, lambda r: "image,label\nimg0000.png\n"),
     DataError, r"line 2 has 1 field\(s\) \('img0000.png'\); expected image,label"),
    ("lines-count", lambda t: _flat_with(t, lambda r: "1\n" * 29, "labels.txt"),
     DataError, r"has 29 labels for 30 images"),
    ("lines-blank", lambda t: _flat_with(t, lambda r: "1\n\n" + "1\n" * 28, "labels.txt"),
     DataError, r"line 2 is blank"),
    ("labels-not-utf8", lambda t: _flat_with(t, lambda r: b"\xff\xfe\x00bad", "labels.txt"),
     DataError, r"is not UTF-8 text"),
    ("labels-missing", lambda t: (_write_flat(t / "flat") and t / "flat", t / "nope.csv"),
     FileNotFoundError, r"labels file .*nope.csv' does not exist"),
    ("labels-is-folder", lambda t: (_write_flat(t / "flat") and t / "flat", t / "flat"),
     DataError, r"labels file .*flat' is a folder"),
    ("dataset-missing", lambda t: (t / "nowhere", None), FileNotFoundError,
     r"dataset '.*nowhere' is neither a folder nor a TFDS name"),
    ("dataset-is-file", lambda t: ((t / "x.png").write_bytes(b"x") and t / "x.png", None),
     DataError, r"dataset '.*x.png' is a file"),
]


def _rename(root, mapping):
    for old, new in mapping.items():
        os.rename(root / old, root / new)
    return root


@pytest.mark.parametrize("case,make,exc,match", LAYOUT_ERRORS, ids=[c[0] for c in LAYOUT_ERRORS])
def test_bad_layouts_are_errors_naming_the_problem(tmp_path, case, make, exc, match):
    dataset, labels = make(tmp_path)
    with pytest.raises(exc, match=match):
        evaluate_weights(TAG, str(dataset), labels=None if labels is None else str(labels),
                         output=str(tmp_path / "cm.png"), progress=False)
    assert not (tmp_path / "cm.png").exists()


def test_a_label_read_two_ways_is_ambiguous():
    index = ClassIndex(["1", "0", "cat"])
    with pytest.raises(DataError, match=r"label '1' is ambiguous: it is the class name of "
                                        r"class 0 \('1'\) and the class index of class 1"):
        index.lookup("1", "labels.csv")
    assert index.lookup("cat", "x") == 2 and index.lookup("2", "x") == 2
    wn = ClassIndex(imagenet_classes(), WNIDS)
    assert wn.resolve([WNIDS[5], "5", imagenet_classes()[5], "005"], "x").tolist() == [5] * 4


CLI_ERRORS = [
    ("weights-and-run", ["--weights", TAG, "--run", "{tmp}", "--dataset", "{tmp}"],
     ["--run {tmp}", "--weights lenet5.digits", "not both"]),
    ("neither", ["--dataset", "{tmp}"], ["--run DIR", "--weights TAG_OR_PATH"]),
    ("weights-without-dataset", ["--weights", TAG], ["--weights lenet5.digits needs --dataset"]),
    ("labels-with-run", ["--run", "{tmp}", "--labels", "{tmp}/l.csv"], ["--labels goes with --weights"]),
    ("limit-with-run", ["--run", "{tmp}", "--limit", "3"], ["--limit goes with --weights"]),
    ("checkpoint-with-weights", ["--weights", TAG, "--dataset", "{tmp}", "--checkpoint", "c"],
     ["--checkpoint goes with --run"]),
    ("limit-zero", ["--weights", TAG, "--dataset", "{tmp}", "--limit", "0"], ["--limit", "got 0"]),
    ("workers-zero", ["--weights", TAG, "--dataset", "{tmp}", "--workers", "0"], ["--workers", "got 0"]),
    ("split-with-folder", ["--weights", TAG, "--dataset", "{tmp}", "--split", "test"],
     ["--split", "{tmp} is a folder"]),
    ("unknown-tag", ["--weights", "lenet5.nope", "--dataset", "{tmp}"], ["lenet5.nope"]),
    ("output-under-file", ["--weights", TAG, "--dataset", "{tmp}", "--output", "{tmp}/f/cm.png"],
     ["--output", "is a file"]),
]


@pytest.mark.parametrize("case,argv,needles", CLI_ERRORS, ids=[c[0] for c in CLI_ERRORS])
def test_cli_errors_exit_2_naming_the_flag(tmp_path, capsys, case, argv, needles):
    (tmp_path / "f").write_text("x")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert cli.main(["evaluate", *argv]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    for needle in needles:
        assert needle.replace("{tmp}", str(tmp_path)) in err, err


def test_tfds_errors(tmp_path, capsys):
    tfds = pytest.importorskip("tensorflow_datasets")
    assert cli.main(["evaluate", "--weights", TAG, "--dataset", "tfds:no_such_dataset_xyz"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "no_such_dataset_xyz" in err and "Traceback" not in err
    with pytest.raises(ValueError, match=r"--labels labels a flat image folder; TFDS dataset "
                                         r"'mnist'"):
        evaluate_weights(TAG, "mnist", labels="x.csv", progress=False,
                         output=str(tmp_path / "cm.png"))
    with tfds.testing.mock_data(num_examples=4):   # mock classes "0".."99": 90 unknown
        with pytest.raises(DataError, match=r"TFDS dataset 'cifar100': 90 of 100 "
                                            r"classes .*'10', '11'.* and 85 more"):
            evaluate_weights(TAG, "cifar100", progress=False, output=str(tmp_path / "cm.png"))
