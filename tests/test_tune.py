"""zoo.tune: a conv policy measured on this machine. The cache key and file round trip, the
measured table consulted before the rules, choices the kernels run, and deterministic tuning
given injected timings; one real (tiny) tuning through the command line."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from conftest import normal
from zoo import bench, machine
from zoo.kernels import ConvGeometry, ConvPolicy
from zoo.kernels.policy import candidates
from zoo.tuning import cache, convs_of, named_policy, stale, tune
from zoo.tuning.measure import INPUT_GRAD_FORMS, native_here

pytestmark = pytest.mark.xdist_group("tune")


@pytest.fixture
def tune_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_TUNE_CACHE", str(tmp_path / "tune"))
    return tmp_path / "tune"


def geometry(x=(8, 56, 56, 64), w=(3, 3, 64, 64), out=(56, 56), stride=(1, 1)):
    return ConvGeometry(x, w, stride, (1, 1), 1, out, jnp.float32)


def test_geometry_key_names_every_field():
    g = geometry()
    assert g.key() == "float32 infer x8x56x56x64 k3x3x64x64 s1x1 d1x1 g1 o56x56"
    assert g.key(train=True) == "float32 train x8x56x56x64 k3x3x64x64 s1x1 d1x1 g1 o56x56"
    keys = {g.key(), g._replace(x_shape=(4, 56, 56, 64)).key(), g._replace(stride=(2, 2)).key(),
            g._replace(dtype=jnp.bfloat16).key(), g._replace(groups=2).key(),
            g._replace(out_hw=(28, 28)).key(), g._replace(dilation=(2, 2)).key()}
    assert len(keys) == 7


def test_measured_table_comes_before_the_rules_in_its_mode_only():
    g = geometry()
    assert ConvPolicy().choose(g) == "xla+stored"
    p = ConvPolicy(tuned=((g.key(train=True), "winograd"),))
    assert p.choose(g, train=True) == "winograd"
    assert p.choose(g, train=False) == "xla+stored"       # the inference entry is absent
    assert p.for_loop_body().choose(g, train=True) == "xla+mmgrad"   # scanned runs: the rules
    assert p.replace(impl="xla").choose(g, train=True) == "xla"      # a forced impl wins
    # an entry no kernel can run for the geometry falls back to the rules
    bad = ConvPolicy(tuned=((g.key(), "taps"),))
    assert "taps" not in candidates(g) and bad.choose(g) == "xla+stored"
    with pytest.raises(ValueError, match="ConvPolicy.tuned.*'fast'"):
        ConvPolicy(tuned=((g.key(), "fast"),))
    # a value: the table is sorted and hashable, equal tables are equal policies
    a = ConvPolicy(tuned=[("b", "xla"), ("a", "im2col")])
    assert a.tuned == (("a", "im2col"), ("b", "xla")) and a == ConvPolicy(tuned=dict(a.tuned))
    assert hash(a) == hash(ConvPolicy(tuned=(("b", "xla"), ("a", "im2col"))))


def test_candidates_are_what_the_kernels_run():
    assert candidates(geometry()) == ("xla", "im2col", "winograd")
    assert candidates(geometry(), train=True) == ("xla", "im2col", "xla+stored", "xla+mmgrad",
                                                  "winograd", "xla+colgrad")
    strided = geometry((8, 56, 56, 64), (3, 3, 64, 128), (28, 28), (2, 2))
    assert candidates(strided, train=True) == ("xla", "im2col", "xla+stored", "xla+mmgrad",
                                               "xla+phases", "xla+colgrad")
    lenet_c1 = geometry((8, 32, 32, 1), (5, 5, 1, 6), (28, 28))
    assert "taps" in candidates(lenet_c1)
    assert "winograd" in candidates(geometry()._replace(dtype=jnp.bfloat16))
    assert "winograd" not in candidates(geometry()._replace(dtype=jnp.float16))
    grouped = geometry((8, 56, 56, 64), (3, 3, 32, 64))._replace(groups=2)
    assert candidates(grouped, train=True) == ("xla", "im2col", "xla+stored")
    huge = geometry((256, 224, 224, 64), (3, 3, 64, 64), (224, 224))   # 7.4 GB of patches
    assert "im2col" not in candidates(huge)


def test_geometry_key_parses_back():
    for g, train in [(geometry(), False), (geometry(stride=(2, 2), out=(28, 28)), True),
                     (geometry()._replace(dtype=jnp.bfloat16, groups=2), True)]:
        assert ConvGeometry.from_key(g.key(train)) == (g, train)
    for bad in ["k1", "float32 fast x8x56x56x64 k3x3x64x64 s1x1 d1x1 g1 o56x56",
                "float32 infer x8x56 k3x3x64x64 s1x1 d1x1 gone o56x56"]:
        with pytest.raises(ValueError, match="not a conv geometry key"):
            ConvGeometry.from_key(bad)
    assert stale("k1", dict(seconds={}))


def test_cache_round_trip_and_machine_key(tune_cache):
    fp = machine.fingerprint()
    assert set(fp) == {"kind", "vendor", "isa", "cores", "jax", "jaxlib", "backend"}
    assert fp["jax"] == jax.__version__ and fp["cores"] >= 1
    assert cache.load() == {}
    entry = dict(impl="im2col", default="xla", seconds={"xla": 2.0, "im2col": 1.0})
    path = cache.save({"k1": entry})
    assert path == cache.path() and os.path.dirname(path) == str(tune_cache)
    assert cache.load() == {"k1": entry}
    cache.save({"k2": dict(entry, impl="xla")})            # merged with what is there
    assert set(cache.load()) == {"k1", "k2"}
    assert [f for f in os.listdir(tune_cache) if f.endswith(".tmp")] == []
    other = dict(fp, cores=fp["cores"] + 1)                   # another machine: another file
    assert cache.path(other) != cache.path() and cache.load(other) == {}
    data = json.loads(open(path).read())
    assert data["machine"] == fp and data["format"] == cache.FORMAT


def test_damaged_or_foreign_cache_is_named_and_ignored(tune_cache):
    path = cache.save({"k": dict(impl="xla", default="xla", seconds={})})
    with open(path, "w") as f:
        f.write("{not json")
    with pytest.warns(UserWarning, match="cannot be read.*rewrites it"):
        assert cache.load() == {}
    cache.save({"k": dict(impl="xla", default="xla", seconds={})})   # replaced
    assert set(cache.load()) == {"k"}
    data = json.loads(open(path).read())
    data["entries"]["bad"] = dict(impl="fast")
    data["machine"] = dict(data["machine"])
    with open(path, "w") as f:
        json.dump(data, f)
    with pytest.warns(UserWarning, match="'bad' names no implementation"):
        assert set(cache.load()) == {"k"}
    data["machine"]["cores"] = -1
    with open(path, "w") as f:
        json.dump(data, f)
    with pytest.warns(UserWarning, match="another machine"):
        assert cache.load() == {}


def fake_timings(favour: dict):
    """Seconds per (call, impl): 1.0, but ``favour[impl]`` for the favoured ones."""
    return lambda call, impl: favour.get(impl, 1.0)


def test_tuning_is_deterministic_given_timings(tune_cache):
    model = zoo.create("resnet18", num_classes=10)
    shape = (2, 32, 32, 3)
    calls = convs_of(model, shape, train=True)
    assert len(calls) == len({c.key for c in calls}) == 11     # distinct geometries
    assert sum(c.uses for c in calls) == 20                     # ResNet-18's 20 convs
    assert max(c.uses for c in calls) == 4 and calls[0].uses == 1   # layer1's 3x3s; the stem
    assert [c.needs_dx for c in calls][0] is False and all(c.needs_dx for c in calls[1:])
    timings = fake_timings({"im2col": 0.5, "winograd": 0.4})
    reports = [{}, {}]
    policies = [tune(model, shape, train=True, timings=timings, use_cache=False, log=lambda m: 0,
                     progress=False, report=r) for r in reports]
    def verdicts(report):   # everything but the time of measurement
        return {k: {f: v for f, v in e.items() if f != "measured"}
                for k, e in report["entries"].items()}
    assert policies[0] == policies[1] and verdicts(reports[0]) == verdicts(reports[1])
    assert all(e["measured"] for e in reports[0]["entries"].values())
    table = dict(policies[0].tuned)
    assert set(table) == {c.key for c in calls}
    for c in calls:
        want = "winograd" if "winograd" in c.candidates() else "im2col"
        assert table[c.key] == want and table[c.key] in c.candidates()
    assert cache.load() == {}                                   # use_cache=False: nothing kept
    # within the margin the default rules' choice stays
    near = tune(model, shape, train=True, timings=fake_timings({"im2col": 0.98}), margin=0.03,
                use_cache=False, log=lambda m: 0, progress=False)
    assert all(v == c.default_impl() for c in calls for k, v in near.tuned if k == c.key)


def test_whole_model_check_tries_the_next_fastest_when_the_fastest_loses(tune_cache,
                                                                          monkeypatch):
    """Fake programs and clock: conv2 alone ranks im2col, xla+colgrad, then the rules'
    choice; in the whole step im2col doubles the time and xla+colgrad saves 10%."""
    import zoo.tuning as tuning
    model = zoo.create("lenet5")
    shape = (4, 32, 32, 1)
    conv2 = [c for c in convs_of(model, shape, train=True) if c.where == "conv2"][0]
    alone = {"im2col": 1.0, "xla+colgrad": 2.0, "taps": 2.9, conv2.default_impl(): 3.0}
    in_model = {"im2col": 2.0, "xla+colgrad": 0.9}
    conv1 = {True: 1.0, False: 2.0}         # conv1: the rules' taps, the fastest alone

    def conv_program(call, impl):           # (program, arguments): a token for the program
        return ("conv", (call.key, impl)), ()

    def model_program(built, input_shape, *, train, dtype):
        return ("model", dict(built.policy.tuned).get(conv2.key)), ()

    def interleaved(programs, rounds, min_rep_s=0.05):
        def seconds(token):
            kind, what = token
            if kind == "conv":
                key, impl = what
                return alone.get(impl, 5.0) if key == conv2.key else conv1[impl == "taps"]
            return 10.0 * in_model.get(what, 1.0)
        return {name: [seconds(fn)] * rounds for name, (fn, _) in programs.items()}

    monkeypatch.setattr(tuning, "conv_program", conv_program)
    monkeypatch.setattr(tuning, "model_program", model_program)
    monkeypatch.setattr(tuning, "interleaved", interleaved)
    report = {}
    policy = tune(model, shape, train=True, use_cache=False, log=lambda m: 0, progress=False,
                  report=report)
    entry = report["entries"][conv2.key]
    assert [t["impl"] for t in entry["in_model"]] == ["im2col", "xla+colgrad"]
    assert [t["kept"] for t in entry["in_model"]] == [False, True]
    assert entry["in_model"][0]["ratio"] == pytest.approx(2.0)
    assert entry["impl"] == "xla+colgrad" and entry["fastest_alone"] == "im2col"
    assert dict(policy.tuned)[conv2.key] == "xla+colgrad"
    assert report["verify"]["ratio"] == pytest.approx(0.9)
    # with one try, the loser alone is tried and the rules' choice stays
    policy = tune(model, shape, train=True, tries=1, use_cache=False, log=lambda m: 0,
                  progress=False)
    assert dict(policy.tuned)[conv2.key] == conv2.default_impl()
    with pytest.raises(ValueError, match="tries=0"):
        tune(model, shape, train=True, tries=0, use_cache=False)
    # a saving under the margin of the model's conv time (conv1 now takes 100 s alone,
    # whatever runs it) is not tried in the whole model at all
    monkeypatch.setattr(tuning, "model_program", lambda *a, **k: pytest.fail("compiled"))
    conv1.update({True: 100.0, False: 100.0})
    report = {}
    policy = tune(model, shape, train=True, use_cache=False, log=lambda m: 0, progress=False,
                  report=report)
    entry = report["entries"][conv2.key]
    assert dict(policy.tuned)[conv2.key] == conv2.default_impl() == entry["impl"]
    assert entry["fastest_alone"] == "im2col" and entry["in_model"] == []


def test_tuned_choices_run_and_equal_the_default_model(tune_cache):
    model = zoo.create("resnet18", num_classes=10)
    shape = (2, 32, 32, 3)
    lines = []
    policy = tune(model, shape, timings=fake_timings({"im2col": 0.1}), log=lines.append,
                  progress=False)
    assert "11 conv geometries, 0 cached, 11 to measure" in lines[0]
    assert set(dict(policy.tuned).values()) == {"im2col"}
    assert len(cache.load()) == 11                               # saved for this machine
    tuned = model.with_policy(policy)
    rows = bench.conv_choices(tuned, shape)
    assert {impl for _, impl, _, _ in rows} == {"im2col"}
    variables = model.init(jax.random.key(0), shape)
    x = normal(0, shape)
    want = jax.jit(model.apply)(variables["params"], variables["state"], x)[0]
    got = jax.jit(tuned.apply)(variables["params"], variables["state"], x)[0]
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
    # a second tuning finds everything cached; the trainer's named policy reads the cache
    again = []
    assert tune(model, shape, timings=fake_timings({}), log=again.append, progress=False) == policy
    assert "11 cached, 0 to measure" in again[0]
    p, line = named_policy("tuned", model, shape)
    assert p == policy and line.startswith("conv policy: tuned (11 of 11 conv geometries")
    assert named_policy("tuned", model, shape, train=True)[1].startswith(
        "conv policy: tuned, but none of the 11")
    assert named_policy("default", model, shape)[0] == ConvPolicy()
    assert named_policy("xla", model, shape)[0] == ConvPolicy.xla()
    with pytest.raises(ValueError, match="--policy 'fast'"):
        named_policy("fast", model, shape)


def test_tune_refuses_bad_arguments():
    model = zoo.create("lenet5")
    with pytest.raises(ValueError, match=r"\(batch, height, width, channels\)"):
        tune(model, (32, 32, 1))
    with pytest.raises(ValueError, match="margin"):
        tune(model, (2, 32, 32, 1), margin=1.5)


def test_zoo_tune_measures_caches_and_the_trainer_uses_it(tune_cache, capsys, tmp_path):
    from zoo.cli import main
    assert main(["tune", "--show"]) == 0
    assert "0 conv geometries measured" in capsys.readouterr().out
    assert main(["tune", "lenet5", "--train", "--batch-size", "8", "--rounds", "1"]) == 0
    out = capsys.readouterr()
    assert "tune lenet5 train step, input 8x32x32x1 float32: 2 conv geometries" in out.out
    entries = cache.load()
    assert len(entries) == 2
    for key, e in entries.items():
        assert key.startswith("float32 train x8x") and e["rounds"] == 1
        assert e["impl"] in e["seconds"] and all(s > 0 for s in e["seconds"].values())
    conv1 = entries["float32 train x8x32x32x1 k5x5x1x6 s1x1 d1x1 g1 o28x28"]
    assert set(conv1["seconds"]) == {"xla", "im2col", "xla+stored", "xla+mmgrad", "taps"}
    assert main(["tune", "--show"]) == 0
    assert "2 conv geometries measured on this machine" in capsys.readouterr().out
    assert main(["train", "--epochs", "1", "--batch-size", "8", "--output-dir",
                 str(tmp_path / "run"), "--no-progress"]) == 0
    assert "conv policy: tuned (2 of 2 conv geometries of the train step" in \
        capsys.readouterr().out
    assert main(["tune", "lenet5", "--show"]) == 2
    assert "give no MODEL" in capsys.readouterr().err
    assert main(["tune", "--targets", "lenet5:infer:32:2", "--train"]) == 2
    assert "--targets name their own model, mode, size and batch: give --train or --targets" \
        in capsys.readouterr().err
    assert main(["tune", "--targets", "lenet5:eval:32:2"]) == 2
    assert "bad mode in 'lenet5:eval:32:2'" in capsys.readouterr().err
    assert len(cache.load()) == 2                      # nothing measured by a refused command


def test_tune_targets_measures_what_the_benchmark_times(tune_cache):
    """Each benchmark target in its own mode, shape, class count and dtype, one pass; what
    is cached is kept; ``--tune`` in the benchmark is refused where nothing would use it."""
    targets = ["lenet5:infer:32:2", "resnet18:train:32:2:classes=10"]
    first = bench.tune_targets(targets, timings=fake_timings({"im2col": 0.1}), progress=False,
                               log=lambda m: 0)
    lenet = convs_of(zoo.create("lenet5"), (2, 32, 32, 1))
    resnet = convs_of(zoo.create("resnet18", num_classes=10), (2, 32, 32, 3), train=True)
    assert first == {"lenet5 infer 32px b2 float32": (2, 2),
                     "resnet18 train 32px b2 float32 10cls sgd": (11, 11)}
    assert set(cache.load()) == {c.key for c in lenet + resnet}
    report = {}
    again = bench.tune_targets(targets[:1], dtype="bfloat16", timings=fake_timings({}),
                               progress=False, log=lambda m: 0, report=report)
    assert again == {"lenet5 infer 32px b2 bfloat16": (2, 2)}
    assert all(k.startswith("bfloat16 infer") for k in report["entries"])
    assert len(cache.load()) == 15
    with pytest.raises(ValueError, match="--tune measures for --policy tuned, and this run "
                                         "times --policy default only"):
        bench.Options(tune=True, policy=["default"]).validate()
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        bench.tune_targets(["vgg:infer:224:8"])


def test_an_entry_measured_without_a_current_candidate_is_measured_again(tune_cache):
    """A cache written before an implementation could run a geometry (bfloat16 Winograd,
    say) is not trusted for it: the tuned policy leaves it to the rules, and the next tuning
    measures that geometry again, not the rest."""
    quiet = dict(log=lambda m: 0, progress=False)
    lenet = zoo.create("lenet5")
    calls = convs_of(lenet, (2, 32, 32, 1))
    tune(lenet, (2, 32, 32, 1), timings=fake_timings({"im2col": 0.1}), **quiet)
    file = cache.path()
    data = json.loads(open(file).read())
    old = data["entries"][calls[1].key]
    assert "im2col" in calls[1].candidates() and old["impl"] == "im2col"
    del old["seconds"]["im2col"]
    old["impl"] = old["default"]
    with open(file, "w") as f:
        json.dump(data, f)
    assert stale(calls[1].key, old) and not stale(calls[0].key, data["entries"][calls[0].key])
    until_tuned = dict(zoo.tuned_policy().tuned)          # the rules decide the stale one
    assert calls[1].key not in until_tuned and calls[0].key in until_tuned
    report = {}
    tuned = tune(lenet, (2, 32, 32, 1), timings=fake_timings({"im2col": 0.1}), report=report,
                 **quiet)
    assert report["cached"] == 1 and list(report["entries"]) == [calls[1].key]
    assert set(cache.load()[calls[1].key]["seconds"]) == set(calls[1].candidates())
    assert dict(tuned.tuned)[calls[1].key] == "im2col"


def test_a_verdict_without_the_input_gradient_does_not_hold_for_a_conv_that_has_one(tune_cache):
    """The image's conv is timed without an input gradient and without the two forms that
    only change it; the same geometry where the input gradient runs is measured again."""
    quiet = dict(log=lambda m: 0, progress=False)
    resnet = zoo.create("resnet18", num_classes=10)
    calls = convs_of(resnet, (2, 32, 32, 3), train=True)
    tune(resnet, (2, 32, 32, 3), train=True, timings=fake_timings({}), **quiet)
    entries = cache.load()
    stem, strided = calls[0], next(c for c in calls[1:] if "xla+phases" in c.candidates())
    stem_entry = entries[stem.key]
    assert stem_entry["needs_dx"] is False and not set(INPUT_GRAD_FORMS) & set(stem_entry["seconds"])
    assert not stale(stem.key, stem_entry) and stale(stem.key, stem_entry, needs_dx=True)
    entry = entries[strided.key]
    assert entry["needs_dx"] is True and set(INPUT_GRAD_FORMS) <= set(entry["seconds"])
    assert not stale(strided.key, entry, needs_dx=True)
    without_phases = dict(entry, seconds={k: v for k, v in entry["seconds"].items()
                                          if k != "xla+phases"})
    assert stale(strided.key, without_phases)       # it timed the input gradient
    before_the_field = {k: v for k, v in without_phases.items() if k != "needs_dx"}
    assert stale(strided.key, before_the_field)     # it holds xla+colgrad: timed with it
    image_only = dict(entry, needs_dx=False, seconds={k: v for k, v in entry["seconds"].items()
                                                      if k not in INPUT_GRAD_FORMS})
    assert not stale(strided.key, image_only)       # the tuned policy still uses it ...
    file = cache.path()
    data = json.loads(open(file).read())
    data["entries"][strided.key] = image_only
    with open(file, "w") as f:
        json.dump(data, f)
    report = {}
    tune(resnet, (2, 32, 32, 3), train=True, timings=fake_timings({}), report=report, **quiet)
    assert list(report["entries"]) == [strided.key]  # ... but this model's conv needs dx


def test_a_verdict_timed_with_xlas_forms_is_measured_again_where_zoos_kernels_run(tune_cache):
    quiet = dict(log=lambda m: 0, progress=False)
    resnet = zoo.create("resnet18", num_classes=10)
    shape = (2, 64, 64, 3)        # the stem's output map: 32x32, over native_grad_min_map
    tune(resnet, shape, train=True, timings=fake_timings({}), **quiet)
    tune(resnet, shape, timings=fake_timings({}), **quiet)
    entries = cache.load()
    flags = {k: e["native"] for k, e in entries.items()}
    stems = {convs_of(resnet, shape, train=train)[0].key for train in (True, False)}
    native = {c.key for train in (True, False) for c in convs_of(resnet, shape, train=train)
              if native_here(c.geometry, train)}
    assert stems <= native and {k for k, flag in flags.items() if flag} == native
    for key, entry in entries.items():
        assert not stale(key, entry)
        older = {k: v for k, v in entry.items() if k != "native"}
        assert stale(key, older) == entry["native"]          # measured again


def test_xlas_own_convolution_is_a_candidate_where_the_compiled_forward_runs(tune_cache):
    """In inference a custom conv with XLA's forward is XLA's convolution, unless zoo's
    compiled forward takes it: then XLA's own is another program, measured beside it and
    chosen where it is faster (CPUs differ)."""
    quiet = dict(log=lambda m: 0, progress=False)
    resnet = zoo.create("resnet18", num_classes=10,
                        conv_policy=ConvPolicy(native_forward_max_map=1))   # image convs only
    shape = (2, 64, 64, 3)
    calls = convs_of(resnet, shape)
    stem = calls[0]
    other = next(c for c in calls if c.default_impl() == "xla+stored" and c is not stem)
    assert stem.native and not other.native
    assert {"xla", "xla+stored"} <= set(stem.candidates())
    assert "xla" not in other.candidates()
    tuned = tune(resnet, shape, timings=lambda call, impl: 0.5 if impl == "xla" else 1.0,
                 **quiet)
    assert dict(tuned.tuned)[stem.key] == "xla"
    entry = cache.load()[stem.key]
    assert not stale(stem.key, entry)
    assert stale(stem.key, dict(entry, seconds={k: v for k, v in entry["seconds"].items()
                                                if k != "xla"}))


def test_refresh_measures_again_and_keeps_the_rest(tune_cache):
    quiet = dict(log=lambda m: 0, progress=False)
    resnet, lenet = zoo.create("resnet18", num_classes=10), zoo.create("lenet5")
    tune(resnet, (2, 32, 32, 3), timings=fake_timings({"im2col": 0.1}), **quiet)
    first = tune(lenet, (2, 32, 32, 1), timings=fake_timings({"im2col": 0.1}), **quiet)
    assert len(first.tuned) == 13 and len(cache.load()) == 13
    again = tune(lenet, (2, 32, 32, 1), timings=fake_timings({"im2col": 2.0}), refresh=True,
                 **quiet)
    calls = convs_of(lenet, (2, 32, 32, 1))
    defaults = {c.key: c.default_impl() for c in calls}
    assert defaults == {calls[0].key: "taps", calls[1].key: "xla+stored"}
    table = dict(again.tuned)
    assert len(table) == 13 and {k: table[k] for k in defaults} == defaults
    assert {v for k, v in table.items() if k not in defaults} == {"im2col"}
    assert {k: cache.load()[k]["impl"] for k in defaults} == defaults
