"""AlexNet, ZFNet and VGG: published geometry, names, and agreement with torchvision."""
import jax
import jax.numpy as jnp
import pytest

import zoo
from zoo import nn


def rows(name, input_shape=None):
    """Recorder rows by layer path for an abstract init of ``name``."""
    with nn.recording() as rec:
        zoo.create(name).abstract_init(input_shape)
    return {row["name"]: row for row in rec.rows}


def hw(row):
    return row["output_shape"][1:3]


def test_alexnet_2012_conv1_is_the_cs231n_example():
    conv1 = rows("alexnet_2012")["conv1"]
    assert conv1["output_shape"] == (1, 55, 55, 96)
    assert conv1["params"] == 34_944


def test_alexnet_2012_fails_at_224_with_the_arithmetic():
    model = zoo.create("alexnet_2012")
    with pytest.raises(ValueError, match=r"conv1.*54\.25"):
        model.abstract_init((1, 224, 224, 3))


def test_alexnet_2012_geometry_and_groups():
    r = rows("alexnet_2012")
    assert [hw(r[n]) for n in ("pool1", "conv2", "pool2", "conv5", "pool5")] == \
        [(27, 27), (27, 27), (13, 13), (13, 13), (6, 6)]
    assert r["conv2"]["params"] == 5 * 5 * 48 * 256 + 256  # two groups of 48 input maps
    assert r["fc6"]["params"] == 6 * 6 * 256 * 4096 + 4096


def abstract_logits(name, input_shape, num_classes=10):
    """fc6's kernel shape and the logits' shape of a traced (not computed) forward pass;
    test_models.py runs these models for real at the same small sizes."""
    model = zoo.create(name, num_classes=num_classes)
    variables = model.abstract_init(input_shape)[0]
    x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
    logits, _ = jax.eval_shape(model.apply, variables["params"], variables["state"], x)
    return variables["params"]["fc6"]["kernel"].shape, logits.shape


def test_alexnet_floors_conv1_at_224_and_runs_at_64():
    r = rows("alexnet")
    assert [hw(r[n]) for n in ("conv1", "pool1", "pool2", "pool5")] == \
        [(55, 55), (27, 27), (13, 13), (6, 6)]
    assert abstract_logits("alexnet", (1, 64, 64, 3)) == ((256, 4096), (1, 10))  # 1x1x256


def test_zfnet_intermediate_sizes():
    r = rows("zfnet")
    sizes = [hw(r[n])[0] for n in ("conv1", "pool1", "conv2", "pool2", "conv5", "pool5")]
    assert sizes == [110, 55, 26, 13, 13, 6]
    assert r["conv1"]["params"] == 7 * 7 * 3 * 96 + 96


def test_vgg16_runs_on_cifar_images():
    assert abstract_logits("vgg16", (1, 32, 32, 3)) == ((512, 4096), (1, 10))


def test_vgg_names_are_systematic():
    params = zoo.create("vgg16").abstract_init()[0]["params"]
    convs = [f"conv{s}_{j}" for s, n in enumerate((2, 2, 3, 3, 3), 1) for j in range(1, n + 1)]
    assert list(params) == convs + ["fc6", "fc7", "fc8"]
    variables = zoo.create("vgg11_bn").abstract_init()[0]
    assert list(variables["state"]) == ["bn1_1", "bn2_1", "bn3_1", "bn3_2", "bn4_1", "bn4_2",
                                        "bn5_1", "bn5_2"]
    assert set(variables["state"]["bn3_1"]) == {"mean", "var"}


# ----------------------------------------------------------------------------------------
# torchvision, on the meta device (shapes only: no memory, no weights, no download).

def torchvision_prefixes(name):
    """The documented torchvision module -> zoo path correspondence (see the module docs)."""
    if name == "alexnet":
        return {**{f"features.{k}": f"conv{i}" for i, k in enumerate((0, 3, 6, 8, 10), 1)},
                **{f"classifier.{k}": f"fc{i}" for i, k in zip((6, 7, 8), (1, 4, 6))}}
    from zoo.models.vgg import CONFIGS
    bn = name.endswith("_bn")
    table = CONFIGS[{"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}[name.split("_")[0]]]
    out, k, stage, j = {}, 0, 1, 0
    for item in table:
        if item == "M":
            k, stage, j = k + 1, stage + 1, 0
            continue
        j += 1
        out[f"features.{k}"] = f"conv{stage}_{j}"
        if bn:
            out[f"features.{k + 1}"] = f"bn{stage}_{j}"
        k += 3 if bn else 2
    return {**out, **{f"classifier.{k}": f"fc{i}" for i, k in zip((6, 7, 8), (0, 3, 6))}}


def torch_to_zoo_shape(key, shape):
    if len(shape) == 4:  # OIHW -> HWIO
        return (shape[2], shape[3], shape[1], shape[0])
    return tuple(reversed(shape)) if len(shape) == 2 else tuple(shape)


@pytest.mark.parametrize("name", ["alexnet", "vgg11_bn", "vgg16"])
def test_names_and_shapes_correspond_to_torchvision(name):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):
        tv = getattr(torchvision.models, name)()
    variables = zoo.create(name).abstract_init()[0]
    mapping = torchvision_prefixes(name)
    zoo_leaf = {"weight": ("params", "kernel"), "bias": ("params", "bias"),
                "running_mean": ("state", "mean"), "running_var": ("state", "var")}
    seen = set()
    for key, tensor in tv.state_dict().items():
        prefix, leaf = key.rsplit(".", 1)
        if leaf == "num_batches_tracked":
            continue
        collection, ours = zoo_leaf[leaf]
        path = mapping[prefix]
        if path.startswith("bn") and ours == "kernel":
            ours = "scale"
        assert variables[collection][path][ours].shape == torch_to_zoo_shape(key, tensor.shape), key
        seen.add((collection, path, ours))
    n_leaves = sum(len(layer) for c in ("params", "state") for layer in variables[c].values())
    assert len(seen) == n_leaves


@pytest.mark.parametrize("name,size,last", [("alexnet", 224, "pool5"), ("alexnet", 64, "pool5"),
                                            ("vgg16", 224, "pool5"), ("vgg16", 32, "pool5")])
def test_feature_map_sizes_equal_torchvision(name, size, last):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):
        features = getattr(torchvision.models, name)().features
        n, c, h, w = features(torch.empty(1, 3, size, size)).shape
    assert rows(name, (1, size, size, 3))[last]["output_shape"] == (n, h, w, c)
