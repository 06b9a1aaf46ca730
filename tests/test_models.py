"""Every registered model: parameter counts against published figures, shapes, modes."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo

# 1000 classes (10 for LeNet) at the native input size; params only, BN statistics are state.
PUBLISHED_PARAMS = {
    "lenet5": 61_706,
    "lenet5_1998": 60_850,
    "alexnet": 61_100_840,
    "alexnet_2012": 60_965_224,
    "zfnet": 62_357_608,
    "vgg11": 132_863_336, "vgg13": 133_047_848, "vgg16": 138_357_544, "vgg19": 143_667_240,
    "vgg11_bn": 132_868_840, "vgg13_bn": 133_053_736, "vgg16_bn": 138_365_992,
    "vgg19_bn": 143_678_248,
    "googlenet": 6_624_904,
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808,
}

# A small input at which each model's geometry fits, for the tests that compute.
SMALL_INPUT = {
    "lenet5": 32, "lenet5_1998": 32,
    "alexnet": 64, "alexnet_2012": 67, "zfnet": 64,
    "googlenet_2014": 224,  # its 7x7/1 average pool needs a 7x7 5b map: inputs of 223 or more
}
SMALL_DEFAULT = 32  # VGG, ResNet, GoogLeNet work on CIFAR-sized images

ALL = zoo.list_models()


def per_model(names):
    """One xdist group per model (``pytest --dist loadgroup``): a model's tests share one
    worker, so its init and compiled applies are made once."""
    return [pytest.param(n, marks=pytest.mark.xdist_group(n)) for n in names]


def small_shape(name, batch=2):
    model = zoo.create(name)
    h, w, c = model.input_shape
    size = SMALL_INPUT.get(name, SMALL_DEFAULT)
    return (batch, size, size, c)


_JIT_APPLY = {}
# The train-mode tests check what train mode does (statistics updated, dropout keyed by the
# rng), which does not depend on code generation: LLVM's optimizations and XLA's fusion
# emitters off make those programs compile in about a third of the time (GoogLeNet's train
# step with its aux heads: 17-21 s, 9 s at O0, 5 s with the emitters off too).
UNOPTIMIZED = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def jitted_apply(model, train=False):
    """One compiled apply per model and mode: eager mode compiles every op for every new
    shape, which on deep nets costs far more than compiling the whole graph once. The tests
    feed it ``small_shape(name)`` (and one example), so each model compiles one eval and
    one train program."""
    if (model.name, train) not in _JIT_APPLY:
        _JIT_APPLY[model.name, train] = zoo.jit(
            functools.partial(model.apply, train=train), compiler_options=UNOPTIMIZED if train else None)
    return _JIT_APPLY[model.name, train]


#: What these tests check (shapes, modes, state) does not depend on how convs run; Winograd's
#: layers add about 1 s of compile each (VGG at 32x32, GoogLeNet-2014 at 224), so they run
#: with it off. Its values: tests/test_winograd.py, test_policy.py and the torchvision parity.
POLICY = zoo.ConvPolicy(winograd=())


@pytest.fixture(scope="module")
def small_variables():
    cache = {}

    def get(name):
        if name not in cache:
            model = zoo.create(name, conv_policy=POLICY)
            cache[name] = (model, model.init(jax.random.key(0), small_shape(name)))
        return cache[name]

    return get


def test_registry_has_every_family():
    for family in ["lenet5", "alexnet", "zfnet", "vgg16", "googlenet", "resnet50"]:
        assert family in ALL
    assert zoo.list_models("resnet*") == sorted(n for n in ALL if n.startswith("resnet"))


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_param_count_matches_published(name):
    model = zoo.create(name)
    variables, out_shape = model.abstract_init()
    assert zoo.count_params(variables["params"]) == PUBLISHED_PARAMS[name]
    assert out_shape == (1, model.config["num_classes"])


def test_every_model_has_a_published_or_documented_count():
    for name in ALL:
        assert name in PUBLISHED_PARAMS or name.startswith(("preact_", "googlenet_2014")), name


# Every layer kind and block type, without the deeper and wider copies of the same code
# (ResNet-101/152 repeat ResNet-50's bottleneck, VGG-13/16/19 repeat VGG-11's layers): the
# tests that compile or run eagerly take these; the others are traced, not compiled (the
# deep copies' compiles cost 6-46 s each in a full run). Eager mode compiles each op on its
# own (ResNet-152 alone took 34 s).
REPRESENTATIVE = ["lenet5", "lenet5_1998", "alexnet", "alexnet_2012", "zfnet", "vgg11",
                  "vgg11_bn", "googlenet", "googlenet_2014", "resnet18", "resnet50",
                  "preact_resnet18", "preact_resnet50"]


def test_representatives_cover_every_family_and_block():
    def blocks(name):
        return {layer.kind for _, layer in zoo.nn.leaf_layers(zoo.create(name).network)}

    assert set(REPRESENTATIVE) <= set(ALL)
    assert {zoo.get_config(n)["paper"] for n in REPRESENTATIVE} == {zoo.get_config(n)["paper"] for n in ALL}
    assert set().union(*map(blocks, REPRESENTATIVE)) == set().union(*map(blocks, ALL))
    for name in ALL:  # every other model is a deeper or wider copy of a representative's blocks
        assert any(blocks(name) == blocks(r) and zoo.get_config(name)["paper"] == zoo.get_config(r)["paper"]
                   for r in REPRESENTATIVE), name


@pytest.mark.parametrize("name", per_model(REPRESENTATIVE))
def test_init_predicted_shape_equals_real_output(name, small_variables):
    model, variables = small_variables(name)
    shape = small_shape(name)
    x = jax.random.normal(jax.random.key(1), shape)
    logits, _ = jitted_apply(model)(variables["params"], variables["state"], x)
    assert logits.shape == model.output_shape(shape) == (2, model.config["num_classes"])
    assert bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.parametrize("name", [n for n in ALL if n not in REPRESENTATIVE])
def test_deeper_copies_trace_to_the_predicted_shape(name):
    """The deeper and wider copies of a representative's blocks, traced, not compiled (the
    values of their blocks are the representatives'; ResNet-101/152's parity with
    torchvision's structure: test_pretrained)."""
    model = zoo.create(name, conv_policy=POLICY)
    shape = small_shape(name)
    variables, _ = model.abstract_init(shape)
    logits, _ = jax.eval_shape(functools.partial(model.apply, train=False), variables["params"],
                               variables["state"], jax.ShapeDtypeStruct(shape, jnp.float32))
    assert logits.shape == model.output_shape(shape) == (2, model.config["num_classes"])
    assert logits.dtype == jnp.float32


@pytest.mark.parametrize("name", per_model(REPRESENTATIVE))
def test_jit_equals_eager(name, small_variables):
    model, variables = small_variables(name)
    x = jax.random.normal(jax.random.key(2), small_shape(name))
    eager, _ = model.apply(variables["params"], variables["state"], x)
    jitted, _ = jitted_apply(model)(variables["params"], variables["state"], x)
    np.testing.assert_allclose(jitted, eager, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(eager))))


@pytest.mark.parametrize("name", per_model(REPRESENTATIVE))
def test_eval_is_per_example(name, small_variables):
    model, variables = small_variables(name)
    x = jax.random.normal(jax.random.key(2), small_shape(name))
    batched, _ = jitted_apply(model)(variables["params"], variables["state"], x)
    single, _ = jitted_apply(model)(variables["params"], variables["state"], x[:1])
    np.testing.assert_allclose(single[0], batched[0], rtol=1e-4,
                               atol=1e-5 * max(1.0, float(jnp.max(jnp.abs(batched)))))


@pytest.mark.parametrize("name", per_model(ALL))
def test_any_num_classes(name):
    model = zoo.create(name, num_classes=7)
    _, out = model.abstract_init(small_shape(name))
    assert out == (2, 7)


@pytest.mark.parametrize("name", per_model(REPRESENTATIVE))
def test_train_mode_updates_bn_state_and_eval_leaves_it(name, small_variables):
    model, variables = small_variables(name)
    x = jax.random.normal(jax.random.key(3), small_shape(name))
    params, state = variables["params"], variables["state"]
    _, eval_state = jitted_apply(model)(params, state, x)
    assert jax.tree_util.tree_all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), eval_state, state))
    train_logits, train_state = jitted_apply(model, train=True)(params, state, x, rng=jax.random.key(4))
    assert jax.tree_util.tree_structure(train_state) == jax.tree_util.tree_structure(state)
    if jax.tree_util.tree_leaves(state):
        changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), train_state, state)
        assert all(jax.tree_util.tree_leaves(changed)), f"{name}: some BN statistics were not updated"
    assert bool(jnp.all(jnp.isfinite(train_logits)))


def _has_dropout(layer):
    return layer.kind == "dropout" or any(_has_dropout(child) for _, child in layer.children)


@pytest.mark.parametrize("name", per_model(n for n in REPRESENTATIVE if _has_dropout(zoo.create(n).network)))
def test_dropout_depends_on_rng_and_is_off_in_eval(name, small_variables):
    model, variables = small_variables(name)
    params, state = variables["params"], variables["state"]
    x = jax.random.normal(jax.random.key(5), small_shape(name))
    train = jitted_apply(model, train=True)
    a, _ = train(params, state, x, rng=jax.random.key(1))
    b, _ = train(params, state, x, rng=jax.random.key(2))
    a2, _ = train(params, state, x, rng=jax.random.key(1))
    assert float(jnp.max(jnp.abs(a - b))) > 1e-6
    np.testing.assert_array_equal(a, a2)
    e1, _ = jitted_apply(model)(params, state, x)
    e2, _ = jitted_apply(model)(params, state, x)
    np.testing.assert_array_equal(e1, e2)
    with pytest.raises(ValueError, match=r"rng for its dropout layers \(.*drop"):
        model.apply(params, state, x, train=True)


def test_wrong_channels_is_a_clear_error():
    model = zoo.create("lenet5")
    with pytest.raises(ValueError, match="1 channel"):
        model.init(jax.random.key(0), (1, 32, 32, 3))


def test_wrong_input_size_at_apply_names_the_layer():
    model = zoo.create("lenet5")
    variables = model.init(jax.random.key(0))
    with pytest.raises(ValueError, match="fc1"):
        model.apply(variables["params"], variables["state"], jnp.zeros((1, 36, 36, 1)))


def test_unknown_model_lists_choices():
    with pytest.raises(ValueError, match="lenet5"):
        zoo.create("lenet6")
