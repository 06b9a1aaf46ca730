"""FC -> CONV conversion, dense score maps, shift-and-stitch, pictures (zoo.fully_conv).

Cheap by design: exact numerics on LeNet-5 and small nets built from zoo.nn; every
registered model converted at its native size from shapes only (no weights), one model
per kind of head checked numerically on a reduced input; one end-to-end check per family.
"""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo import fully_conv as fc
from zoo import cli, images, nn
from zoo.registry import Model

ALL = zoo.list_models()
RTOL = 1e-5


def rel_diff(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-30))


def make_model(layers, size, channels=2, classes=5, name="tiny"):
    return Model(nn.Sequential(layers), dict(name=name, input_shape=(size, size, channels),
                                             num_classes=classes, classifier="fc2",
                                             mean=(0.0,) * channels, std=(1.0,) * channels))


def randomize_state(variables, seed=7):
    """BatchNorm statistics that are not the identity, so they matter."""
    leaves, tree = jax.tree_util.tree_flatten(variables["state"])
    keys = jax.random.split(jax.random.key(seed), max(len(leaves), 1))
    leaves = [a + 0.5 * jax.random.uniform(k, a.shape) for a, k in zip(leaves, keys)]
    return dict(variables, state=jax.tree_util.tree_unflatten(tree, leaves))


def tiny_fc_net():
    """Unpadded, FC-headed: 22 -> conv3 20 -> pool 10 -> conv3 8 -> pool 4; fc over 4x4x6."""
    return make_model([
        ("conv1", nn.Conv(4, 3)), ("relu1", nn.Relu()), ("pool1", nn.MaxPool(2)),
        ("conv2", nn.Conv(6, 3)), ("bn2", nn.BatchNorm()), ("relu2", nn.Relu()),
        ("pool2", nn.MaxPool(2)), ("flatten", nn.Flatten()),
        ("fc1", nn.Dense(16)), ("relu3", nn.Relu()), ("drop", nn.Dropout(0.5)),
        ("fc2", nn.Dense(5)),
    ], 22)


def tiny_pool_net():
    """Unpadded, pool-headed: 21 -> conv3 19 -> conv3/2 9 -> global average pool -> fc."""
    return make_model([
        ("conv1", nn.Conv(4, 3)), ("relu1", nn.Relu()),
        ("conv2", nn.Conv(6, 3, stride=2)), ("bn2", nn.BatchNorm()), ("relu2", nn.Relu()),
        ("avgpool", nn.GlobalAvgPool()), ("fc2", nn.Dense(5)),
    ], 21)


def tiny_adaptive_net(pool_to):
    """Unpadded, with a torchvision-style adaptive pool before the flatten (10 -> 8x8)."""
    return make_model([
        ("features", nn.Sequential([("conv1", nn.Conv(4, 3)), ("relu1", nn.Relu())])),
        ("adaptive", nn.AdaptiveAvgPool(pool_to)),
        ("classifier", nn.Sequential([("flatten", nn.Flatten()), ("fc1", nn.Dense(8)),
                                      ("relu", nn.Relu()), ("fc2", nn.Dense(5))])),
    ], 10)


def tiny_padded_net():
    """VGG-style, zero-padded 3x3 convs: 16 -> 8 -> 4; fc over 4x4x6."""
    return make_model([
        ("conv1", nn.Conv(4, 3, padding=1)), ("relu1", nn.Relu()), ("pool1", nn.MaxPool(2)),
        ("conv2", nn.Conv(6, 3, padding=1)), ("relu2", nn.Relu()), ("pool2", nn.MaxPool(2)),
        ("flatten", nn.Flatten()), ("fc1", nn.Dense(16)), ("relu3", nn.Relu()),
        ("fc2", nn.Dense(5)),
    ], 16)


def crop_reference(model, variables, image, step):
    """The original network on every training-size crop at ``step``: (P, Q, K)."""
    size = model.input_shape[:2]
    batch, (rows, cols) = fc.crops(image[None], size, step)
    logits = jax.jit(lambda p, s, x: model.apply(p, s, x)[0])(
        variables["params"], variables["state"], batch)
    return np.asarray(logits).reshape(rows, cols, -1)


_CACHE = {}


def converted(key, build, seed=0):
    if key not in _CACHE:
        model = build()
        variables = randomize_state(model.init(jax.random.key(seed)))
        _CACHE[key] = (model, variables, *fc.convert(model, variables))
    return _CACHE[key]


# ----------------------------------------------------------------------------------------
# Conversion and exact equality.

@pytest.mark.parametrize("name", ["lenet5", "lenet5_1998"])
def test_lenet_head_geometry_and_1x1(name):
    model, variables, fcn, fvars = converted(name, lambda: zoo.create(name))
    assert (fcn.stride, fcn.receptive_field, fcn.train_size, fcn.head) == (4, 32, (32, 32), "fc")
    # lenet5: fc1 over the 5x5x16 volume becomes a 5x5 conv; the paper's C5 is a conv already.
    first = "fc1" if name == "lenet5" else "f6"
    kernel = fvars["params"][first]["kernel"]
    assert kernel.shape == ((5, 5, 16, 120) if name == "lenet5" else (1, 1, 120, 84))
    x = jax.random.normal(jax.random.key(1), (3, 32, 32, 1))
    logits, scores = jax.jit(lambda v, fv, x: (model.apply(v["params"], v["state"], x)[0],
                                               fcn.apply(fv["params"], fv["state"], x)[0]))(
        variables, fvars, x)
    assert scores.shape == (3, 1, 1, 10)
    assert rel_diff(logits, scores[:, 0, 0]) < RTOL


@pytest.mark.parametrize("name,step", [("lenet5", 4), ("lenet5", 2), ("lenet5_1998", 4),
                                       ("lenet5_1998", 2)])
def test_lenet_map_equals_crops(name, step):
    """No zero padding in LeNet-5: every cell equals the network on its crop, at the
    network stride and at half of it (shift-and-stitch); 46x50 floors to 44x48."""
    model, variables, fcn, fvars = converted(name, lambda: zoo.create(name))
    image = jax.random.normal(jax.random.key(2), (46, 50, 1))
    sm = fc.score_map(fcn, fvars, image, stride=step)
    expected = crop_reference(model, variables, image, step)
    assert sm.scores.shape == expected.shape == ((46 - 32) // step + 1, (50 - 32) // step + 1, 10)
    assert sm.passes == (4 // step) ** 2
    assert rel_diff(expected, sm.scores) < RTOL


@pytest.mark.parametrize("step", [4, 2, 1])
def test_unpadded_fc_net_equals_crops(step):
    model, variables, fcn, fvars = converted("fc", tiny_fc_net)
    assert (fcn.stride, fcn.receptive_field, fcn.head) == (4, 22, "fc")
    assert fvars["params"]["fc1"]["kernel"].shape == (4, 4, 6, 16)
    assert fvars["state"]["bn2"]["mean"] is variables["state"]["bn2"]["mean"]
    image = jax.random.normal(jax.random.key(3), (31, 35, 2))
    sm = fc.score_map(fcn, fvars, image, stride=step)
    expected = crop_reference(model, variables, image, step)
    assert sm.scores.shape == expected.shape
    assert rel_diff(expected, sm.scores) < RTOL


@pytest.mark.parametrize("step", [2, 1])
def test_unpadded_pool_net_equals_crops(step):
    model, variables, fcn, fvars = converted("pool", tiny_pool_net)
    assert (fcn.stride, fcn.receptive_field, fcn.head) == (2, 21, "pool")
    assert "avgpool: global average pool becomes a stride-1 9x9 average pool" in fcn.changes
    image = jax.random.normal(jax.random.key(4), (26, 29, 2))
    sm = fc.score_map(fcn, fvars, image, stride=step)
    expected = crop_reference(model, variables, image, step)
    assert sm.scores.shape == expected.shape == ((26 - 21) // step + 1, (29 - 21) // step + 1, 5)
    assert rel_diff(expected, sm.scores) < RTOL


def test_identity_adaptive_pool_is_removed():
    model, variables, fcn, fvars = converted("adaptive8", lambda: tiny_adaptive_net(8))
    kinds = [layer.kind for _, layer, _ in nn.main_path(fcn.network)]
    assert "adaptive_avgpool" not in kinds and "avgpool" not in kinds
    assert fvars["params"]["classifier"]["fc1"]["kernel"].shape == (8, 8, 4, 8)
    image = jax.random.normal(jax.random.key(5), (13, 12, 2))
    sm = fc.score_map(fcn, fvars, image)
    assert fcn.stride == 1 and sm.scores.shape == (4, 3, 5)
    assert rel_diff(crop_reference(model, variables, image, 1), sm.scores) < RTOL


@pytest.mark.parametrize("pool_to", [2, 1])
def test_block_adaptive_pool_becomes_stride1_pool_and_dilated_conv(pool_to):
    """8x8 -> 2x2 bins of 4: a stride-1 4x4 average pool, then a 2x2 conv of dilation 4,
    so the map keeps the trunk's stride (1) instead of 4. To 1x1: a global pool, 8x8/1."""
    model, variables, fcn, fvars = converted(f"adaptive{pool_to}", lambda: tiny_adaptive_net(pool_to))
    layers = {path: layer for path, layer, _ in nn.main_path(fcn.network)}
    assert layers[("adaptive",)].config["window"] == (8 // pool_to,) * 2
    fc1 = layers[("classifier", "fc1")]
    assert fc1.config["kernel"] == (pool_to, pool_to)
    assert fc1.config["dilation"] == ((4, 4) if pool_to == 2 else (1, 1))
    image = jax.random.normal(jax.random.key(6), (12, 15, 2))
    sm = fc.score_map(fcn, fvars, image)
    assert fcn.stride == 1 and sm.scores.shape == (3, 6, 5)
    assert rel_diff(crop_reference(model, variables, image, 1), sm.scores) < RTOL


def test_padded_net_differs_from_crops_except_1x1():
    """Zero padding: the 1x1 map is still exact, but cells of a larger map see real pixels
    where the crop saw zeros (docs/fully_conv.md measures this on VGG-style nets)."""
    model, variables, fcn, fvars = converted("padded", tiny_padded_net)
    x = jax.random.normal(jax.random.key(7), (2, 16, 16, 2))
    assert rel_diff(model.apply(variables["params"], variables["state"], x)[0],
                    fcn.apply(fvars["params"], fvars["state"], x)[0][:, 0, 0]) < RTOL
    image = jax.random.normal(jax.random.key(8), (32, 32, 2))
    sm = fc.score_map(fcn, fvars, image)
    expected = crop_reference(model, variables, image, fcn.stride)
    close = np.isclose(np.asarray(sm.scores), expected, rtol=1e-4, atol=1e-4).all(axis=-1)
    assert sm.scores.shape == (5, 5, 5) and close.sum() < close.size


def test_googlenet_aux_heads_are_dropped():
    model = zoo.create("googlenet", num_classes=4, aux_logits=True)
    abstract, _ = model.abstract_init((1, 224, 224, 3))
    assert "aux1" in abstract["params"]
    fcn, fvars = abstract_convert(model, 224)
    assert "aux1" not in fvars["params"] and "aux2" not in fvars["state"]
    assert "aux1: auxiliary classifier removed" in fcn.changes
    assert fcn.map_shape(384, 384) == (6, 6)


# ----------------------------------------------------------------------------------------
# Every registered model.

def abstract_convert(model, size):
    """Convert from shapes only: ``(fcn, abstract fcn variables)``, no weights allocated."""
    c = model.input_shape[-1]
    abstract, _ = model.abstract_init((1, size, size, c))
    box = {}

    def run(variables):
        box["fcn"], out = fc.convert(model, variables, input_shape=(size, size, c))
        return out

    out = jax.eval_shape(run, abstract)
    return box["fcn"], out


#: native-size geometry: (stride, receptive field)
NATIVE = {"lenet5": (4, 32), "lenet5_1998": (4, 32), "alexnet": (32, 355),
          "alexnet_2012": (32, 355), "zfnet": (32, 331), "vgg11": (32, 342),
          "vgg16": (32, 404), "vgg19": (32, 460), "googlenet": (32, 571),
          "googlenet_2014": (32, 907), "resnet18": (32, 627), "resnet50": (32, 619)}


@pytest.mark.parametrize("name", ALL)
def test_native_size_conversion_from_shapes(name):
    """Every model converts at its native size; 1x1 map there, 6x6 at training size + 5
    strides; an uneven size either raises an error that says what fits, or (floor-rule
    nets) gives the map of the documented floor."""
    model = zoo.create(name, num_classes=7)
    size = model.input_shape[0]
    fcn, fvars = abstract_convert(model, size)
    assert fcn.map_shape(size, size) == (1, 1)
    assert fcn.output_shape((2, size, size, model.input_shape[2])) == (2, 1, 1, 7)
    s = fcn.stride
    assert fcn.map_shape(size + 5 * s, size + 4 * s) == (6, 5)
    assert fcn.fit_size(size + 5 * s + 3, size + s - 1) == (size + 5 * s, size)
    if name in NATIVE:
        assert (fcn.stride, fcn.receptive_field) == NATIVE[name]
    assert fcn.receptive_field >= size
    try:
        uneven = fcn.map_shape(size + 5 * s + 1, size + 5 * s + 1)
    except ValueError as e:
        assert "fit_size" in str(e) and "does not fit" in str(e)
    else:  # floor-rule layers (ResNet, ...) take any size; the map may gain the edge cell
        assert uneven in ((6, 6), (7, 7))
    assert not any(layer.kind in ("dense", "flatten", "global_avgpool", "adaptive_avgpool")
                   for _, layer, _ in nn.main_path(fcn.network))
    # its head is one whose conversion test_converted_head_equals_original_head checks
    assert head_signature(model, fcn) in {head_signature(*_native_fcn(h)) for h in HEADS}


def head_signature(model, fcn):
    """What the head conversion depends on: the head's layer kinds and the extent of the map
    it takes (its width is any)."""
    trunk, head = nn.split(model.network, fcn.trunk_size)
    size, c = model.input_shape[0], model.input_shape[2]
    return (tuple(layer.kind for _, layer, _ in nn.main_path(head)),
            _feature_shape(trunk, size, c)[1:3])


@functools.cache
def _native_fcn(name):
    model = zoo.create(name, num_classes=7)
    return model, abstract_convert(model, model.input_shape[0])[0]


#: reduced inputs where the final map is larger than 1x1, so the conv windows are exercised
HEAD_SIZE = {"lenet5": 32, "lenet5_1998": 32, "alexnet": 96, "alexnet_2012": 99, "zfnet": 96,
             "googlenet_2014": 256}


#: one model per head (layer kinds and the map extent at the native size); every other
#: model's head is one of these (test_native_size_conversion_from_shapes)
HEADS = ["lenet5", "lenet5_1998", "alexnet", "alexnet_2012", "vgg11", "googlenet",
         "googlenet_2014", "resnet18"]


@pytest.mark.parametrize("name", HEADS)
def test_converted_head_equals_original_head(name):
    """The trunk is shared as is (the same Layer objects), so the 1x1 equality reduces to
    the head: original head vs converted head on the same random features."""
    model = zoo.create(name, num_classes=7)
    c = model.input_shape[-1]
    size = HEAD_SIZE.get(name, 64)
    abstract, _ = model.abstract_init((1, size, size, c))
    # zeros for the trunk (never run here), random values for everything else
    variables = jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), abstract)
    fcn0, _ = abstract_convert(model, size)
    trunk, head = nn.split(model.network, fcn0.trunk_size)
    head_abstract = jax.eval_shape(lambda k: head.init(k, _feature_shape(trunk, size, c))[1:],
                                   jax.random.key(0))
    head_params = random_variables(head_abstract[0])
    params = _merge(variables["params"], head_params)
    variables = {"params": params, "state": variables["state"]}
    fcn, fvars = fc.convert(model, variables, input_shape=(size, size, c))
    f_trunk, f_head = nn.split(fcn.network, fcn.trunk_size)
    orig = [layer for _, layer, _ in nn.main_path(trunk)]
    conv = [layer for _, layer, _ in nn.main_path(f_trunk)]
    assert len(orig) == len(conv) and all(a is b for a, b in zip(orig, conv))
    feats = jax.random.normal(jax.random.key(9), _feature_shape(trunk, size, c, batch=2))
    want = head.apply(params, variables["state"], feats)[0]
    got = f_head.apply(fvars["params"], fvars["state"], feats)[0]
    assert got.shape == (2, 1, 1, 7)
    assert rel_diff(want, got[:, 0, 0]) < RTOL


def _feature_shape(trunk, size, c, batch=1):
    box = {}

    def run(key):
        box["shape"] = trunk.init(key, (batch, size, size, c))[0]
        return jnp.zeros(())

    jax.eval_shape(run, jax.random.key(0))
    return tuple(box["shape"])


def _merge(base, extra):
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(base.get(k, {}), v) if isinstance(v, dict) else v
    return out


#: one end-to-end 1x1 check per family, on reduced inputs
FAMILY_E2E = [("alexnet", 96), ("zfnet", 96), ("vgg11_bn", 64), ("googlenet", 64),
              ("resnet18", 64), ("preact_resnet18", 64)]


def random_variables(abstract, seed=0):
    """He-scaled random weights, positive BatchNorm variances, from shapes (NumPy: no
    per-shape compiles)."""
    rng = np.random.default_rng(seed)

    def leaf(path, a):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "var":
            value = rng.uniform(0.5, 1.5, a.shape)
        elif name == "kernel" and len(a.shape) >= 2:
            value = rng.standard_normal(a.shape) * np.sqrt(2.0 / np.prod(a.shape[:-1]))
        else:
            value = rng.standard_normal(a.shape) * 0.1
        return jnp.asarray(value, a.dtype)

    return jax.tree_util.tree_map_with_path(leaf, abstract)


@pytest.mark.parametrize("name,size", FAMILY_E2E)
def test_family_end_to_end_1x1(name, size):
    model = zoo.create(name, num_classes=6)
    shape = (2, size, size, 3)
    variables = random_variables(model.abstract_init(shape)[0])
    fcn, fvars = fc.convert(model, variables, input_shape=shape)
    x = jax.random.normal(jax.random.key(1), shape)

    @jax.jit  # one program: XLA shares the common trunk, so this compiles about once
    def both(v, fv, x):
        return (model.apply(v["params"], v["state"], x)[0],
                fcn.apply(fv["params"], fv["state"], x)[0])

    want, got = both(variables, fvars, x)
    assert got.shape == (2, 1, 1, 6)
    assert rel_diff(want, got[:, 0, 0]) < RTOL


# ----------------------------------------------------------------------------------------
# Sizes, errors, cache, scales.

def test_map_sizes_and_errors():
    _, _, fcn, fvars = converted("lenet5", lambda: zoo.create("lenet5"))
    assert [fcn.map_shape(s, s) for s in (32, 36, 40, 64)] == [(1, 1), (2, 2), (3, 3), (9, 9)]
    with pytest.raises(ValueError, match=r"(?s)pool2.*does not fit.*32\+4k.*floor of 34x34 is 32x32"):
        fcn.map_shape(34, 34)
    with pytest.raises(ValueError, match="fit_size"):
        fcn.apply(fvars["params"], fvars["state"], jnp.zeros((1, 37, 36, 1)))
    with pytest.raises(ValueError, match="smaller than the training size"):
        fc.score_map(fcn, fvars, jnp.zeros((30, 40, 1)))
    with pytest.raises(ValueError, match="must divide the network stride"):
        fc.score_map(fcn, fvars, jnp.zeros((40, 40, 1)), stride=3)
    # the documented floor: 39x45 is scored as 36x44
    sm = fc.score_map(fcn, fvars, jnp.zeros((39, 45, 1)))
    assert sm.image_size == (36, 44) and sm.scores.shape == (2, 4, 10)


def test_variables_for_another_size_are_rejected():
    model = zoo.create("vgg11")
    abstract, _ = model.abstract_init((1, 32, 32, 3))
    with pytest.raises(ValueError, match="input_shape"):
        jax.eval_shape(lambda v: fc.convert(model, v)[1], abstract)


def test_compiled_passes_are_cached_per_shape():
    model = make_model(tiny_fc_net().network.children, 22, name="cache")  # a fresh cache
    variables = model.init(jax.random.key(0))
    fcn, fvars = fc.convert(model, variables)
    image = jax.random.normal(jax.random.key(1), (2, 30, 30, 2))
    first = fc.score_map(fcn, fvars, image)
    again = fc.score_map(fcn, fvars, image)
    assert first.compile_seconds > 0 and again.compile_seconds == 0.0
    assert list(fcn.compile_seconds) == [((2, 30, 30, 2), "float32", False)]
    np.testing.assert_array_equal(first.scores, again.scores)
    per_example = fc.score_map(fcn, fvars, image, per_example=True)
    assert rel_diff(first.scores, per_example.scores) < RTOL


def test_multi_scale_average():
    model, variables, fcn, fvars = converted("fc", tiny_fc_net)
    image = jax.random.normal(jax.random.key(10), (30, 34, 2))
    one = fc.score_map(fcn, fvars, image)
    same = fc.score_map(fcn, fvars, image, scales=(1.0, 1.0))
    assert rel_diff(one.scores, same.scores) < RTOL
    two = fc.score_map(fcn, fvars, image, scales=(1.0, 1.5))
    big = fc.score_map(fcn, fvars, fc.resize_image(image[None], 1.5)[0])
    assert two.scores.shape == one.scores.shape and two.scales == (1.0, 1.5)
    resized = jax.image.resize(big.scores, one.scores.shape, "linear")
    assert rel_diff((one.scores + resized) / 2, two.scores) < RTOL
    probs = fc.score_map(fcn, fvars, image, scales=(1.0, 1.5), softmax=True)
    np.testing.assert_allclose(np.asarray(probs.scores).sum(-1), 1.0, rtol=1e-5)
    assert probs.top(3)[0][0] == int(np.argmax(np.asarray(probs.pooled())))


# ----------------------------------------------------------------------------------------
# Pictures.

def _png(path, size):
    from PIL import Image

    assert os.path.isfile(path)
    with Image.open(path) as im:
        assert im.size == size
        a = np.asarray(im.convert("RGB"), np.float32)
    assert a.std() > 10 and len(np.unique(a.reshape(-1, 3), axis=0)) > 50  # not blank


def test_score_map_png(tmp_path):
    from zoo import visualize as V

    _, _, fcn, fvars = converted("lenet5", lambda: zoo.create("lenet5"))
    photo = images.load_image("coffee")
    mean, std = fcn.mean, fcn.std
    x = images.prepare(photo, channels=1, mean=mean, std=std, size=48)
    sm = fc.score_map(fcn, fvars, x, stride=2)
    path = V.save_score_map(images.display(x, mean, std), sm.scores, str(tmp_path / "map.png"),
                            stride=sm.stride, train_size=fcn.train_size, size_inches=(8, 4),
                            dpi=50, top=4)
    _png(path, (400, 200))


def test_filter_and_activation_pngs(tmp_path):
    from zoo import visualize as V

    model, variables, _, _ = converted("lenet5", lambda: zoo.create("lenet5"))
    name, kernel = V.first_conv(model, variables["params"])
    assert name == "conv1" and kernel.shape == (5, 5, 1, 6)
    grid = V.filter_grid(kernel)
    assert grid.shape == (2 * 6 + 1, 3 * 6 + 1)
    _png(V.save_filter_grid(kernel, str(tmp_path / "f.png"), scale=8), (19 * 8, 13 * 8))
    rgb = jax.random.normal(jax.random.key(0), (11, 11, 3, 10))
    assert V.filter_grid(rgb).shape == (3 * 12 + 1, 4 * 12 + 1, 3)
    x = images.prepare(images.load_image("astronaut"), channels=1, mean=model.mean,
                       std=model.std, size=32)[:32, :32]
    acts = V.layer_output(model, variables, x[None], "pool1")
    assert acts.shape == (1, 14, 14, 6)
    _png(V.save_activation_grid(acts[0], str(tmp_path / "a.png"), min_tile=28),
         ((3 * 15 + 1) * 2, (2 * 15 + 1) * 2))
    with pytest.raises(ValueError, match="no layer 'nope'"):
        V.layer_output(model, variables, x[None], "nope")


def test_visualize_command(tmp_path):
    out = str(tmp_path / "filters.png")
    assert cli.main(["visualize", "filters", "--model", "lenet5", "--out", out]) == 0
    assert os.path.isfile(out)
    out = str(tmp_path / "acts.png")
    assert cli.main(["visualize", "activations", "--model", "lenet5", "--layer", "conv2",
                     "--image", "chelsea", "--out", out]) == 0
    _png(out, ((4 * 11 + 1) * 5, (4 * 11 + 1) * 5))
    assert cli.main(["visualize", "activations", "--model", "lenet5", "--layer", "nope",
                     "--out", out]) == 2


def test_scoremap_command(tmp_path, capsys):
    out = str(tmp_path / "coffee.png")
    assert cli.main(["visualize", "scoremap", "--weights", "lenet5.digits", "--image", "coffee",
                     "--size", "40", "--stride", "2", "--class", "3", "--out", out]) == 0
    text = capsys.readouterr().out
    assert "lenet5: 5x15 map at stride 2 px (network stride 4, receptive field 32)" in text
    assert "top classes" in text
    _png(out, (1200, 500))
    assert cli.main(["visualize", "scoremap", "--image", "coffee"]) == 2
    assert "needs --model" in capsys.readouterr().err
