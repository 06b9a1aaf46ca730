"""Bad calls at the model boundary: each is an error that names the problem, never a silent
wrong result or a hang. Case ids carry the class of the reliability catalogue: c2 inputs
of the wrong kind, c3 params/state/rng that do not belong to the model, c4 BatchNorm in
train mode on degenerate batches, c5 absurd sizes, c10 a fully-convolutional net on an
image smaller than its crop. Errors are raised before anything compiles: tiny nets, lenet5,
and ``jax.eval_shape`` where a big model's variables are needed."""
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo import fully_conv as fc
from zoo import nn, registry
from zoo.registry import MAX_CLASSES


# ----------------------------------------------------------------------------------------
# Models and variables, built once and only when a case needs them.

@functools.cache
def lenet(name="lenet5", num_classes=10):
    model = zoo.create(name, num_classes=num_classes)
    return model, model.init(jax.random.key(0))


def _tiny(layers, size=8, name="tiny"):
    return zoo.Model(nn.Sequential(layers), dict(name=name, input_shape=(size, size, 1),
                                                 mean=(0.5,), std=(0.25,), num_classes=3,
                                                 classifier="fc"))


@functools.cache
def tiny():
    """conv-BN, then a BN over dense features (N values per channel) and a dropout."""
    model = _tiny([("conv", nn.Conv(4, 3, padding=1)), ("bn", nn.BatchNorm()),
                   ("relu", nn.Relu()), ("flatten", nn.Flatten()), ("fc1", nn.Dense(6)),
                   ("bn_fc", nn.BatchNorm()), ("drop", nn.Dropout(0.5)), ("fc", nn.Dense(3))])
    return model, model.init(jax.random.key(0))


@functools.cache
def tiny_pool_fcn():
    """Strided convs to a 1x1 map at 8x8, a global pool head; converted: one cell at 8x8."""
    model = _tiny([("conv1", nn.Conv(4, 3, stride=2, padding=1, rounding="floor")),
                   ("conv2", nn.Conv(4, 3, stride=2, padding=1, rounding="floor")),
                   ("conv3", nn.Conv(4, 3, stride=2, padding=1, rounding="floor")),
                   ("pool", nn.GlobalAvgPool()), ("fc", nn.Dense(3))])
    variables = model.init(jax.random.key(0))
    return (model, variables, *fc.convert(model, variables))


@functools.cache
def abstract(name, size=32, num_classes=1000):
    model = zoo.create(name, num_classes=num_classes)
    return model, model.abstract_init((1, size, size, 3))[0]


def x_of(shape=(2, 32, 32, 1), dtype=np.float32):
    return np.zeros(shape, dtype)


def lenet_apply(x, name="lenet5", **kw):
    model, v = lenet(name)
    return model.apply(v["params"], v["state"], x, **kw)


def traced(model, params, state, shape, dtype=jnp.float32, **kw):
    """``model.apply`` traced on abstract values: the checks run, nothing is computed."""
    return jax.eval_shape(lambda p, s, x: model.apply(p, s, x, **kw)[0], params, state,
                          jax.ShapeDtypeStruct(shape, dtype))


def with_leaf(tree, path, value):
    return zoo.paths.set_path(tree, tuple(path.split("/")), value)


def tiny_train(x_shape, rng=jax.random.key(0), **kw):
    model, v = tiny()
    return model.apply(v["params"], v["state"], np.ones(x_shape, np.float32), train=True,
                       rng=rng, **kw)


# ----------------------------------------------------------------------------------------
# The catalogue: (id, call, exception, pattern the message must match).

FIX = r"x\.astype\(jnp\.float32\) / 255.*mean=\(0\.5,\).*std=\(0\.5,\)"
C2 = [
    ("c2-uint8-lenet5", lambda: lenet_apply(x_of(dtype=np.uint8)), TypeError, "uint8.*" + FIX),
    ("c2-uint8-lenet5_1998", lambda: lenet_apply(x_of(dtype=np.uint8), "lenet5_1998"),
     TypeError, "lenet5_1998: x is uint8.*" + FIX),
    ("c2-uint16-lenet5", lambda: lenet_apply(x_of(dtype=np.uint16)), TypeError, "uint16.*/ 255"),
    ("c2-int32-lenet5", lambda: lenet_apply(x_of(dtype=np.int32)), TypeError, "int32.*/ 255"),
    ("c2-int64-lenet5", lambda: lenet_apply(x_of(dtype=np.int64)), TypeError, "int64.*/ 255"),
    ("c2-int8-lenet5", lambda: lenet_apply(x_of(dtype=np.int8)), TypeError, "int8.*/ 255"),
    ("c2-bool-lenet5", lambda: lenet_apply(x_of(dtype=bool)), TypeError, "bool.*/ 255"),
    ("c2-complex64-lenet5", lambda: lenet_apply(x_of(dtype=np.complex64)), TypeError,
     "complex64.*real floating"),
    ("c2-complex128-lenet5_1998", lambda: lenet_apply(x_of(dtype=np.complex128), "lenet5_1998"),
     TypeError, "complex128.*real floating"),
    ("c2-object-lenet5", lambda: lenet_apply(np.empty((1, 32, 32, 1), object)), TypeError,
     "x is object"),
    ("c2-list-lenet5", lambda: lenet_apply([[0.0] * 32] * 32), TypeError,
     r"array of images.*got list.*jnp\.asarray"),
    ("c2-none-lenet5", lambda: lenet_apply(None), TypeError, "got None"),
    ("c2-str-lenet5", lambda: lenet_apply("digit.png"), TypeError, "got str 'digit.png'"),
    ("c2-jax-uint8-jit-lenet5", lambda: jax.jit(lenet()[0].apply)(
        lenet()[1]["params"], {}, jnp.zeros((1, 32, 32, 1), jnp.uint8)), TypeError, "uint8"),
    ("c2-uint8-with-aux-lenet5", lambda: lenet()[0].apply_with_aux(
        lenet()[1]["params"], {}, x_of(dtype=np.uint8)), TypeError, "uint8.*/ 255"),
    ("c2-uint8-resnet18-names-mean", lambda: traced(
        abstract("resnet18")[0], *abstract("resnet18")[1].values(), (1, 32, 32, 3), jnp.uint8),
     TypeError, r"mean=\(0\.485, 0\.456, 0\.406\) and std=\(0\.229"),
    ("c2-rank3-lenet5", lambda: lenet_apply(x_of((32, 32, 1))), ValueError,
     r"NHWC.*1 channel.*\(32, 32, 1\)"),
    ("c2-channels3-lenet5", lambda: lenet_apply(x_of((1, 32, 32, 3))), ValueError,
     r"1 channel.*\(1, 32, 32, 3\)"),
    ("c2-nchw-lenet5", lambda: lenet_apply(x_of((1, 1, 32, 32))), ValueError, r"NHWC.*\(1, 1, 32, 32\)"),
    ("c2-empty-batch-lenet5", lambda: lenet_apply(x_of((0, 32, 32, 1))), ValueError,
     r"batch is empty.*\(0, 32, 32, 1\)"),
    ("c2-too-small-lenet5", lambda: lenet_apply(x_of((1, 8, 8, 1))), ValueError,
     "too small at layer 'conv2'.*W=2"),
    ("c2-zero-size-lenet5", lambda: lenet_apply(x_of((1, 0, 0, 1))), ValueError,
     "too small at layer 'conv1'.*W=0"),
    ("c2-odd-size-lenet5", lambda: lenet_apply(x_of((1, 29, 29, 1))), ValueError,
     r"layer 'pool1'.*does not fit.*\(25 - 2 \+ 2\*0\)/2 \+ 1 = 12\.5"),
]

C3 = [
    ("c3-resnet34-params-resnet18", lambda: traced(
        abstract("resnet18")[0], *abstract("resnet34")[1].values(), (1, 32, 32, 3)), ValueError,
     r"(?s)resnet18: the params and state given for input 32x32x3 do not match.*"
     r"0 missing, 80 unexpected.*unexpected +params/layer1/2/bn1/bias \(64,\)"),
    ("c3-resnet18-params-resnet34", lambda: traced(
        abstract("resnet34")[0], *abstract("resnet18")[1].values(), (1, 32, 32, 3)), ValueError,
     r"(?s)resnet34.*80 missing.*missing +params/layer1/2/bn1/bias"),
    ("c3-5-class-params-10-class-lenet5", lambda: lenet()[0].apply(
        lenet("lenet5", 5)[1]["params"], {}, x_of()), ValueError,
     r"(?s)mis-shaped +params/fc3/kernel: model \(84, 10\), given \(84, 5\).*"
     r"params are for 5 classes, the model has 10.*num_classes=5"),
    ("c3-10-class-params-5-class-lenet5", lambda: lenet("lenet5", 5)[0].apply(
        lenet()[1]["params"], {}, x_of()), ValueError, r"(?s)params/fc3/bias: model \(5,\), "
     r"given \(10,\).*params are for 10 classes, the model has 5"),
    ("c3-5-class-params-resnet18", lambda: traced(
        abstract("resnet18")[0], *abstract("resnet18", num_classes=5)[1].values(),
        (1, 32, 32, 3)), ValueError, r"(?s)params/fc/kernel: model \(512, 1000\), given "
     r"\(512, 5\).*5 classes, the model has 1000"),
    ("c3-state-empty-resnet18", lambda: traced(
        abstract("resnet18")[0], abstract("resnet18")[1]["params"], {}, (1, 32, 32, 3)),
     ValueError, r"(?s)40 missing.*missing +state/bn1/mean \(64,\).*state is empty.*"
     r"variables\['state'\]"),
    ("c3-state-none-resnet18", lambda: traced(
        abstract("resnet18")[0], abstract("resnet18")[1]["params"], None, (1, 32, 32, 3)),
     ValueError, r"(?s)state/bn1/var.*state is None, but the model keeps BatchNorm"),
    ("c3-swapped-resnet18", lambda: traced(
        abstract("resnet18")[0], abstract("resnet18")[1]["state"],
        abstract("resnet18")[1]["params"], (1, 32, 32, 3)), ValueError,
     r"(?s)102 missing, 102 unexpected.*look swapped.*apply\(params, state, x\)"),
    ("c3-swapped-lenet5", lambda: lenet()[0].apply({}, lenet()[1]["params"], x_of()),
     ValueError, r"(?s)missing +params/conv1/kernel.*unexpected +state/conv1/kernel.*swapped"),
    ("c3-params-none-lenet5", lambda: lenet()[0].apply(None, {}, x_of()), ValueError,
     r"(?s)10 missing.*missing +params/conv1/bias \(6,\)"),
    ("c3-lenet5_1998-params-lenet5", lambda: lenet()[0].apply(
        lenet("lenet5_1998")[1]["params"], {}, x_of()), ValueError,
     r"(?s)lenet5:.*missing +params/conv1/kernel.*unexpected +params/c1/kernel"),
    ("c3-missing-layer-lenet5", lambda: lenet()[0].apply(
        with_leaf(lenet()[1]["params"], "fc2", None), {}, x_of()), ValueError,
     r"(?s)2 missing, 0 unexpected.*missing +params/fc2/bias \(84,\)"),
    ("c3-extra-layer-lenet5", lambda: lenet()[0].apply(
        dict(lenet()[1]["params"], fc9={"kernel": np.zeros((3, 3), np.float32)}), {},
        x_of()), ValueError, r"unexpected +params/fc9/kernel \(3, 3\)"),
    ("c3-int-leaf-lenet5", lambda: lenet()[0].apply(
        with_leaf(lenet()[1]["params"], "fc1/bias", np.zeros(120, np.int32)), {}, x_of()),
     ValueError, "dtype +params/fc1/bias: int32, expected a floating dtype"),
    ("c3-list-leaf-lenet5", lambda: lenet()[0].apply(
        with_leaf(lenet()[1]["params"], "fc3/bias", "zeros"), {}, x_of()), ValueError,
     "non-array +params/fc3/bias: str 'zeros'"),
    ("c3-abstract-leaf-lenet5", lambda: lenet()[0].apply(
        lenet()[0].abstract_init()[0]["params"], {}, x_of()), ValueError,
     "non-array +params/conv1/bias: ShapeDtypeStruct"),
    ("c3-params-for-32-input-36-lenet5", lambda: lenet_apply(x_of((1, 36, 36, 1))), ValueError,
     r"(?s)input 36x36x1.*params/fc1/kernel: model \(576, 120\), given \(400, 120\).*"
     r"params are for 32x32x1 inputs.*this input is 36x36x1"),
    ("c3-with-aux-checked-lenet5", lambda: lenet()[0].apply_with_aux(
        lenet("lenet5", 5)[1]["params"], {}, x_of()), ValueError, "5 classes"),
    ("c3-jit-checked-lenet5", lambda: jax.jit(lenet()[0].apply)(
        lenet("lenet5", 5)[1]["params"], {}, x_of()), ValueError, "5 classes"),
    ("c3-rng-int-tiny", lambda: tiny_train((2, 8, 8, 1), rng=0), TypeError,
     r"rng must be a PRNG key.*got int 0.*jax\.random\.key\(0\)"),
    ("c3-rng-float-tiny", lambda: tiny_train((2, 8, 8, 1), rng=0.5), TypeError, "got float 0.5"),
    ("c3-rng-str-tiny", lambda: tiny_train((2, 8, 8, 1), rng="seed"), TypeError,
     "got str 'seed'"),
    ("c3-rng-numpy-int-tiny", lambda: tiny_train((2, 8, 8, 1), rng=np.array([0, 1])),
     TypeError, r"got int64 array of shape \(2,\).*jax\.random\.key\(0\)"),
    ("c3-rng-uint32-3-tiny", lambda: tiny_train((2, 8, 8, 1), rng=np.zeros(3, np.uint32)),
     ValueError, r"legacy uint32\[2\].*got uint32 array of shape \(3,\)"),
    ("c3-rng-key-batch-tiny", lambda: tiny_train((2, 8, 8, 1),
                                                 rng=jax.random.split(jax.random.key(0))),
     ValueError, r"one PRNG key.*shape \(2,\).*rng\[0\]"),
    ("c3-rng-none-dropout-tiny", lambda: tiny_train((2, 8, 8, 1), rng=None), ValueError,
     r"train=True needs an explicit rng for its dropout layers \(drop\).*jax\.random\.key\(0\)"),
    ("c3-rng-int-eval-lenet5", lambda: lenet_apply(x_of(), rng=7), TypeError, "got int 7"),
]

C4 = [
    ("c4-batch1-resnet18-32", lambda: traced(
        abstract("resnet18")[0], *abstract("resnet18")[1].values(), (1, 32, 32, 3),
        train=True), ValueError, r"layer 'layer4/0/bn1': BatchNorm in train mode expected more "
     r"than 1 value per channel, got input of shape \(1, 1, 1, 512\).*larger batch.*train=False"),
    ("c4-batch1-dense-bn-tiny", lambda: tiny_train((1, 8, 8, 1)), ValueError,
     r"layer 'bn_fc'.*more than 1 value per channel.*\(1, 6\)"),
    ("c4-batch1-jit-tiny", lambda: jax.jit(functools.partial(tiny()[0].apply, train=True))(
        *tiny()[1].values(), x_of((1, 8, 8, 1)), rng=jax.random.key(0)), ValueError,
     "layer 'bn_fc'.*more than 1 value"),
    ("c4-empty-batch-train-tiny", lambda: tiny_train((0, 8, 8, 1)), ValueError,
     r"tiny: the batch is empty \(x has shape \(0, 8, 8, 1\)\)"),
    ("c4-empty-batch-train-resnet18", lambda: traced(
        abstract("resnet18")[0], *abstract("resnet18")[1].values(), (0, 32, 32, 3),
        train=True), ValueError, "resnet18: the batch is empty"),
    ("c4-bn-layer-one-value", lambda: nn.BatchNorm().apply(
        {"scale": jnp.ones(4), "bias": jnp.zeros(4)}, {"mean": jnp.zeros(4), "var": jnp.ones(4)},
        jnp.ones((1, 1, 1, 4)), train=True), ValueError, "layer '<input>'.*1 per channel"),
    ("c4-bn-layer-empty-in-scope", lambda: _in_scope("block/bn", lambda: nn.BatchNorm().apply(
        {"scale": jnp.ones(4), "bias": jnp.zeros(4)}, {"mean": jnp.zeros(4), "var": jnp.ones(4)},
        jnp.ones((0, 4)), train=True)), ValueError, r"layer 'block/bn'.*\(0, 4\) \(0 per channel\)"),
]


def _in_scope(path, fn):
    with nn.scopes(path.split("/")):
        return fn()


def _timed_reject(fn):
    t0 = time.perf_counter()
    try:
        fn()
    finally:
        assert time.perf_counter() - t0 < 1.0  # refused before anything is built


C5 = [
    ("c5-num-classes-1e12-lenet5", lambda: _timed_reject(
        lambda: zoo.create("lenet5", num_classes=10**12)), ValueError,
     r"num_classes=1000000000000 is more than MAX_CLASSES=1,000,000"),
    ("c5-num-classes-max-plus-1-resnet18", lambda: zoo.create("resnet18",
                                                              num_classes=MAX_CLASSES + 1),
     ValueError, "num_classes=1000001 is more than MAX_CLASSES"),
    ("c5-features-only-not-bool-lenet5", lambda: zoo.create("lenet5", features_only="yes"),
     TypeError, "lenet5: features_only must be True or False, got 'yes'"),
    ("c5-num-classes-negative-lenet5", lambda: zoo.create("lenet5", num_classes=-3), ValueError,
     r"num_classes must be >= 1 \(or 0: no classifier, the features\), got -3"),
    ("c5-num-classes-bool-lenet5", lambda: zoo.create("lenet5", num_classes=True), TypeError,
     "num_classes must be an int, got bool True"),
    ("c5-num-classes-float-lenet5", lambda: zoo.create("lenet5", num_classes=10.5), TypeError,
     "num_classes must be an int, got float 10.5"),
    ("c5-num-classes-str-lenet5", lambda: zoo.create("lenet5", num_classes="10"), TypeError,
     "num_classes must be an int, got str '10'"),
    ("c5-num-classes-config-kw-vgg11", lambda: zoo.create("vgg11", **{"num_classes": 10**9}),
     ValueError, "vgg11: num_classes=1000000000"),
    ("c5-aux-logits-str-googlenet", lambda: zoo.create("googlenet", aux_logits="yes"),
     TypeError, "googlenet: aux_logits must be True or False, got 'yes'"),
    ("c5-aux-logits-int-googlenet", lambda: zoo.create("googlenet", aux_logits=1), TypeError,
     "aux_logits must be True or False, got 1"),
    ("c5-unknown-arg-resnet18", lambda: zoo.create("resnet18", width=10**6), ValueError,
     r"resnet18: unknown config \['width'\]"),
    ("c5-model-by-hand-1e12", lambda: _timed_reject(lambda: zoo.Model(
        nn.Sequential([("fc", nn.Dense(10))]), dict(name="hand", input_shape=(4, 4, 1),
                                                   num_classes=10**12))), ValueError,
     "hand: num_classes=1000000000000 is more than MAX_CLASSES"),
    ("c5-from-metadata-1e12", lambda: _timed_reject(lambda: registry.from_metadata(
        {"model": "lenet5", "num_classes": 10**12})), ValueError,
     "lenet5: num_classes=1000000000000 is more than MAX_CLASSES"),
    ("c5-from-metadata-config-1e12", lambda: registry.from_metadata(
        {"model": "lenet5", "config": {"num_classes": 10**12}}), ValueError, "MAX_CLASSES"),
    ("c5-from-metadata-num-classes-text", lambda: registry.from_metadata(
        {"model": "lenet5", "num_classes": "ten"}), ValueError,
     "metadata's config does not build lenet5.*num_classes must be an int, got str 'ten'"),
    ("c5-from-metadata-aux-text", lambda: registry.from_metadata(
        {"model": "googlenet", "config": {"aux_logits": "yes"}}), ValueError,
     "does not build googlenet.*aux_logits must be True or False"),
    ("c5-from-metadata-model-not-a-name", lambda: registry.from_metadata(
        {"model": ["lenet5"]}), ValueError, r"'model' must be a model name, got \['lenet5'\]"),
    ("c5-dense-zero-width", lambda: nn.Dense(0), ValueError, "Dense: features must be >= 1, got 0"),
    ("c5-conv-float-width", lambda: nn.Conv(2.5, 3), TypeError, "Conv: features must be an int"),
]

C10 = [
    ("c10-fcn-smaller-than-crop", lambda: tiny_pool_fcn()[2].apply(
        *tiny_pool_fcn()[3].values(), x_of((1, 4, 4, 1))), ValueError,
     "tiny: an input of 4x4 is smaller than the training size 8x8.*at least one full crop"),
    ("c10-fcn-narrower-than-crop", lambda: tiny_pool_fcn()[2].apply(
        *tiny_pool_fcn()[3].values(), x_of((1, 8, 5, 1))), ValueError,
     "input of 8x5 is smaller than the training size 8x8"),
    ("c10-fcn-smaller-check-false", lambda: tiny_pool_fcn()[2].apply(
        *tiny_pool_fcn()[3].values(), x_of((1, 4, 4, 1)), check=False), ValueError,
     "smaller than the training size"),
    ("c10-fcn-map-shape-smaller", lambda: tiny_pool_fcn()[2].map_shape(6, 6), ValueError,
     "input of 6x6 is smaller than the training size 8x8"),
    ("c10-fcn-compiled-smaller", lambda: tiny_pool_fcn()[2].compiled(
        *tiny_pool_fcn()[3].values(), (1, 7, 8, 1)), ValueError, "smaller than the training"),
    ("c10-fcn-uint8", lambda: tiny_pool_fcn()[2].apply(
        *tiny_pool_fcn()[3].values(), x_of((1, 16, 16, 1), np.uint8)), TypeError,
     r"tiny: x is uint8.*/ 255.*mean=\(0\.5,\) and std=\(0\.25,\)"),
    ("c10-fcn-complex", lambda: tiny_pool_fcn()[2].apply(
        *tiny_pool_fcn()[3].values(), x_of((1, 16, 16, 1), np.complex64)), TypeError,
     "complex64"),
    ("c10-fcn-compiled-int", lambda: tiny_pool_fcn()[2].compiled(
        *tiny_pool_fcn()[3].values(), (1, 16, 16, 1), jnp.int32), TypeError, "x is int32"),
    ("c10-score-map-uint8", lambda: fc.score_map(
        tiny_pool_fcn()[2], tiny_pool_fcn()[3], x_of((16, 16, 1), np.uint8)), TypeError,
     "tiny: x is uint8"),
    ("c10-score-map-smaller", lambda: fc.score_map(
        tiny_pool_fcn()[2], tiny_pool_fcn()[3], x_of((4, 16, 1))), ValueError,
     "input of 4x16 is smaller than the training size 8x8"),
    ("c10-fcn-original-params", lambda: tiny_pool_fcn()[2].apply(
        *tiny_pool_fcn()[1].values(), x_of((1, 16, 16, 1))), ValueError,
     r"mis-shaped +params/fc/kernel: model \(1, 1, 4, 3\), given \(4, 3\)"),
]

CASES = C2 + C3 + C4 + C5 + C10


@pytest.mark.parametrize("call,error,pattern", [pytest.param(c, e, p, id=i)
                                                for i, c, e, p in CASES])
def test_bad_call_is_a_clear_error(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_catalogue_size():
    counts = {c: sum(i.startswith(c + "-") for i, *_ in CASES) for c in ("c2", "c3", "c4", "c5", "c10")}
    assert sum(counts.values()) >= 50 and min(counts.values()) >= 5, counts


# ----------------------------------------------------------------------------------------
# What still works.

def test_a_correct_call_gives_the_same_logits_with_and_without_the_check():
    model, v = lenet()
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 1), dtype=np.float32)
    checked, _ = model.apply(v["params"], v["state"], x)
    unchecked, _ = model.apply(v["params"], v["state"], x, check=False)
    np.testing.assert_array_equal(checked, unchecked)
    stateless, state = model.apply(v["params"], None, x)   # None is {} for a stateless model
    np.testing.assert_array_equal(checked, stateless)
    assert state == {}


def test_both_kinds_of_keys_and_floating_inputs_are_accepted():
    model, v = tiny()
    x = np.random.default_rng(1).standard_normal((2, 8, 8, 1), dtype=np.float32)
    typed, _ = model.apply(*v.values(), x, train=True, rng=jax.random.key(3))
    legacy, _ = model.apply(*v.values(), x, train=True, rng=jax.random.PRNGKey(3))
    np.testing.assert_array_equal(typed, legacy)
    for dtype in (jnp.bfloat16, jnp.float16, jnp.float64):
        out = jax.eval_shape(lambda p, s, x: model.apply(p, s, x)[0], *v.values(),
                             jax.ShapeDtypeStruct((2, 8, 8, 1), dtype))
        assert out.shape == (2, 3)


def test_valid_sizes_build_and_resolve_quickly():
    model = zoo.create("lenet5", num_classes=np.int64(MAX_CLASSES))
    assert model.config["num_classes"] == MAX_CLASSES and type(model.config["num_classes"]) is int
    assert model.output_shape() == (1, MAX_CLASSES)
    assert zoo.create("googlenet", aux_logits=np.bool_(True)).config["aux_logits"] is True
