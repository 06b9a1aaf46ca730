"""The summary against the cs231n notes' worked examples and torchvision's MAC figures."""
import subprocess
import sys

import pytest

import zoo
from zoo.summary import summary


def test_vgg16_matches_the_notes():
    s = summary("vgg16")
    assert s.params == 138_357_544
    assert s.activations == 15_237_608  # the notes' rows; their "24M" total is a slip
    assert s.macs == 15_470_264_320
    pool5 = s.row("pool5")
    assert (pool5["receptive_field"], pool5["stride"]) == (212, 32)
    assert pool5["output_shape"] == (1, 7, 7, 512)
    assert s.row("fc6")["params"] == 7 * 7 * 512 * 4096 + 4096


def test_alexnet_2012_conv1_matches_the_notes():
    conv1 = summary("alexnet_2012").row("conv1")
    assert conv1["output_shape"] == (1, 55, 55, 96)
    assert conv1["params"] == 34_944
    assert conv1["activations"] == 290_400


@pytest.mark.parametrize("name,gmacs", [("alexnet", 0.714), ("resnet50", 4.089), ("googlenet", 1.498),
                                        ("vgg16", 15.470), ("resnet18", 1.814)])
def test_macs_match_torchvision(name, gmacs):
    assert summary(name).macs / 1e9 == pytest.approx(gmacs, rel=0.005)


def test_params_total_equals_rows_for_plain_nets():
    for name in ["lenet5", "vgg11", "alexnet"]:
        s = summary(name)
        assert s.params == sum(r["params"] for r in s.rows)


def test_other_input_size_and_cli():
    s = summary("vgg16", (1, 32, 32, 3))
    assert s.row("pool5")["output_shape"] == (1, 1, 1, 512)
    assert s.params == 138_357_544 - (7 * 7 - 1) * 512 * 4096
    out = subprocess.run([sys.executable, "-m", "zoo", "summary", "vgg16"], capture_output=True,
                         text=True, check=True).stdout
    assert "138,357,544" in out and "15,237,608" in out and "58.13 MB" in out
    bad = subprocess.run([sys.executable, "-m", "zoo", "summary", "alexnet_2012", "--size", "224", "224"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "54.25" in bad.stderr


def test_summary_of_every_model_is_consistent():
    for name in zoo.list_models():
        s = summary(name)
        variables, _ = zoo.create(name).abstract_init()
        assert s.params == zoo.count_params(variables["params"])
        assert s.macs > 0 and s.activations > 0


def test_models_doc_is_generated_from_the_registry():
    import pathlib

    from zoo.cli import docs

    root = pathlib.Path(__file__).resolve().parents[1]
    assert (root / "docs" / "models.md").read_text() == docs.models_markdown(), \
        "docs/models.md is stale: run zoo docs"
