"""Pretrained weights: torchvision import (parity with torchvision itself), the key map and
its errors, the weight registry and cache, the shipped lenet5, prediction, fine-tuning.

Nothing here reaches the network: downloads are tested with files placed in a temporary
cache. The parity tests need torch and torchvision (the ``torch`` extra) and build every
torchvision model with ``weights=None``; run ``pytest -s`` to see the logit differences.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

import zoo
from zoo import checkpoint as ckpt
from zoo import paths
from zoo import pretrained as P
import zoo.weights.hub

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TORCHVISION_MODELS = ["alexnet", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn",
                      "vgg19", "vgg19_bn", "googlenet", "resnet18", "resnet34", "resnet50",
                      "resnet101", "resnet152"]
#: The logits are compared on one model per key rule and conversion: AlexNet, VGG with and
#: without BatchNorm, both ResNet blocks (GoogLeNet: with its aux heads, below). The deeper
#: and wider copies are checked key by key and shape by shape against torchvision's own
#: structure (test_every_torchvision_key_fits): their values go through the same
#: conversions, and their logits cost 7-15 s each.
PARITY_MODELS = ["alexnet", "vgg11_bn", "vgg16", "resnet18", "resnet50"]
#: These run their parity check with Winograd's convs, as shipped but on every layer of its
#: shapes (the tile floor off: 1-2 images have fewer tiles than the benchmark's 8): its
#: map-size tiers and both ResNet blocks. The others turn Winograd off, for compile time
#: (about 1 s per layer); GoogLeNet's 3x3s are the same 14x14 and 28x28 convs.
WINOGRAD_PARITY = ("alexnet", "vgg16", "resnet18", "resnet50")
PARITY_POLICY = {True: zoo.ConvPolicy(winograd_min_tiles=0), False: zoo.ConvPolicy(winograd=())}


def _flat(tree):
    return {k: np.asarray(v) for k, v in paths.flatten(tree).items()}


def _assert_trees_equal(a, b):
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        assert fa[k].shape == fb[k].shape, k
        assert np.array_equal(fa[k], fb[k]), k


def _random_variables(name, seed=0, input_shape=None, **config):
    """A zoo model and random variables of its shapes (NumPy: no per-shape compilation as
    ``model.init`` has), with non-trivial BN parameters and statistics."""
    model = zoo.create(name, **config)
    abstract, _ = model.abstract_init(input_shape)
    rng = np.random.default_rng(seed)
    flat = {}
    for k, v in paths.flatten(abstract).items():
        leaf = k.rsplit("/", 1)[1]
        if leaf in ("mean", "bias"):
            value = 0.1 * rng.standard_normal(v.shape)
        elif leaf in ("var", "scale"):
            value = 0.5 + rng.random(v.shape)
        else:
            fan_in = int(np.prod(v.shape[:-1]))
            value = rng.standard_normal(v.shape) * np.sqrt(2.0 / fan_in)
        flat[k] = value.astype(np.float32)
    return model, paths.unflatten(flat)


# ----------------------------------------------------------------------------------------
# The key map (no torch needed).

def test_key_map_follows_torchvision_names():
    vgg = P.torchvision_key_map("vgg16")
    assert vgg["params/conv1_1/kernel"] == "features.0.weight"
    assert vgg["params/conv5_3/kernel"] == "features.28.weight"
    assert vgg["params/fc6/kernel"] == "classifier.0.weight"
    assert vgg["params/fc8/bias"] == "classifier.6.bias"
    vgg_bn = P.torchvision_key_map("vgg11_bn")
    assert vgg_bn["params/bn1_1/scale"] == "features.1.weight"
    assert vgg_bn["state/bn1_1/var"] == "features.1.running_var"
    alex = P.torchvision_key_map("alexnet")
    assert [alex[f"params/conv{i}/kernel"] for i in range(1, 6)] == [
        f"features.{i}.weight" for i in (0, 3, 6, 8, 10)]
    assert [alex[f"params/fc{i}/kernel"] for i in (6, 7, 8)] == [
        f"classifier.{i}.weight" for i in (1, 4, 6)]
    res = P.torchvision_key_map("resnet50")
    assert res["params/layer2/0/downsample/conv/kernel"] == "layer2.0.downsample.0.weight"
    assert res["state/layer2/0/downsample/bn/mean"] == "layer2.0.downsample.1.running_mean"
    assert res["params/layer4/2/bn3/scale"] == "layer4.2.bn3.weight"
    goog = P.torchvision_key_map(zoo.create("googlenet", aux_logits=True))
    assert goog["params/inception3a/branch2/reduce/conv/kernel"] == "inception3a.branch2.0.conv.weight"
    assert goog["params/inception3a/branch3/conv/bn/scale"] == "inception3a.branch3.1.bn.weight"
    assert goog["params/inception5b/branch4/proj/conv/kernel"] == "inception5b.branch4.1.conv.weight"
    assert goog["params/aux1/conv/conv/kernel"] == "aux1.conv.conv.weight"
    assert goog["params/aux2/fc1/kernel"] == "aux2.fc1.weight"


def test_models_without_torchvision_weights_are_refused():
    with pytest.raises(ValueError, match="no torchvision counterpart"):
        P.torchvision_key_map("lenet5")
    with pytest.raises(ValueError, match="no torchvision counterpart"):
        P.torchvision_key_map("preact_resnet18")


def test_safetensors_round_trip_with_numpy_alone(tmp_path):
    """zoo -> torchvision state dict -> .safetensors -> zoo is the identity; GoogLeNet with
    aux heads covers both flatten-fed dense layers' (C, H, W) -> (H, W, C) reordering."""
    model, variables = _random_variables("googlenet", aux_logits=True)
    sd = P.to_torchvision_state_dict(model, variables)
    assert sd["aux1.fc1.weight"].shape == (1024, 2048)
    assert sd["conv1.bn.num_batches_tracked"].dtype == np.int64
    path = tmp_path / "googlenet_aux.safetensors"
    safetensors.numpy.save_file(sd, str(path))
    _assert_trees_equal(P.load_torchvision(model, path), variables)
    # The same file into the model without aux heads: the aux weights are dropped.
    plain = P.load_torchvision("googlenet", path)
    assert "aux1" not in plain["params"]
    assert np.array_equal(plain["params"]["fc"]["kernel"], variables["params"]["fc"]["kernel"])


def test_flatten_order_is_converted_once_on_the_weights():
    """torch's fc6 input index c*H*W + h*W + w must become the zoo's (h*W + w)*C + c."""
    model, variables = _random_variables("alexnet")
    sd = P.to_torchvision_state_dict(model, variables)
    torch_fc6 = sd["classifier.1.weight"]            # (4096, 256*6*6), torch order
    zoo_fc6 = np.asarray(variables["params"]["fc6"]["kernel"])  # (6*6*256, 4096)
    for c, h, w in [(0, 0, 0), (5, 1, 2), (255, 5, 5), (17, 3, 0)]:
        np.testing.assert_array_equal(torch_fc6[:, c * 36 + h * 6 + w], zoo_fc6[(h * 6 + w) * 256 + c])


def test_mismatch_lists_missing_unexpected_and_misshaped_keys(tmp_path):
    model, variables = _random_variables("resnet18")
    sd = P.to_torchvision_state_dict(model, variables)
    path = tmp_path / "resnet18.safetensors"
    safetensors.numpy.save_file(sd, str(path))
    with pytest.raises(ValueError) as err:
        P.load_torchvision("resnet34", path)
    msg = str(err.value)
    assert "missing" in msg and "layer1.2.conv1.weight" in msg and "layer3.5.bn2.running_var" in msg
    with pytest.raises(ValueError) as err:
        P.load_torchvision("resnet50", path)
    msg = str(err.value)
    assert "mis-shaped  layer1.0.conv1.weight: file (64, 64, 3, 3), resnet50 needs (64, 64, 1, 1)" in msg
    assert "missing     layer1.0.conv3.weight" in msg
    sd["extra.weight"] = np.zeros(3, np.float32)
    del sd["fc.bias"]
    safetensors.numpy.save_file(sd, str(path))
    with pytest.raises(ValueError) as err:
        P.load_torchvision("resnet18", path)
    msg = str(err.value)
    assert "unexpected  extra.weight (3,)" in msg and "missing     fc.bias" in msg
    assert "1 missing, 1 unexpected, 0 mis-shaped" in msg


def test_zoo_file_is_not_a_torchvision_state_dict(tmp_path):
    model, variables = _random_variables("resnet18")
    path = tmp_path / "zoo.safetensors"
    ckpt.save_weights(variables, path, {"model": "resnet18", "num_classes": 1000})
    with pytest.raises(ValueError, match="zoo weights file"):
        P.load_torchvision("resnet18", path)


# ----------------------------------------------------------------------------------------
# Parity with torchvision (torch needed).

@pytest.fixture
def torch_modules():
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    return torch, torchvision


def _torchvision_model(torch, torchvision, name, aux=False):
    """A seeded random torchvision model in eval mode whose BatchNorm layers have random
    affine parameters and non-trivial running statistics (so that their conversion is
    really tested): the statistics of one train-mode pass over random images, then
    perturbed. Made-up statistics would blow ResNet-152's activations up to ~1e10."""
    torch.manual_seed(0)
    kwargs = (dict(aux_logits=aux, init_weights=True, transform_input=False)
              if name == "googlenet" else {})
    model = getattr(torchvision.models, name)(weights=None, **kwargs)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if not bns:
        return model.eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in bns:
            c = m.num_features
            m.weight.copy_(1 + 0.2 * torch.randn(c, generator=g))
            m.bias.copy_(0.2 * torch.randn(c, generator=g))
            m.momentum = 1.0                   # running statistics := this batch's
        model.train()
        model(torch.rand(2, 3, 112, 112, generator=g) * 4 - 2)   # 112: 4x cheaper than 224
        for m in bns:
            c = m.num_features
            m.momentum = 0.1
            m.running_mean.add_(0.1 * torch.randn(c, generator=g) * m.running_var.sqrt())
            m.running_var.mul_(0.7 + 0.6 * torch.rand(c, generator=g))
            m.num_batches_tracked.fill_(1000)
    return model.eval()


def _save_both(torch, model, directory):
    import safetensors.torch

    sd = model.state_dict()
    pth = os.path.join(directory, "weights.pth")
    st = os.path.join(directory, "weights.safetensors")
    torch.save(sd, pth)
    safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, st)
    return pth, st


def _check_logits(name, ours, ref, record_property):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape
    diff = float(np.max(np.abs(ours - ref)))
    scale = float(np.max(np.abs(ref)))
    print(f"\nparity {name}: max |logit diff| {diff:.3e}, max |logit| {scale:.3g}")
    record_property("max_abs_logit_diff", diff)
    assert diff <= 1e-4 * max(1.0, scale), (name, diff, scale)
    assert diff <= 1e-3 * scale, (name, diff, scale)  # also relative: logits may be small


@pytest.mark.parametrize("name", PARITY_MODELS)
def test_torchvision_parity(name, torch_modules, record_property):
    """The imported weights give torchvision's logits (float32, matmuls at 'highest')."""
    torch, torchvision = torch_modules
    t0 = time.perf_counter()
    model_t = _torchvision_model(torch, torchvision, name)
    batch = 1 if name.startswith("vgg") else 2   # the costliest: one image
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model_t(x).numpy()
    with tempfile.TemporaryDirectory() as tmp:          # removed at once: VGG files are big
        pth, st = _save_both(torch, model_t, tmp)
        del model_t
        # .safetensors (NumPy alone) and .pth (torch, weights_only) give the same tensors;
        # the full import runs from one of the two, alternately.
        from_st, from_pth = P.read_state_dict(st), P.read_state_dict(pth)
        assert from_st.keys() == from_pth.keys()
        assert all(np.array_equal(from_st[k], from_pth[k]) for k in from_st)
        del from_st, from_pth
        variables = P.load_torchvision(name, pth if PARITY_MODELS.index(name) % 2 else st)
    model = zoo.create(name, conv_policy=PARITY_POLICY[name in WINOGRAD_PARITY])
    with jax.default_matmul_precision("highest"):
        forward = jax.jit(lambda p, s, x: model.apply(p, s, x, train=False)[0])
        ours = forward(variables["params"], variables["state"],
                       jnp.asarray(x.numpy().transpose(0, 2, 3, 1)))
    _check_logits(name, ours, ref, record_property)
    print(f"  ({time.perf_counter() - t0:.1f} s)")


@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_every_torchvision_key_fits(name, torch_modules):
    """torchvision's own structure (built on the meta device: shapes, no values) imports
    whole: every key used once or dropped as optional (GoogLeNet's aux heads), every zoo
    leaf filled with its shape."""
    torch, torchvision = torch_modules
    kwargs = dict(init_weights=False) if name == "googlenet" else {}
    with torch.device("meta"):
        model_t = getattr(torchvision.models, name)(weights=None, **kwargs)
    state = {k: np.broadcast_to(np.zeros((), np.float32), tuple(v.shape))
             for k, v in model_t.state_dict().items()}
    model = zoo.create(name)
    variables = P.convert_state_dict(model, state)
    abstract, _ = model.abstract_init()
    shapes = {k: tuple(v.shape) for k, v in paths.flatten(abstract).items()}
    assert {k: v.shape for k, v in paths.flatten(variables).items()} == shapes
    used = set(P.torchvision_key_map(model).values())
    left = {k for k in state if k not in used and not k.endswith(".num_batches_tracked")}
    assert left == ({k for k in state if k.startswith(("aux1.", "aux2."))
                     and not k.endswith(".num_batches_tracked")} if name == "googlenet" else set())
    assert len(used) == len(shapes)


def test_torchvision_parity_googlenet_aux_heads(torch_modules, record_property):
    """GoogLeNet with aux heads: main and both aux logits (torchvision computes aux heads in
    train mode only, so they are run here on the tapped features, in eval mode)."""
    torch, torchvision = torch_modules
    model_t = _torchvision_model(torch, torchvision, "googlenet", aux=True)
    taps = {}
    model_t.inception4a.register_forward_hook(lambda m, i, o: taps.__setitem__("aux1", o))
    model_t.inception4d.register_forward_hook(lambda m, i, o: taps.__setitem__("aux2", o))
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model_t(x).numpy()
        ref_aux = {k: getattr(model_t, k)(v).numpy() for k, v in taps.items()}
    with tempfile.TemporaryDirectory() as tmp:
        pth, _ = _save_both(torch, model_t, tmp)
        model = zoo.create("googlenet", aux_logits=True, conv_policy=PARITY_POLICY[False])
        variables = P.load_torchvision(model, pth)
    with jax.default_matmul_precision("highest"):
        fn = jax.jit(lambda p, s, x: model.apply_with_aux(p, s, x, train=False)[:2])
        logits, aux = fn(variables["params"], variables["state"],
                         jnp.asarray(x.numpy().transpose(0, 2, 3, 1)))
    _check_logits("googlenet (aux_logits=True)", logits, ref, record_property)
    for k in ("aux1", "aux2"):
        _check_logits(f"googlenet {k}", aux[k], ref_aux[k], record_property)


def test_pth_is_read_with_weights_only(torch_modules, tmp_path):
    """A .pth holding something other than tensors is refused, never unpickled."""
    torch, _ = torch_modules
    path = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(2, 2), "note": _Unpicklable()}, path)
    with pytest.raises(ValueError, match="weights_only"):
        P.read_state_dict(path)
    assert not _Unpicklable.loaded


class _Unpicklable:
    loaded = False

    def __setstate__(self, state):
        type(self).loaded = True


# ----------------------------------------------------------------------------------------
# Registry, cache, fetch (nothing reaches the network).

def test_registry_facts():
    """Each family registers its weights with its models: the tags, files, hashes,
    accuracies and transforms of torchvision 0.29's enums, read from the registry."""
    tags = P.list_weights("*.tv*_in1k")
    assert len(tags) == 18 and zoo.list_weights("*") == sorted([*tags, "lenet5.digits"])
    assert zoo.list_weights("resnet*") == [
        "resnet101.tv2_in1k", "resnet101.tv_in1k", "resnet152.tv2_in1k", "resnet152.tv_in1k",
        "resnet18.tv_in1k", "resnet34.tv_in1k", "resnet50.tv2_in1k", "resnet50.tv_in1k"]
    assert zoo.list_models(pretrained=True) == sorted([*TORCHVISION_MODELS, "lenet5"])
    assert zoo.list_models("googlenet*", pretrained=True) == ["googlenet"]
    for name in zoo.list_models():
        assert all(w.model == name for w in zoo.registry.spec(name).weights)
    for name in TORCHVISION_MODELS:
        assert f"{name}.tv_in1k" in tags
    for tag in tags:
        spec = P.get_weights(tag)
        assert spec.url == "https://download.pytorch.org/models/" + spec.file
        assert spec.sha256_prefix and len(spec.sha256_prefix) == 8
        assert spec.num_classes == 1000 and spec.transforms.crop == 224
        assert 50 < spec.acc1 < 90 and spec.acc1 < spec.acc5
        assert spec.model in zoo.list_models()
    v1, v2 = P.get_weights("resnet50.tv_in1k"), P.get_weights("resnet50.tv2_in1k")
    assert (v1.file, v1.sha256_prefix, v1.acc1) == ("resnet50-0676ba61.pth", "0676ba61", 76.130)
    assert (v2.file, v2.sha256_prefix, v2.acc1) == ("resnet50-11ad3fa6.pth", "11ad3fa6", 80.858)
    assert (v1.transforms.resize, v2.transforms.resize) == (256, 232)
    assert P.get_weights("alexnet.tv_in1k").sha256_prefix == "7be5be79"
    goog = P.get_weights("googlenet.tv_in1k").transforms
    assert goog.transform_input and goog.mean == (0.5, 0.5, 0.5) and goog.std == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="resnet50.tv_in1k"):
        P.get_weights("resnet50.imagenet")


def test_imagenet_class_names_ship_with_the_package():
    names, wnids = P.imagenet_classes(), P.imagenet_classes(wnids=True)
    assert len(names) == len(wnids) == 1000 and len(set(wnids)) == 1000
    assert wnids == sorted(wnids)                      # torchvision's index order
    assert (wnids[0], names[0]) == ("n01440764", "tench")
    assert names[207] == "golden retriever" and names[999] == "toilet tissue"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("ZOO_CACHE", str(d))
    monkeypatch.delenv("ZOO_OFFLINE", raising=False)

    def no_network(url, timeout):  # tests never reach the network
        return "no network in tests"

    monkeypatch.setattr(zoo.weights.hub, "_reachable", no_network)
    return d


def test_fetch_offline_fails_at_once_with_instructions(cache, monkeypatch):
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(P.WeightsNotFoundError) as err:
        P.fetch("resnet50.tv_in1k")
    assert time.perf_counter() - t0 < 1.0
    msg = str(err.value)
    assert "https://download.pytorch.org/models/resnet50-0676ba61.pth" in msg
    assert str(cache / "resnet50-0676ba61.pth") in msg
    assert "path" in msg


def test_fetch_without_network_fails_with_instructions(cache):
    with pytest.raises(P.WeightsNotFoundError) as err:
        P.fetch("vgg16.tv_in1k")
    assert "vgg16-397923af.pth" in str(err.value) and str(cache) in str(err.value)


def test_fetch_and_load_from_the_cache(cache, monkeypatch):
    model, variables = _random_variables("resnet18")
    data = safetensors.numpy.save(P.to_torchvision_state_dict(model, variables))
    prefix = hashlib.sha256(data).hexdigest()[:8]
    spec = P.WeightSpec(tag="resnet18.test", model="resnet18", source="torchvision",
                        file=f"resnet18-{prefix}.safetensors", num_classes=1000,
                        transforms=P.Transforms(), url="https://example.invalid/x")
    with pytest.raises(P.WeightsNotFoundError):
        P.load(spec)
    cache.mkdir()
    (cache / spec.file).write_bytes(data)
    assert P.fetch(spec) == str(cache / spec.file)
    loaded_model, loaded = P.load(spec)
    assert loaded_model.name == "resnet18"
    _assert_trees_equal(loaded, variables)
    with pytest.raises(ValueError, match="not vgg11"):
        P.load(spec, "vgg11")


def test_fetch_rejects_a_file_with_the_wrong_hash(cache):
    cache.mkdir()
    (cache / "resnet18-f37072fd.pth").write_bytes(b"not the weights")
    with pytest.raises(ValueError, match="f37072fd") as err:
        P.fetch("resnet18.tv_in1k")
    assert "SHA-256" in str(err.value)
    assert P.fetch("resnet18.tv_in1k", check_hash=False).endswith("resnet18-f37072fd.pth")


def test_load_a_torchvision_file_by_path_needs_the_model(tmp_path):
    model, variables = _random_variables("resnet18")
    path = tmp_path / "mine.safetensors"
    safetensors.numpy.save_file(P.to_torchvision_state_dict(model, variables), str(path))
    with pytest.raises(ValueError, match="model"):
        P.load(str(path))
    loaded_model, loaded = P.load(str(path), "resnet18")
    _assert_trees_equal(loaded, variables)
    with pytest.raises(FileNotFoundError):
        P.load(str(tmp_path / "nothing.pth"), "resnet18")


# ----------------------------------------------------------------------------------------
# The zoo's own weights.

def test_shipped_lenet5_reproduces_its_recorded_accuracy():
    from zoo import data

    model, variables, info = P.load("lenet5.digits", with_info=True)
    meta = info["metadata"]
    assert model.name == "lenet5" and meta["format"] == "zoo-weights/1"
    assert os.path.getsize(P.fetch("lenet5.digits")) < 300_000
    seed = int(meta["settings"]["seed"])
    _, test = data.load("digits", image_shape=tuple(meta["input_shape"]), seed=seed)
    assert len(test) == meta["eval_size"]
    forward = jax.jit(lambda p, s, x: model.apply(p, s, x, train=False)[0])
    correct = 0
    for x, y in data.batches(test, 128, train=False, seed=0, epoch=0, mean=meta["mean"],
                             std=meta["std"], prefetch=0):
        correct += int(np.sum(np.argmax(np.asarray(forward(variables["params"], variables["state"],
                                                           x)), -1) == y))
    accuracy = correct / len(test)
    assert abs(accuracy - meta["accuracy"]) <= 1e-3, (accuracy, meta["accuracy"])
    assert accuracy > 0.9


def test_zoo_weights_file_round_trip(tmp_path):
    model, variables = P.load("lenet5.digits")
    path = tmp_path / "copy.safetensors"
    ckpt.save_weights(variables, path, {"model": "lenet5", "num_classes": 10,
                                        "input_shape": [32, 32, 1], "mean": [0.1], "std": [0.3]})
    again, loaded, info = P.load(str(path), with_info=True)
    _assert_trees_equal(loaded, variables)
    assert info["transforms"].mean == (0.1,) and info["transforms"].fit
    with pytest.raises(ValueError, match="lenet5"):
        P.load(str(path), "resnet18")


# ----------------------------------------------------------------------------------------
# Fine-tuning.

def test_finetuning_reinitialises_the_classifier_for_a_new_class_count(tmp_path):
    model_src, variables = _random_variables("resnet18")
    path = tmp_path / "resnet18-src.safetensors"
    safetensors.numpy.save_file(P.to_torchvision_state_dict(model_src, variables), str(path))
    model, template = _random_variables("resnet18", seed=5, input_shape=(1, 64, 64, 3),
                                        num_classes=10)
    messages = []
    loaded, info = P.load_for_finetuning(str(path), model=model, variables=template,
                                         log=messages.append)
    assert loaded["params"]["fc"]["kernel"].shape == (512, 10)
    assert np.array_equal(loaded["params"]["fc"]["kernel"], template["params"]["fc"]["kernel"])
    assert np.array_equal(loaded["params"]["fc"]["bias"], template["params"]["fc"]["bias"])
    src, got = _flat(variables), _flat(loaded)
    assert all(np.array_equal(got[k], src[k]) for k in got if "/fc/" not in k)
    assert sorted(info["reinitialised"]) == ["params/fc/bias", "params/fc/kernel"]
    assert "1000 classes" in info["message"] and "re-initialised" in info["message"]
    assert messages == [info["message"]]
    assert info["mean"] == tuple(zoo.images.IMAGENET_MEAN)
    # Same class count: everything loads, nothing is re-initialised.
    same, info = P.load_for_finetuning(str(path), model_src, variables=variables)
    _assert_trees_equal(same, variables)
    assert info["reinitialised"] == [] and "all" in info["message"]


def test_finetuning_refuses_other_mismatches(tmp_path):
    model_src, variables = _random_variables("resnet18")
    path = tmp_path / "resnet18-src.safetensors"
    safetensors.numpy.save_file(P.to_torchvision_state_dict(model_src, variables), str(path))
    model, template = _random_variables("resnet34", num_classes=10)
    with pytest.raises(ValueError, match="resnet18"):
        P.load_for_finetuning(str(path), model, variables=template)


def test_finetuning_from_the_shipped_lenet5():
    model, template = _random_variables("lenet5", num_classes=4)
    loaded, info = P.load_for_finetuning("lenet5.digits", model, variables=template)
    _, shipped = P.load("lenet5.digits")
    assert np.array_equal(loaded["params"]["conv1"]["kernel"], shipped["params"]["conv1"]["kernel"])
    assert loaded["params"]["fc3"]["kernel"].shape == (84, 4)
    meta = info  # mean/std of the digits training split, from the file
    assert len(meta["mean"]) == 1 and meta["class_names"][:2] == ["0", "1"]


def test_train_with_pretrained_freeze_and_new_head(tmp_path):
    """scripts/train.py --pretrained lenet5.digits --num-classes 12 --freeze 'conv*':
    the frozen params stay bit-identical, the new head is trained."""
    from zoo import train
    summary = train.run(dict(model="lenet5", dataset="digits", pretrained="lenet5.digits",
                             num_classes=12, freeze=("conv*",), epochs=1, progress=False,
                             output_dir=str(tmp_path / "run")), verbose=False)
    trained, _ = ckpt.load_weights(summary["checkpoint"])
    _, shipped = P.load("lenet5.digits")
    for layer in ("conv1", "conv2"):
        for leaf in ("kernel", "bias"):
            assert np.array_equal(trained["params"][layer][leaf], shipped["params"][layer][leaf])
    assert trained["params"]["fc3"]["kernel"].shape == (84, 12)
    assert not np.array_equal(trained["params"]["fc2"]["kernel"],
                              shipped["params"]["fc2"]["kernel"])


# ----------------------------------------------------------------------------------------
# scripts/predict.py

def _predict(*args):
    env = dict(os.environ, ZOO_OFFLINE="1")
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "predict.py"), *args],
                          capture_output=True, text=True, env=env, timeout=300)


def _top_lines(stdout):
    return [line for line in stdout.splitlines() if line.strip()[:2] in {f"{i}." for i in range(1, 10)}]


def test_predict_with_the_shipped_lenet5(tmp_path):
    from PIL import Image

    from zoo import data

    _, test = data.load("digits", image_shape=(32, 32, 1), seed=0)
    image = np.clip(np.rint(test.images[0, :, :, 0] * 255), 0, 255).astype(np.uint8)
    png = tmp_path / "digit.png"
    Image.fromarray(image, "L").save(png)
    out = _predict("--weights", "lenet5.digits", str(png))
    assert out.returncode == 0, out.stderr
    lines = _top_lines(out.stdout)
    assert len(lines) == 5
    assert lines[0].split()[1] == test.class_names[test.labels[0]]   # the right digit first
    assert all("%" in line for line in lines)


def test_predict_with_a_torchvision_file(tmp_path):
    from PIL import Image

    model, variables = _random_variables("resnet18")
    weights = tmp_path / "resnet18-random.safetensors"
    safetensors.numpy.save_file(P.to_torchvision_state_dict(model, variables), str(weights))
    rng = np.random.default_rng(0)
    img = tmp_path / "photo.jpg"
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(img)
    out = _predict("--model", "resnet18", "--weights", str(weights), str(img))
    assert out.returncode == 0, out.stderr
    lines = _top_lines(out.stdout)
    assert len(lines) == 5
    names = set(P.imagenet_classes())
    assert all(any(n in line for n in names) for line in lines)
    bad = _predict("--weights", "resnet18.tv_in1k", str(img))     # not cached, offline
    assert bad.returncode == 2 and "resnet18-f37072fd.pth" in bad.stderr


def test_transforms_resize_shorter_side_then_centre_crop():
    from PIL import Image

    t = P.Transforms(resize=256, crop=224)
    img = Image.fromarray(np.full((300, 600, 3), 255, np.uint8))
    x = t(img)
    assert x.shape == (224, 224, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], (1 - np.array(zoo.images.IMAGENET_MEAN)) / np.array(zoo.images.IMAGENET_STD),
                               rtol=1e-6)
