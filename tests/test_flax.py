"""zoo.flax: the zoo's models as Flax Linen and NNX modules give the zoo model's outputs, keep
its params and BatchNorm statistics at its paths, train as the zoo trainer does, freeze,
round-trip and checkpoint; docs/interop.md's examples run."""
import pathlib
import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
import flax.linen as nn

import zoo
import zoo.flax as zflax
from conftest import normal
from zoo import nn as znn, paths
from zoo.train import Trainer, TrainConfig

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "interop.md"
LR = 0.1
TOL = dict(rtol=1e-5, atol=1e-5)
LENET = (2, 32, 32, 1)
RESNET = (2, 32, 32, 3)


def doc_blocks(section: str) -> list[str]:
    """The python code blocks of the docs' ``## <section>``."""
    text = DOCS.read_text()
    part = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", part, flags=re.S)


def doc_function(section: str, name: str):
    """The function ``name`` as the docs define it (its block runs alone)."""
    (block,) = [b for b in doc_blocks(section) if f"def {name}(" in b]
    namespace = {}
    exec(compile(block, str(DOCS), "exec"), namespace)
    return namespace[name]


def assert_trees_close(a, b, **tol):
    """Leaf by leaf; by default within TOL of each leaf's own scale (two programs that sum in
    another order differ by float32 rounding of the largest terms, which CPUs vary)."""
    fa, fb = paths.flatten(a), paths.flatten(b)
    assert sorted(fa) == sorted(fb)
    for p in fa:
        want = np.asarray(fb[p])
        scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
        np.testing.assert_allclose(np.asarray(fa[p]), want, err_msg=p,
                                   **(tol or dict(TOL, atol=TOL["atol"] * scale)))


def shapes(tree):
    return {p: tuple(np.shape(v)) for p, v in paths.flatten(tree).items()}


def tiny_model():
    """conv-BN-relu, dropout 0.5 and a dense head on 8x8x1: BatchNorm and dropout in a moment."""
    layers = [("conv1", znn.Conv(4, 3, padding=1)), ("bn1", znn.BatchNorm()),
              ("relu1", znn.Relu()), ("flatten", znn.Flatten()), ("drop", znn.Dropout(0.5)),
              ("fc", znn.Dense(3))]
    return zoo.Model(znn.Sequential(layers), dict(name="tiny", input_shape=(8, 8, 1), mean=(0.5,),
                                                  std=(0.5,), num_classes=3, classifier="fc"))


class Net(nn.Module):
    """A user's Linen module: a zoo backbone and a new head."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(3, name="head")(zflax.Linen("lenet5", name="backbone")(x, train))


@pytest.fixture(scope="module")
def resnet():
    """ResNet-18 (5 classes, 32x32, batch 2) and one step of the zoo trainer from the NNX
    module's initial weights: SGD with momentum, label smoothing 0, no weight decay. Every
    conv is XLA's (ConvPolicy.xla()) to keep the compiles short."""
    model = zoo.create("resnet18", 5, conv_policy=zoo.ConvPolicy.xla())
    v0 = zflax.NNX(model, input_shape=RESNET, rngs=nnx.Rngs(0)).pure_variables()
    x, y = normal(0, RESNET), jnp.array([1, 3])
    cfg = TrainConfig(model="resnet18", batch_size=2, optimizer="sgd", lr=LR, momentum=0.9,
                      schedule="constant", label_smoothing=0.0, weight_decay=0.0)
    trainer = Trainer(model, cfg, 1, params_template=v0["params"], state_template=v0["state"])
    ts, metrics = trainer.train_step(trainer.init_state(v0), x, y)
    return types.SimpleNamespace(model=model, v0=v0, x=x, y=y, params=ts.params,
                                 state=ts.state, loss=float(metrics["loss"]))


# ----------------------------------------------------------------------------------------
# Linen.

def test_linen_variables_and_logits_are_the_zoo_models():
    module, pure = zflax.Linen("lenet5"), zoo.create("lenet5")
    x = normal(1, LENET)
    variables = module.init(jax.random.key(0), x)
    assert list(variables) == ["params"]            # lenet5 keeps no BatchNorm statistics
    assert shapes(variables["params"]) == shapes(pure.init(jax.random.key(0), LENET)["params"])
    expected, _ = pure.apply(variables["params"], {}, x)
    np.testing.assert_allclose(module.apply(variables, x), expected, rtol=0, atol=1e-6)


def test_linen_resnet_keeps_statistics_in_batch_stats(resnet):
    module = zflax.Linen(resnet.model)
    abstract = jax.eval_shape(module.init, jax.random.key(0), resnet.x)
    assert shapes(abstract["params"]) == shapes(resnet.v0["params"])
    assert shapes(abstract["batch_stats"]) == shapes(resnet.v0["state"])
    variables = {"params": resnet.v0["params"], "batch_stats": resnet.v0["state"]}
    expected, _ = resnet.model.apply(resnet.v0["params"], resnet.v0["state"], resnet.x)
    np.testing.assert_allclose(module.apply(variables, resnet.x), expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"mutable=\['batch_stats'\]"):
        module.apply(variables, resnet.x, train=True)


def test_linen_train_step_equals_the_zoo_trainer(resnet):
    """The docs' Linen step (optax's cross-entropy, mutable batch_stats) against
    zoo.train.Trainer's step on the same batch: loss, updated params and statistics."""
    make_train_step = doc_function("Flax Linen", "make_train_step")
    module = zflax.Linen(resnet.model)
    tx = optax.sgd(LR, momentum=0.9)
    params, state = resnet.v0["params"], resnet.v0["state"]
    new_params, new_stats, _, loss = make_train_step(module, tx)(
        params, state, tx.init(params), resnet.x, resnet.y, jax.random.key(0))
    np.testing.assert_allclose(float(loss), resnet.loss, **TOL)
    assert_trees_close(new_params, resnet.params)
    assert_trees_close(new_stats, resnet.state)
    assert not np.allclose(new_stats["bn1"]["mean"], state["bn1"]["mean"])


def test_linen_dropout_rng_and_statistics():
    module, x = zflax.Linen(tiny_model()), normal(2, (2, 8, 8, 1))
    variables = module.init(jax.random.key(0), x)
    run = lambda k: module.apply(variables, x, train=True, mutable=["batch_stats"],  # noqa: E731
                                 rngs={"dropout": jax.random.key(k)})
    (a, stats), (b, _), (c, _) = run(1), run(1), run(2)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)                    # another dropout key, another mask
    assert not np.allclose(stats["batch_stats"]["bn1"]["mean"], variables["batch_stats"]["bn1"]["mean"])
    with pytest.raises(ValueError, match="batch_stats"):
        module.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})


def test_linen_as_a_submodule_under_jit():
    net, x = Net(), normal(3, LENET)
    variables = jax.jit(net.init)(jax.random.key(0), x)
    params = variables["params"]
    assert sorted(params) == ["backbone", "head"]
    assert shapes(params["backbone"]) == shapes(zoo.create("lenet5").init(jax.random.key(0), LENET)["params"])
    logits, _ = zoo.create("lenet5").apply(params["backbone"], {}, x)
    np.testing.assert_allclose(jax.jit(net.apply)(variables, x),
                               logits @ params["head"]["kernel"] + params["head"]["bias"], **TOL)


def test_linen_frozen_backbone_with_multi_transform():
    net, x, y = Net(), normal(4, LENET), jnp.array([0, 2])
    params = net.init(jax.random.key(0), x)["params"]
    tx = optax.multi_transform({"train": optax.sgd(LR), "frozen": optax.set_to_zero()},
                               {"backbone": "frozen", "head": "train"})
    step = doc_function("Flax Linen", "make_train_step")(net, tx)
    new, _, _, _ = step(params, {}, tx.init(params), x, y, jax.random.key(0))
    assert jax.tree.all(jax.tree.map(np.array_equal, new["backbone"], params["backbone"]))
    assert not np.allclose(new["head"]["kernel"], params["head"]["kernel"])


def test_pretrained_weights_fill_the_params():
    _, ref = zoo.weights.load("lenet5.digits")
    x = normal(5, LENET)
    variables = zflax.Linen("lenet5", pretrained="lenet5.digits").init(jax.random.key(0), x)
    assert_trees_close(variables["params"], ref["params"], rtol=0, atol=0)
    module = zflax.NNX("lenet5", pretrained="lenet5.digits", rngs=nnx.Rngs(0))
    assert_trees_close(nnx.to_pure_dict(nnx.state(module, nnx.Param)), ref["params"], rtol=0, atol=0)
    # Another class count, init under jit: the classifier (fc3) keeps its fresh init (the
    # init without weights), the rest is loaded.
    init = lambda **kw: jax.jit(zflax.Linen("lenet5", num_classes=3, **kw).init)(  # noqa: E731
        jax.random.key(0), x)["params"]
    flat, loaded = paths.flatten(init(pretrained="lenet5.digits")), paths.flatten(ref["params"])
    fresh = paths.flatten(init())
    assert flat["fc3/kernel"].shape == (84, 3)
    assert_trees_close({p: flat[p] for p in fresh if p.startswith("fc3/")},
                       {p: fresh[p] for p in fresh if p.startswith("fc3/")}, rtol=0, atol=0)
    assert_trees_close({p: v for p, v in flat.items() if not p.startswith("fc3/")},
                       {p: v for p, v in loaded.items() if not p.startswith("fc3/")}, rtol=0, atol=0)


def test_headless_and_features_only_are_forwarded():
    x = normal(6, LENET)
    for config in (dict(num_classes=0), dict(features_only=True)):
        pure = zoo.create("lenet5", **config)
        variables = zflax.Linen("lenet5", **config).init(jax.random.key(0), x)
        expected, _ = pure.apply(variables["params"], {}, x)
        assert_trees_close(zflax.Linen("lenet5", **config).apply(variables, x), expected)
        module = zflax.NNX("lenet5", **config, rngs=nnx.Rngs(0))
        got = module.pure_variables()
        assert_trees_close(module(x), pure.apply(got["params"], got["state"], x)[0])


# ----------------------------------------------------------------------------------------
# NNX.

def test_nnx_paths_logits_and_split_merge():
    module, pure, x = zflax.NNX("lenet5", rngs=nnx.Rngs(0)), zoo.create("lenet5"), normal(7, LENET)
    params = nnx.to_pure_dict(nnx.state(module, nnx.Param))
    assert shapes(params) == shapes(pure.init(jax.random.key(0), LENET)["params"])
    assert isinstance(module.conv1["kernel"], nnx.Param)
    expected, _ = pure.apply(params, {}, x)
    np.testing.assert_allclose(module(x), expected, rtol=0, atol=1e-6)
    graphdef, state = nnx.split(module)
    again = nnx.merge(graphdef, state)
    np.testing.assert_array_equal(again(x), module(x))
    assert_trees_close(again.pure_variables(), module.pure_variables(), rtol=0, atol=0)


def test_nnx_train_and_eval_switch_batch_norm_and_dropout():
    model = tiny_model()
    module, x = zflax.NNX(model, rngs=nnx.Rngs(0)), normal(8, (2, 8, 8, 1))
    assert module.use_running_average and module.deterministic      # eval mode when built
    v0 = module.pure_variables()
    assert isinstance(module.bn1["mean"], nnx.BatchStat)
    e1, e2 = module(x), module(x)
    np.testing.assert_array_equal(e1, e2)
    np.testing.assert_allclose(e1, model.apply(v0["params"], v0["state"], x)[0], rtol=0, atol=1e-6)
    assert_trees_close(module.pure_variables()["state"], v0["state"], rtol=0, atol=0)
    module.train()
    assert not (module.use_running_average or module.deterministic)
    t1, t2 = module(x), module(x)
    assert not np.allclose(t1, t2)                  # a new dropout mask per call
    moved = module.pure_variables()["state"]
    assert not np.allclose(moved["bn1"]["mean"], v0["state"]["bn1"]["mean"])
    module.eval()
    np.testing.assert_array_equal(module(x), module(x))
    assert_trees_close(module.pure_variables()["state"], moved, rtol=0, atol=0)
    module.deterministic = False
    with pytest.raises(ValueError, match="one mode"):
        module(x)


def test_nnx_optimizer_step_equals_the_zoo_trainer(resnet):
    module = zflax.NNX(resnet.model, input_shape=RESNET, rngs=nnx.Rngs(0))
    assert_trees_close(module.pure_variables(), resnet.v0, rtol=0, atol=0)
    expected, _ = resnet.model.apply(resnet.v0["params"], resnet.v0["state"], resnet.x)
    np.testing.assert_allclose(module(resnet.x), expected, rtol=0, atol=1e-6)
    train_step = doc_function("Flax NNX", "train_step")
    optimizer = nnx.Optimizer(module, optax.sgd(LR, momentum=0.9), wrt=nnx.Param)
    module.train()
    loss = train_step(module, optimizer, resnet.x, resnet.y)
    np.testing.assert_allclose(float(loss), resnet.loss, **TOL)
    got = module.pure_variables()
    assert_trees_close(got["params"], resnet.params)
    assert_trees_close(got["state"], resnet.state)
    assert not np.allclose(got["params"]["fc"]["kernel"], resnet.v0["params"]["fc"]["kernel"])


def test_nnx_orbax_checkpoint_restores_into_a_fresh_module(resnet, tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    build = lambda seed: zflax.NNX(resnet.model, input_shape=RESNET, rngs=nnx.Rngs(seed))  # noqa: E731
    module = build(0)
    module.train()
    module(resnet.x)                                # moves the BatchNorm statistics
    module.eval()
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "nnx", nnx.state(module))
    checkpointer.wait_until_finished()
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: build(1)))
    restored = nnx.merge(graphdef, checkpointer.restore(tmp_path / "nnx", abstract))
    assert_trees_close(restored.pure_variables(), module.pure_variables(), rtol=0, atol=0)
    np.testing.assert_array_equal(restored(resnet.x), module(resnet.x))


def test_docs_examples_run(tmp_path, monkeypatch):
    pytest.importorskip("orbax.checkpoint")
    monkeypatch.chdir(tmp_path)
    for section in ("Flax Linen", "Flax NNX"):
        namespace = {}
        for block in doc_blocks(section):
            exec(compile(block, str(DOCS), "exec"), namespace)


def test_bad_arguments_name_the_fix():
    with pytest.raises(TypeError, match="model name"):
        zflax.zoo_model(3)
    with pytest.raises(ValueError, match="zoo.create"):
        zflax.zoo_model(zoo.create("lenet5"), num_classes=3)
