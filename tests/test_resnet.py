"""ResNet family: closed-form parameter counts, stage geometry, MACs, the pre-activation
unit's wiring, and (when torch is installed) torchvision's structure."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo import nn
from zoo.models import resnet

# CVPR 2016, Table 1: depth -> (block kind, blocks per stage).
PAPER_DEPTHS = {18: ("basic", [2, 2, 2, 2]), 34: ("basic", [3, 4, 6, 3]),
                50: ("bottleneck", [3, 4, 6, 3]), 101: ("bottleneck", [3, 4, 23, 3]),
                152: ("bottleneck", [3, 8, 36, 3])}

# torchvision's published GFLOPS (counted as multiply-accumulates) at 224x224, to 2 decimals
# in its docs; resnet50 to 3 (4.089).
TORCHVISION_GMACS = {"resnet18": 1.81, "resnet34": 3.66, "resnet50": 4.089,
                     "resnet101": 7.80, "resnet152": 11.51}


def test_depth_table_is_the_papers():
    assert {d: (k, list(c)) for d, (k, c) in resnet.DEPTHS.items()} == PAPER_DEPTHS


def preact_params_closed_form(depth, classes=1000):
    """Conv weights + 2 per BN channel + fc, unit by unit, as fb.resnet.torch's preresnet:
    the first unit's BN-ReLU is the stem's; a shape-changing unit has a plain 1x1 projection
    (no BN); a final BN before the pool."""
    kind, counts = PAPER_DEPTHS[depth]
    total = 7 * 7 * 3 * 64 + 2 * 64  # stem conv1, bn1
    c = 64
    for stage, (w, n) in enumerate(zip([64, 128, 256, 512], counts)):
        for b in range(n):
            if kind == "basic":
                out, convs, bn_channels = w, [9 * c * w, 9 * w * w], [c, w]
            else:
                out, convs, bn_channels = 4 * w, [c * w, 9 * w * w, w * 4 * w], [c, w, w]
            if stage == 0 and b == 0:
                bn_channels = bn_channels[1:]
            total += sum(convs) + 2 * sum(bn_channels) + (c * out if c != out else 0)
            c = out
    return total + 2 * c + c * classes + classes


ARCHITECTURES = open(os.path.join(os.path.dirname(__file__), "..", "docs", "architectures.md")).read()


@pytest.mark.parametrize("depth", sorted(PAPER_DEPTHS))
def test_preact_param_count_is_closed_form_and_documented(depth):
    name = f"preact_resnet{depth}"
    variables, out = zoo.create(name).abstract_init()
    expected = preact_params_closed_form(depth)
    assert zoo.count_params(variables["params"]) == expected
    assert f"{name} {expected:,}" in " ".join(ARCHITECTURES.split())
    assert out == (1, 1000)
    ten = zoo.create(name, num_classes=10).abstract_init()[0]["params"]
    assert zoo.count_params(ten) == preact_params_closed_form(depth, classes=10)


def stage_shapes(name, size):
    """Output shapes after layer1..layer4, from each layer's init and from an abstract apply
    (traced once, nothing computed)."""
    items = zoo.create(name).network.children
    shapes = []

    def run(key, x):
        for layer_name, layer in items:
            with nn.scope(layer_name):
                out_shape, params, state = layer.init(nn.name_key(key, layer_name), x.shape)
                x, _ = layer.apply(params, state, x)
            assert tuple(x.shape) == tuple(out_shape), layer_name
            if layer_name.startswith("layer"):
                shapes.append(tuple(x.shape))
            if layer_name == "layer4":
                return x

    jax.eval_shape(run, jax.random.key(0), jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
    return shapes


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "preact_resnet18", "preact_resnet50"])
@pytest.mark.parametrize("size,maps", [(224, [56, 28, 14, 7]), (32, [8, 4, 2, 1])])
def test_stage_output_sizes(name, size, maps):
    expansion = 4 if name.endswith("50") else 1
    assert stage_shapes(name, size) == [(1, m, m, c * expansion)
                                        for m, c in zip(maps, [64, 128, 256, 512])]


@pytest.mark.parametrize("name", sorted(TORCHVISION_GMACS))
def test_macs_match_torchvision(name):
    with nn.recording() as rec:
        zoo.create(name).abstract_init()
    macs = sum(row["macs"] for row in rec.rows)
    assert abs(macs / 1e9 - TORCHVISION_GMACS[name]) <= 0.005 * TORCHVISION_GMACS[name]
    with nn.recording() as rec:
        zoo.create("preact_" + name).abstract_init()
    assert sum(row["macs"] for row in rec.rows) == macs  # same convs, only BN placement differs


def preact18_block(stage, index, in_shape):
    """A block of preact_resnet18, initialised alone, with non-trivial running statistics
    (so that "pre-activated" differs from "raw")."""
    block = dict(dict(zoo.create("preact_resnet18").network.children)[stage].children)[index]
    _, params, state = block.init(jax.random.key(0), in_shape)
    state = jax.tree.map(lambda a: a + 0.3, state)
    return block, params, state


def test_preact_names():
    params = zoo.create("preact_resnet18").abstract_init()[0]["params"]
    assert set(params) == {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "bn_final", "fc"}
    assert set(params["layer1"]["0"]) == {"conv1", "bn2", "conv2"}  # its BN-ReLU is the stem's
    assert set(params["layer1"]["1"]) == {"bn1", "conv1", "bn2", "conv2"}
    assert set(params["layer2"]["0"]) == {"bn1", "conv1", "bn2", "conv2", "downsample"}
    assert set(params["layer2"]["0"]["downsample"]) == {"conv"}  # plain 1x1, no BN
    params = zoo.create("preact_resnet50").abstract_init()[0]["params"]
    assert set(params["layer1"]["0"]) == {"conv1", "bn2", "conv2", "bn3", "conv3", "downsample"}


def test_preact_identity_shortcut_is_untouched():
    block, params, state = preact18_block("layer2", "1", (2, 4, 4, 128))
    params["conv2"]["kernel"] = jnp.zeros_like(params["conv2"]["kernel"])
    x = jax.random.normal(jax.random.key(2), (2, 4, 4, 128))  # negative values too
    y, _ = block.apply(params, state, x)
    np.testing.assert_array_equal(y, x)


def test_preact_projection_sees_the_preactivated_input():
    block, params, state = preact18_block("layer2", "0", (2, 8, 8, 64))
    params["conv2"]["kernel"] = jnp.zeros_like(params["conv2"]["kernel"])
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 64))
    y, _ = block.apply(params, state, x)
    a = _eval_bn_relu(params["bn1"], state["bn1"], x)
    expected = jnp.einsum("nhwc,co->nhwo", a[:, ::2, ::2], params["downsample"]["conv"]["kernel"][0, 0])
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def _eval_bn_relu(params, state, x):
    scale = params["scale"] / jnp.sqrt(state["var"] + 1e-5)
    return jax.nn.relu((x - state["mean"]) * scale + params["bias"])


@pytest.mark.parametrize("name,stage,in_shape", [("preact_resnet18", "layer2", (4, 8, 8, 64)),
                                                 ("resnet18", "layer2", (4, 8, 8, 64)),
                                                 ("resnet50", "layer1", (4, 8, 8, 64))])
def test_train_mode_updates_every_bn_of_a_projection_unit(name, stage, in_shape):
    block = dict(dict(zoo.create(name).network.children)[stage].children)["0"]
    _, params, state = block.init(jax.random.key(0), in_shape)
    assert "downsample" in params
    _, new = block.apply(params, state, jax.random.normal(jax.random.key(3), in_shape), train=True)
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new, state)
    assert all(jax.tree_util.tree_leaves(changed)), changed


# ---------------------------------------------------------------------------------------
# torchvision: same stage shapes at sizes that need the floor rule; same tensors by name.

def _torchvision(name):
    pytest.importorskip("torch")
    models = pytest.importorskip("torchvision.models")
    return getattr(models, name)(weights=None).eval()


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_stage_shapes_match_torchvision(name):
    import torch

    net = _torchvision(name)
    for size in [32, 33, 57, 97, 224]:
        with torch.no_grad():
            x = net.maxpool(net.relu(net.bn1(net.conv1(torch.zeros(1, 3, size, size)))))
            theirs = []
            for layer in [net.layer1, net.layer2, net.layer3, net.layer4]:
                x = layer(x)
                n, c, h, w = x.shape
                theirs.append((n, h, w, c))
        assert stage_shapes(name, size) == theirs, size


def _torch_key_to_path(key):
    """torchvision state_dict key -> (collection, path) in zoo variables."""
    key = key.replace("downsample.0.", "downsample.conv.").replace("downsample.1.", "downsample.bn.")
    *path, leaf = key.split(".")
    is_bn = path[-1].startswith("bn") or path[-1] == "bn"
    collection, leaf = {"weight": ("params", "scale" if is_bn else "kernel"),
                        "bias": ("params", "bias"), "running_mean": ("state", "mean"),
                        "running_var": ("state", "var")}[leaf]
    return collection, tuple(path) + (leaf,)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_every_torchvision_tensor_has_one_zoo_leaf_of_matching_shape(name):
    sd = _torchvision(name).state_dict()
    variables, _ = zoo.create(name).abstract_init()
    ours = {(col, tuple(k.key for k in path)): leaf.shape
            for col in ("params", "state")
            for path, leaf in jax.tree_util.tree_leaves_with_path(variables[col])}
    mapped = {}
    for key, tensor in sd.items():
        if key.endswith("num_batches_tracked"):
            continue
        shape = tuple(tensor.shape)
        if len(shape) == 4:
            shape = (shape[2], shape[3], shape[1], shape[0])  # OIHW -> HWIO
        elif len(shape) == 2:
            shape = shape[::-1]  # Linear (out, in) -> (in, out)
        mapped[_torch_key_to_path(key)] = shape
    assert mapped == ours


def test_long_stages_run_as_a_scan_with_the_same_params():
    """ResNet-101's 22 identical layer3 blocks after the first are one lax.scan (compile
    time); params keep their per-block paths. Values: tests/test_pretrained.py checks the
    scanned ResNet-101/152 against torchvision, tests/test_nn.py scanned against unrolled."""
    model = zoo.create("resnet101", num_classes=10)
    shape = (2, 32, 32, 3)
    abstract, _ = model.abstract_init(shape)
    assert sorted(abstract["params"]["layer3"], key=int) == [str(b) for b in range(23)]
    x = jax.ShapeDtypeStruct(shape, jnp.float32)

    def primitives():  # a new function per trace: jit caches traces by function
        fn = lambda v, x: model.apply(v["params"], v["state"], x)[0]
        return [e.primitive.name for e in jax.make_jaxpr(fn)(abstract, x).jaxpr.eqns]

    assert primitives().count("scan") == 1  # layer3; the other stages are short
    assert model.policy.scan_min_run > max(resnet.DEPTHS[50][1]) - 1  # ResNet-50 stays unrolled
    model = model.with_policy(model.policy.replace(scan_min_run=0))
    assert "scan" not in primitives()
