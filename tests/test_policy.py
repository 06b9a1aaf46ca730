"""The conv policy is a value on the model: its choices by shape, every choice equal to XLA's
conv, and no way for a jitted function to reuse a program traced under another policy."""
import ast
import dataclasses
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from conftest import normal
from zoo import bench, kernels, nn
from zoo.kernels import ConvGeometry, ConvPolicy

ROOT = pathlib.Path(__file__).resolve().parents[1]


def choose(policy, x, w, out, stride=(1, 1), dtype=jnp.float32):
    return policy.choose(ConvGeometry(x, w, stride, (1, 1), 1, out, dtype))


def test_choices_by_shape():
    p = ConvPolicy()
    assert choose(p, (8, 4, 4, 256), (3, 3, 256, 256), (4, 4)) == "im2col"        # small map
    assert choose(p, (8, 56, 56, 64), (1, 1, 64, 256), (56, 56)) == "im2col"      # pointwise
    assert choose(p, (1, 12, 12, 512), (7, 7, 512, 4096), (6, 6)) == "im2col"     # a dense as conv
    assert choose(p, (8, 56, 56, 64), (3, 3, 64, 64), (56, 56)) == "xla+stored"
    assert choose(p, (8, 32, 32, 1), (5, 5, 1, 6), (28, 28)) == "taps"            # one channel
    assert choose(p.replace(store_input=False), (8, 56, 56, 64), (3, 3, 64, 64), (56, 56)) == "xla"
    mm = p.replace(weight_grad="matmul")
    assert choose(mm, (8, 56, 56, 64), (3, 3, 64, 64), (56, 56)) == "xla+mmgrad"
    assert choose(mm, (8, 14, 14, 6), (5, 5, 6, 16), (10, 10)) == "xla+stored"    # short patch
    assert choose(mm, (8, 8, 8, 64), (3, 3, 64, 64), (8, 8)) == "xla+stored"      # small map
    assert choose(p.for_loop_body(), (8, 56, 56, 64), (3, 3, 64, 64), (56, 56)) == "xla+mmgrad"
    for forced in ("xla", "im2col"):
        assert choose(p.replace(impl=forced), (8, 28, 28, 128), (3, 3, 128, 128), (28, 28)) == forced
    assert choose(ConvPolicy.xla(), (8, 4, 4, 256), (3, 3, 256, 256), (4, 4)) == "xla"


def test_strided_convs_take_the_phase_input_gradient_from_its_floor():
    p = ConvPolicy()
    assert p.phases_min_map == 100
    strided = ((8, 56, 56, 64), (3, 3, 64, 128), (28, 28), (2, 2))   # ResNet's layer2/0/conv1
    assert choose(p, *strided) == "xla+phases"
    assert choose(p, (8, 20, 20, 64), (3, 3, 64, 128), (10, 10), (2, 2)) == "xla+phases"  # 100 px
    assert choose(p, (8, 18, 18, 64), (3, 3, 64, 128), (9, 9), (2, 2)) == "xla+stored"    # 81 px
    assert choose(p, (8, 56, 56, 64), (1, 1, 64, 128), (28, 28), (2, 2)) == "im2col"  # pointwise first
    assert choose(p.replace(phases_min_map=0), *strided) == "xla+stored"
    assert choose(p, (8, 56, 56, 64), (3, 3, 64, 64), (56, 56)) == "xla+stored"      # stride 1
    with pytest.raises(ValueError, match="phases_min_map must be >= 0"):
        ConvPolicy(phases_min_map=-1)


def test_winograd_where_it_pays():
    p = ConvPolicy()
    assert choose(p, (8, 28, 28, 128), (3, 3, 128, 128), (28, 28)) == "winograd"
    assert choose(p, (8, 14, 14, 32), (3, 3, 32, 64), (14, 14)) == "winograd"
    assert choose(p, (8, 56, 56, 256), (3, 3, 256, 256), (56, 56)) == "winograd"
    assert choose(p, (1, 96, 96, 256), (3, 3, 256, 256), (96, 96)) == "winograd"   # fully-conv VGG at 384
    assert choose(p, (1, 112, 112, 256), (3, 3, 256, 256), (112, 112)) == "xla+stored"
    assert choose(p, (8, 56, 56, 64), (3, 3, 64, 64), (56, 56)) == "xla+stored"     # big map, few channels
    assert choose(p, (8, 28, 28, 16), (3, 3, 16, 32), (28, 28)) == "xla+stored"     # few channels
    assert choose(p, (8, 7, 7, 512), (3, 3, 512, 512), (7, 7)) == "xla+stored"      # 7x7 map
    assert choose(p, (1, 14, 14, 512), (3, 3, 512, 512), (14, 14)) == "xla+stored"  # 49 tiles
    assert choose(p, (2, 14, 14, 256), (3, 3, 256, 256), (14, 14)) == "xla+stored"  # 98 tiles
    assert choose(p, (1, 24, 24, 512), (3, 3, 512, 512), (24, 24)) == "winograd"    # 144 tiles
    assert choose(p, (8, 56, 56, 128), (3, 3, 128, 128), (28, 28), (2, 2)) == "xla+phases"
    # bfloat16 accumulating in float32 too; not left to XLA's accumulation, nor float16 (without
    # the compiled kernels: on a CPU with AMX tiles they take bfloat16 convs, test_amx.py)
    q = p.replace(native=False)
    assert choose(q, (8, 28, 28, 128), (3, 3, 128, 128), (28, 28), dtype=jnp.bfloat16) == "winograd"
    assert choose(q.replace(low_precision="native"), (8, 28, 28, 128), (3, 3, 128, 128), (28, 28),
                  dtype=jnp.bfloat16) == "xla+stored"
    assert choose(p, (8, 28, 28, 128), (3, 3, 128, 128), (28, 28), dtype=jnp.float16) == "xla+stored"
    assert choose(p, (8, 28, 28, 128), (5, 5, 128, 128), (28, 28)) == "xla+stored"
    assert choose(p.replace(winograd=()), (8, 28, 28, 128), (3, 3, 128, 128), (28, 28)) == "xla+stored"
    # the stored input follows its own field
    assert choose(p.replace(store_input=False), (8, 28, 28, 128), (3, 3, 128, 128), (28, 28)) == "winograd"


def test_every_choice_equals_xla_values_and_gradients():
    """Each implementation the policy picks, on a shape where it picks it, gives XLA's conv:
    values and both gradients."""
    mm = ConvPolicy(weight_grad="matmul", chunk_bytes=1)  # chunked (scanned) weight grad
    phases = "forced"   # the layer names it
    cases = [((4, 12, 12, 32), (3, 3, 32, 32), 1, 1, "xla+mmgrad", mm),
             ((2, 4, 4, 8), (3, 3, 8, 8), 1, 1, "im2col", mm),            # small map
             ((2, 9, 9, 8), (1, 1, 8, 16), 2, 0, "im2col", mm),           # pointwise, strided
             ((2, 12, 12, 1), (5, 5, 1, 6), 1, 0, "taps", mm),            # single channel
             ((4, 11, 11, 32), (3, 3, 32, 40), 1, 1, "winograd", None),   # odd map: cropped tiles
             ((6, 12, 12, 32), (3, 3, 32, 32), 1, 0, "winograd", None),   # unpadded
             ((2, 13, 13, 8), (3, 3, 8, 16), 2, 1, "xla+stored", None),   # the rest
             ((2, 21, 21, 8), (3, 3, 8, 16), 2, 1, "xla+phases", None),   # strided, 11x11 out
             ((2, 13, 13, 8), (3, 3, 8, 16), 2, 1, "xla+phases", phases),  # odd map, stride 2
             # uneven strides; along W the third phase is reached by no tap (kernel 2 < 3)
             ((2, 14, 12, 4), (3, 2, 4, 8), (2, 3), 1, "xla+phases", phases),
             ((2, 14, 14, 6), (5, 5, 6, 16), 1, 0, "xla+colgrad", phases),  # LeNet-5's conv2
             ((2, 13, 13, 8), (3, 3, 8, 16), 2, 1, "xla+colgrad", phases)]  # strided, padded
    for shape, wshape, stride, pad, impl, policy in cases:
        x, w = normal(0, shape), normal(1, wshape)
        conv = functools.partial(nn.Conv, wshape[3], wshape[:2], stride=stride, padding=pad,
                                 bias=False, rounding="floor")
        net, plain = conv(impl=impl if policy == "forced" else None), conv()
        policy = None if policy == "forced" else policy
        run = lambda policy, net=net: (lambda x, w: net.apply({"kernel": w}, {}, x,
                                                              policy=policy)[0])
        probe = normal(2, run(ConvPolicy.xla())(x, w).shape)
        loss = lambda policy, net=net: jax.value_and_grad(
            lambda x, w: jnp.sum(run(policy, net)(x, w) * probe), argnums=(0, 1))
        with nn.recording() as rec:
            ya, ga = jax.jit(loss(policy))(x, w)
        assert [c[1] for c in rec.convs] == [impl]
        with nn.recording() as rec:
            yx, gx = loss(ConvPolicy.xla(), plain)(x, w)
        assert [c[1] for c in rec.convs] == ["xla"]
        np.testing.assert_allclose(ya, yx, rtol=1e-4)
        np.testing.assert_allclose(ga[0], gx[0], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(ga[1], gx[1], rtol=1e-4, atol=1e-4)


def test_model_conv_choices_follow_its_policy():
    lenet = zoo.create("lenet5")
    assert [r[1] for r in bench.conv_choices(lenet, (1, 32, 32, 1))] == ["taps", "xla+stored"]
    plain = zoo.create("lenet5", conv_policy=ConvPolicy(single_channel=False, store_input=False))
    assert [r[1] for r in bench.conv_choices(plain, (1, 32, 32, 1))] == ["xla", "xla"]
    assert plain.policy == ConvPolicy(single_channel=False, store_input=False)


def test_one_jitted_function_runs_each_models_own_program():
    """The jit hazard is gone: a function jitted once and called with two models that differ
    only in their policy traces twice, each under its own policy, and gives each one's
    program (two conv choices, two different compiled programs, the same values)."""
    base = zoo.create("lenet5")
    plain = base.with_policy(ConvPolicy.xla())
    assert plain.network is base.network and plain != base and hash(plain) != hash(base)
    variables = base.init(jax.random.key(0), (2, 32, 32, 1))
    x = normal(3, (2, 32, 32, 1))

    @jax.jit
    def logits(model, params, state, x):      # the model is a (static) pytree argument
        return model.apply(params, state, x)[0]

    with nn.recording() as rec:
        a = logits(base, variables["params"], variables["state"], x)
        b = logits(plain, variables["params"], variables["state"], x)
        again = logits(base.with_policy(ConvPolicy()), variables["params"], variables["state"], x)
    assert [impl for path, impl, *_ in rec.convs] == ["taps", "xla+stored", "xla", "xla"]
    assert logits._cache_size() == 2  # the equal model reused the first program
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(a, again)
    hlo = {name: jax.jit(logits, static_argnums=0).lower(m, variables["params"],
                                                         variables["state"], x).as_text()
           for name, m in (("base", base), ("plain", plain))}
    assert hlo["base"] != hlo["plain"]
    # conv1 as taps, conv2 XLA's or (where zoo's kernels built) zoo's compiled forward
    assert hlo["plain"].count("convolution(") == 2
    assert hlo["base"].count("convolution(") + hlo["base"].count("@zoo_conv(") == 1


def test_policy_is_a_frozen_validated_value():
    p = ConvPolicy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.small_map = 0
    assert ConvPolicy(winograd=[[784, 32]]) == ConvPolicy(winograd=((784, 32),))  # hashable tiers
    assert len({ConvPolicy(), ConvPolicy(), ConvPolicy.xla()}) == 2
    with pytest.raises(ValueError, match="unknown ConvPolicy fields \\['smal_map'\\]"):
        p.replace(smal_map=0)
    with pytest.raises(ValueError, match="weight_grad must be one of"):
        ConvPolicy(weight_grad="fast")
    with pytest.raises(ValueError, match="scan_min_run must be >= 0"):
        ConvPolicy(scan_min_run=-1)
    with pytest.raises(TypeError, match="zoo.ConvPolicy"):
        zoo.create("lenet5").with_policy({"impl": "xla"})
    assert zoo.create("lenet5", conv_policy=ConvPolicy.xla()).policy.impl == "xla"


def _module_names(tree) -> set:
    """Names a file binds to modules: ``import a.b as m``, ``from zoo import nn``."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.asname or a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("zoo")):
            names |= {a.asname or a.name for a in node.names}
    return names


def test_nothing_assigns_module_level_config():
    """No file of the package or the tests assigns to an attribute of an imported module,
    patches a module constant, declares ``global`` state, or makes a context variable beyond
    the naming scope and the summary recorder. (Tests may still replace a function to inject
    a fault, as ``monkeypatch`` does for the length of one test.)"""
    files = sorted((ROOT / "zoo").rglob("*.py")) + sorted((ROOT / "tests").glob("*.py"))
    offences = []
    contextvars = []
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        modules = _module_names(tree)
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                while isinstance(t, ast.Subscript):
                    t = t.value
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) \
                        and t.value.id in modules:
                    offences.append(f"{path.name}:{node.lineno} assigns {t.value.id}.{t.attr}")
            if isinstance(node, ast.Global):
                offences.append(f"{path.name}:{node.lineno} global {', '.join(node.names)}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                f = node.func
                if f.attr == "setattr" and len(node.args) > 1 and isinstance(node.args[0], ast.Name) \
                        and node.args[0].id in modules and isinstance(node.args[1], ast.Constant) \
                        and node.args[1].value.isupper():  # a module constant: configuration
                    offences.append(f"{path.name}:{node.lineno} patches {node.args[0].id}."
                                    f"{node.args[1].value}")
                if f.attr == "ContextVar":
                    contextvars.append(f"{path.relative_to(ROOT)}:{node.args[0].value}")
    assert offences == []
    # trace-time context, never configuration: the capture box, the recorder, the scope
    assert sorted(contextvars) == ["zoo/nn/layer.py:zoo_capture", "zoo/nn/layer.py:zoo_recorder",
                                   "zoo/nn/layer.py:zoo_scope"]
