"""Features from inside a model (zoo.features): capture= in train and eval, under jit and
grad; headless models (num_classes=0); feature extractors (features_only=True) with their
feature_info; pretrained weights loaded into both."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo import nn


def _x(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


@pytest.fixture(scope="module")
def resnet():
    model = zoo.create("resnet18", num_classes=5)
    return model, model.init(jax.random.key(0), (2, 64, 64, 3))


def test_captured_activation_is_the_truncated_nets_output(resnet):
    model, v = resnet
    x = _x((2, 64, 64, 3))
    names = ("layer2", "layer3/1", "avgpool")
    for train in (False, True):
        rng = jax.random.key(1) if train else None
        logits, state, got = jax.jit(lambda p, s, x: model.apply(
            p, s, x, train=train, rng=rng, capture=names))(v["params"], v["state"], x)
        ref_logits, ref_state = model.apply(v["params"], v["state"], x, train=train, rng=rng)
        np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
        for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        assert [got[n].shape for n in names] == [(2, 8, 8, 128), (2, 4, 4, 256), (2, 512)]
        for name in names:   # the net cut after that layer gives the same activation
            cut = nn.truncate(model.network, name.split("/"))
            want, _ = cut.apply(v["params"], v["state"], x, train=train, rng=rng,
                                policy=model.policy)
            np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-4, err_msg=name)


def test_capture_names_are_checked(resnet):
    model, v = resnet
    with pytest.raises(ValueError, match=r"no layer 'layer5' to capture; did you mean 'layer"):
        model.apply(v["params"], v["state"], _x((1, 64, 64, 3)), capture=("layer5",))
    with pytest.raises(ValueError, match=r"no layer 3 to capture"):
        model.apply(v["params"], v["state"], _x((1, 64, 64, 3)), capture=(3,))


def test_vgg16_perceptual_loss_has_finite_nonzero_input_gradients():
    model = zoo.create("vgg16", features_only=False)
    v = model.init(jax.random.key(0), (1, 32, 32, 3))
    layers = ("conv1_2", "conv2_2", "conv3_3", "conv4_3")
    a, b = _x((1, 32, 32, 3), 1), _x((1, 32, 32, 3), 2)

    def loss(x):
        _, _, fa = model.apply(v["params"], v["state"], x, capture=layers)
        _, _, fb = model.apply(v["params"], v["state"], b, capture=layers)
        return sum(jnp.mean((fa[k] - fb[k]) ** 2) for k in layers)

    g = jax.jit(jax.grad(loss))(a)
    assert g.shape == a.shape and bool(jnp.all(jnp.isfinite(g)))
    assert float(jnp.abs(g).max()) > 0


def test_headless_models_give_the_pooled_features():
    for name, size, width in (("resnet50", 64, 2048), ("vgg11", 32, 4096),
                              ("googlenet", 64, 1024), ("lenet5", 32, 84)):
        model = zoo.create(name, num_classes=0)
        c = model.input_shape[-1]
        assert model.num_classes == 0 and model.classifier == ()
        assert model.output_shape((2, size, size, c)) == (2, width), name
    with pytest.raises(ValueError, match=r"aux_logits=True needs classes"):
        zoo.create("googlenet", num_classes=0, aux_logits=True)
    with pytest.raises(ValueError, match=r"num_classes must be >= 1 \(or 0"):
        zoo.create("resnet18", num_classes=-1)


def test_features_only_returns_the_stages_with_their_info():
    model = zoo.create("resnet18", features_only=True)
    info = model.feature_info
    assert [(d["name"], d["channels"], d["stride"]) for d in info] == [
        ("relu", 64, 2), ("layer1", 64, 4), ("layer2", 128, 8), ("layer3", 256, 16),
        ("layer4", 512, 32)]
    assert info[-1]["receptive_field"] == 435 and info[-1]["shape"] == (7, 7, 512)
    v = model.init(jax.random.key(0), (1, 64, 64, 3))
    assert "fc" not in v["params"]
    feats, _ = model.apply(v["params"], v["state"], _x((1, 64, 64, 3)))
    assert list(feats) == [d["name"] for d in info]
    assert [f.shape[1:] for f in feats.values()] == [
        (32, 32, 64), (16, 16, 64), (8, 8, 128), (4, 4, 256), (2, 2, 512)]
    vgg = zoo.create("vgg16", features_only=True).feature_info
    assert [(d["name"], d["receptive_field"]) for d in vgg][-1] == ("relu5_3", 196)
    again = zoo.registry.from_metadata({"model": "resnet18", "config": model.metadata()})
    assert again.features_only and again.metadata() == model.metadata()
    with pytest.raises(ValueError, match=r"features_only=True has no classifier"):
        zoo.create("resnet18", num_classes=10, features_only=True)


def test_pretrained_weights_load_into_headless_and_feature_models():
    from zoo.weights import load, load_for_finetuning

    _, full = load("lenet5.digits")
    for model, left in ((zoo.create("lenet5", num_classes=0), "fc3"),
                        (zoo.create("lenet5", features_only=True), "fc1, fc2, fc3")):
        got, info = load_for_finetuning("lenet5.digits", model)
        assert f"(the model has no {left}: left out)" in info["message"]
        flat, ref = zoo.paths.flatten(got), zoo.paths.flatten(full)
        assert flat and all(np.array_equal(flat[k], ref[k]) for k in flat)   # every one loaded
        assert len(flat) == len(zoo.paths.flatten(model.init(jax.random.key(0))))
