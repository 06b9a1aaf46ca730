"""A benchmark run: targets (model, mode, size, batch, dtype), each timed against its lever
variants and torch, interleaved round by round; the matmul peak before and after; the
fully-convolutional comparison; the compile report. ``zoo benchmark`` is its front end,
docs/benchmarks.md its record."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import time
from typing import Callable

import jax

from .. import registry
from ..kernels import ConvPolicy
from ..summary import summary
from ..train import DTYPES
from ..tuning import POLICIES, coverage, named_policy, tune
from .dense_eval import benchmark_dense_eval
from .compile import run_compile_report
from .levers import conv_choices, lever_variants, same_program
from .fed_step import run_fed_step
from .pipeline import check_folder, run_input_pipeline
from .runners import JITS, jax_runner, nnx_runner, torch_runner
from .timing import interleaved, machine, matmul_peak, stats

#: The targets docs/benchmarks.md tracks: inference at 224 batch 8, resnet18 training at
#: 224 and at 32x32 (10 classes), lenet5 training with Adam at batch 128.
DEFAULT_TARGETS = [
    "alexnet:infer:224:8", "vgg16:infer:224:8", "googlenet:infer:224:8",
    "resnet18:infer:224:8", "resnet50:infer:224:8",
    "resnet18:train:224:32", "resnet18:train:32:32:classes=10",
    "lenet5:train:32:128:opt=adam",
]


@dataclasses.dataclass
class Options:
    """What :func:`run` measures (the ``zoo benchmark`` flags)."""

    targets: list | None = None        # MODEL:MODE:SIZE:BATCH[:classes=N][:opt=adam]; None: defaults
    models: list | None = None         # instead: models x modes x image sizes x batch sizes
    modes: list = dataclasses.field(default_factory=lambda: ["infer"])
    image_sizes: list = dataclasses.field(default_factory=lambda: [224])
    batch_sizes: list = dataclasses.field(default_factory=lambda: [8])
    dtypes: list = dataclasses.field(default_factory=lambda: ["float32"])
    reps: int = 5                      # timed rounds per runner
    min_rep_s: float = 0.2             # a repetition repeats the call for about this long
    conv_impl: str = "auto"            # the main JAX runner's ConvPolicy.impl
    policy: list = dataclasses.field(default_factory=lambda: ["tuned"])  # main runner's, others
    jit: str = "zoo"                   # the JAX runners compile with zoo.jit or plain jax.jit
    nnx: bool = False                  # train targets: also the zoo.flax.NNX module's step
    compare_torch: bool = False
    torch_threads: int = 2
    levers: bool = False
    per_example: bool = False
    fully_conv: bool = False
    fully_conv_size: int = 384
    compile_report: list | None = None
    compile_rounds: int = 1
    scan_steps: int = 0
    no_peak: bool = False
    peak_size: int | None = None
    input_pipeline: str | None = None  # a folder: zoo's streaming loader against torch's
    workers: int = 2                   # worker processes of both loaders (0: in process)
    pipeline_batches: int = 20         # batches per loader per round
    pipeline_batch_size: int = 32
    pipeline_train: str | None = None  # a model: its train step fed from the folder vs bare
    tune: bool = False                 # zoo tune each target first (what is cached is kept)
    json: str | None = None

    def validate(self) -> "Options":
        """Check every option (counts, finite numbers, model names, targets) and the options
        that contradict each other, before anything is measured: a ``ValueError`` naming
        the flag."""
        for name, low in (("reps", 1), ("torch_threads", 1), ("fully_conv_size", 1),
                          ("compile_rounds", 1), ("scan_steps", 0), ("peak_size", 1),
                          ("workers", 0), ("pipeline_batches", 2), ("pipeline_batch_size", 1)):
            value = getattr(self, name)
            if value is None and name == "peak_size":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{_flag(name)} must be an integer >= {low}, got {value!r}")
        if isinstance(self.min_rep_s, bool) or not isinstance(self.min_rep_s, (int, float)) \
                or not math.isfinite(self.min_rep_s) or self.min_rep_s < 0:
            raise ValueError(f"--min-rep-s must be a finite number >= 0, got {self.min_rep_s!r}")
        for name, choices in (("modes", ("infer", "train")), ("dtypes", ("float32", "bfloat16"))):
            bad = [v for v in getattr(self, name) if v not in choices]
            if bad or not getattr(self, name):
                raise ValueError(f"{_flag(name)}: {bad or 'none given'}; choose from "
                                 f"{', '.join(choices)}")
        if self.conv_impl not in ("auto", "xla", "im2col"):
            raise ValueError(f"--conv-impl {self.conv_impl!r}: choose from auto, xla, im2col")
        bad = [v for v in self.policy if v not in POLICIES]
        if bad or not self.policy or len(set(self.policy)) != len(self.policy):
            raise ValueError(f"--policy {' '.join(map(str, self.policy))}: give one or more of "
                             f"{', '.join(POLICIES)}, each once")
        if self.jit not in JITS:
            raise ValueError(f"--jit {self.jit!r}: choose from {', '.join(JITS)}")
        for name in ("image_sizes", "batch_sizes"):
            bad = [v for v in getattr(self, name)
                   if isinstance(v, bool) or not isinstance(v, int) or v < 1]
            if bad or not getattr(self, name):
                raise ValueError(f"{_flag(name)} must be integers >= 1, got {getattr(self, name)!r}")
        for name in ("models", "compile_report"):
            for model in getattr(self, name) or ():
                _check_model(model, _flag(name))
        if self.pipeline_train is not None:
            _check_model(self.pipeline_train, "--pipeline-train")
        self._contradictions()
        if self.input_pipeline is not None:
            check_folder(self.input_pipeline)
        for spec in () if self.models else (DEFAULT_TARGETS if self.targets is None
                                            else self.targets):
            _check_model(parse_target(spec, "float32")["model"], f"--targets {spec!r}")
        return self

    def _contradictions(self) -> None:
        default = Options()
        if self.models and self.targets is not None:
            raise ValueError("--models replaces --targets (a cross product of models x modes x "
                             "sizes x batches): give one of them")
        shaping = [_flag(n) for n in ("modes", "image_sizes", "batch_sizes")
                   if getattr(self, n) != getattr(default, n)]
        if shaping and not self.models:
            raise ValueError(f"{', '.join(shaping)} shape the --models cross product and apply "
                             f"only with --models (a --targets entry names its own)")
        for name, needs, switch in (("compile_rounds", "compile_report", "--compile-report"),
                                    ("scan_steps", "compile_report", "--compile-report"),
                                    ("fully_conv_size", "fully_conv", "--fully-conv"),
                                    ("torch_threads", "compare_torch", "--compare-torch"),
                                    ("workers", "input_pipeline", "--input-pipeline"),
                                    ("pipeline_batches", "input_pipeline", "--input-pipeline"),
                                    ("pipeline_batch_size", "input_pipeline",
                                     "--input-pipeline"),
                                    ("pipeline_train", "input_pipeline", "--input-pipeline")):
            if getattr(self, name) != getattr(default, name) and not getattr(self, needs):
                raise ValueError(f"{_flag(name)} applies only with {switch}")
        targets = self.models or (self.targets if self.targets is not None
                                  else [] if self.input_pipeline else DEFAULT_TARGETS)
        if self.jit != default.jit and not targets:
            raise ValueError("--jit applies to the JAX runners of --targets or --models, and "
                             "this run has none")
        if self.peak_size is not None and self.no_peak:
            raise ValueError("--peak-size contradicts --no-peak: give one of them")
        if self.tune and "tuned" not in self.policy:
            raise ValueError(f"--tune measures for --policy tuned, and this run times "
                             f"--policy {' '.join(self.policy)} only")
        if self.tune and not targets:
            raise ValueError("--tune measures the convolutions of --targets or --models, and "
                             "this run has none")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_model(name, what: str) -> None:
    try:
        registry.get_config(name)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None


def parse_target(spec: str, dtype: str) -> dict:
    form = "MODEL:MODE:SIZE:BATCH[:classes=N][:opt=sgd|adam]"
    parts = spec.split(":") if isinstance(spec, str) else []
    if len(parts) < 4:
        raise ValueError(f"bad target {spec!r}: expected {form}")

    def count(field, text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < 1:
            raise ValueError(f"bad target {spec!r}: {field} must be an integer >= 1, got "
                             f"{text!r} ({form})")
        return value

    t = dict(model=parts[0], mode=parts[1], size=count("SIZE", parts[2]),
             batch=count("BATCH", parts[3]), dtype=dtype, classes=None, opt="sgd")
    for extra in parts[4:]:
        k, _, v = extra.partition("=")
        if k == "classes":
            t["classes"] = count("classes", v)
        elif k == "opt" and v in ("sgd", "adam"):
            t["opt"] = v
        else:
            raise ValueError(f"bad target option {extra!r} in {spec!r}: classes=N or "
                             f"opt=sgd|adam")
    if t["mode"] not in ("infer", "train"):
        raise ValueError(f"bad mode in {spec!r}: 'infer' or 'train'")
    return t


def target_name(t: dict) -> str:
    extra = (f" {t['classes']}cls" if t["classes"] else "") + (f" {t['opt']}" if t["mode"] == "train" else "")
    return f"{t['model']} {t['mode']} {t['size']}px b{t['batch']} {t['dtype']}{extra}"


def targets_from(args) -> list[dict]:
    out = []
    for dtype in args.dtypes:
        if args.models:
            for m in args.models:
                for mode in args.modes:
                    for s in args.image_sizes:
                        for b in args.batch_sizes:
                            out.append(parse_target(f"{m}:{mode}:{s}:{b}", dtype))
        else:
            default = [] if args.input_pipeline else DEFAULT_TARGETS   # the pipeline alone
            for spec in (default if args.targets is None else args.targets):
                out.append(parse_target(spec, dtype))
    return out


def _target_model(t: dict, policy: ConvPolicy | None = None):
    return registry.create(t["model"], conv_policy=policy or ConvPolicy(),
                           **({"num_classes": t["classes"]} if t["classes"] else {}))


def tune_targets(targets, *, dtype: str = "float32", log: Callable = print, **tune_args) -> dict:
    """:func:`zoo.tune` for each benchmark target (``MODEL:MODE:SIZE:BATCH[:...]`` strings or
    :func:`parse_target` dicts; None: :data:`DEFAULT_TARGETS`), in its mode, shape and
    dtype: what ``--policy tuned`` then times. Geometries already cached for this machine
    are not measured again (``refresh=True`` measures them). ``tune_args`` go to
    :func:`zoo.tune`. Returns ``{target name: (geometries measured, distinct geometries)}``."""
    specs = DEFAULT_TARGETS if targets is None else targets
    parsed = [parse_target(t, dtype) if isinstance(t, str) else t for t in specs]
    for t in parsed:
        _check_model(t["model"], f"target {target_name(t)!r}")
    out = {}
    for i, t in enumerate(parsed):
        name = target_name(t)
        log(f"\n== tune {i + 1}/{len(parsed)}: {name}")
        model = _target_model(t)
        shape = (t["batch"], t["size"], t["size"], model.input_shape[-1])
        train, dt = t["mode"] == "train", DTYPES[t["dtype"]]
        policy = tune(model, shape, train=train, dtype=dt, log=log, **tune_args)
        out[name] = coverage(model.with_policy(policy), shape, train=train, dtype=dt)
    return out


def run_target(t: dict, args, peaks: dict, log) -> dict:
    name = target_name(t)
    model = _target_model(t, ConvPolicy(impl=args.conv_impl))
    c = model.input_shape[-1]
    ncls = model.num_classes
    shape = (t["batch"], t["size"], t["size"], c)
    macs = summary(model, shape[1:]).macs
    flops = 2 * macs * t["batch"] * (3 if t["mode"] == "train" else 1)
    peak = peaks.get(t["dtype"])
    result = dict(target=name, **t, macs_per_image=macs, flops_per_call=flops, runners={})
    train = t["mode"] == "train"
    models = {}
    for i, name_ in enumerate(args.policy):
        policy, line = named_policy(name_, model, shape, train=train, dtype=DTYPES[t["dtype"]])
        models["jax" if i == 0 else f"policy_{name_}"] = (model.with_policy(policy), line)
    model = models["jax"][0]
    result["policies"] = {k: line for k, (_, line) in models.items()}
    choices = conv_choices(model, shape, dtype=t["dtype"], train=train)
    result["conv_choices"] = {}
    for _, impl, _, _ in choices:
        result["conv_choices"][impl] = result["conv_choices"].get(impl, 0) + 1

    runners = []
    kw = dict(optimizer=t["opt"])
    jkw = dict(kw, jit=args.jit)
    log(f"\n== {name}: {2 * macs / 1e9:.3f} GFLOP/image forward; convs {result['conv_choices']}")
    log(f"   jax: {models['jax'][1]}")
    runners.append(jax_runner(model, t["mode"], t["batch"], t["size"], t["dtype"],
                                    name="jax", **jkw))
    for rname, (other, line) in list(models.items())[1:]:
        if same_program(conv_choices(other, shape, dtype=t["dtype"], train=train),
                        t["mode"]) == same_program(choices, t["mode"]):
            log(f"   {rname}: the same conv choices as jax's, not timed again")
            result["policies"][rname] += " (same program as jax's)"
            continue
        log(f"   {rname}: {line}")
        runners.append(jax_runner(other, t["mode"], t["batch"], t["size"], t["dtype"],
                                  name=rname, **jkw))
    if args.levers:
        for vname, variant in lever_variants(model, t["mode"], shape, t["dtype"]).items():
            runners.append(jax_runner(variant, t["mode"], t["batch"], t["size"], t["dtype"],
                                            name=vname, **jkw))
    if args.per_example and t["mode"] == "infer" and t["batch"] > 1:
        runners.append(jax_runner(model, "infer", t["batch"], t["size"], t["dtype"],
                                        per_example=True, name="per_example", **jkw))
    if args.nnx and t["mode"] == "train" and t["dtype"] == "float32":
        runners.append(nnx_runner(model, t["batch"], t["size"], **kw))
    if args.compare_torch:
        try:
            import torch
            torch.set_num_threads(args.torch_threads)
            for cl in (False, True):
                runners.append(torch_runner(t["model"], t["mode"], t["batch"], t["size"], c,
                                                  ncls, t["dtype"], channels_last=cl, **kw))
        except (ImportError, KeyError) as err:
            log(f"   torch comparison skipped: {err!r}")
    for r in runners:
        if r.compile_s:
            log(f"   {r.name}: compiled in {r.compile_s:.1f} s")
    timing = interleaved(runners, rounds=args.reps, min_rep_s=args.min_rep_s, warmup=1)
    for r in runners:
        secs = timing["times"][r.name]
        st = stats(secs, r.batch, flops, peak)
        st.update(compile_s=r.compile_s, calls_per_rep=timing["calls"][r.name], seconds=secs)
        result["runners"][r.name] = st
    # Ratios round by round: time(JAX runner) / time(reference), < 1 means JAX is faster.
    ratios = {}
    jt = timing["times"]["jax"]
    for ref in ("torch_cl", "torch"):
        if ref in timing["times"]:
            per_round = [a / b for a, b in zip(jt, timing["times"][ref])]
            ratios[f"jax/{ref}"] = dict(median=statistics.median(per_round), rounds=per_round)
    for r in runners:
        if r.name not in ("jax", "torch", "torch_cl"):
            per_round = [a / b for a, b in zip(jt, timing["times"][r.name])]
            ratios[f"jax/{r.name}"] = dict(median=statistics.median(per_round), rounds=per_round)
    result["ratios"] = ratios
    for r in runners:
        st = result["runners"][r.name]
        extra = f"{st['gflops']:7.1f} GFLOP/s ({st['fraction_of_peak']:.2f} of peak)" if "fraction_of_peak" in st else ""
        log(f"   {r.name:13s} {st['img_s_median']:9.1f} img/s (min {st['img_s_min']:.1f}, max "
            f"{st['img_s_max']:.1f})  {extra}")
    for k, v in ratios.items():
        log(f"   time {k:22s} {v['median']:.2f}  (rounds: {' '.join(f'{x:.2f}' for x in v['rounds'])})")
    return result


def run(args: Options | None = None, log: Callable = print) -> dict:
    """Every figure the options ask for, in one process: the matmul peak, each target's
    runners interleaved, the fully-convolutional comparison, the compile report. With
    ``args.json`` the results are written after each part (a killed run keeps them)."""
    args = (args or Options()).validate()
    started = time.time()
    # the process's XLA_FLAGS (import zoo's entry unless opted out): with --jit jax they
    # decide what a plain jax.jit compiles
    results = dict(machine=machine(), args=dataclasses.asdict(args),
                   xla_flags=os.environ.get("XLA_FLAGS", ""), peaks={}, targets=[])
    targets = targets_from(args)
    m = results["machine"]
    log(f"machine: {m['kind']}, {m['cores']} cores, flags {' '.join(m['isa']) or 'none known'}, "
        f"jax {jax.__version__} ({jax.default_backend()}), "
        f"torch {results['machine'].get('torch', 'absent')}; compiled by "
        f"{'zoo.jit' if args.jit == 'zoo' else 'jax.jit'}, XLA_FLAGS={results['xla_flags']!r}")
    if args.tune:
        results["tuned"] = tune_targets(targets, log=log)
        save(results, args.json)
    n = args.peak_size or (2048 if jax.default_backend() == "cpu" else 8192)
    if not args.no_peak and (targets or not args.input_pipeline):
        for dtype in sorted({t["dtype"] for t in targets} | {"float32", "bfloat16"}):
            results["peaks"][dtype] = matmul_peak(dtype, n=n, reps=max(args.reps, 3))
            log(f"jnp.dot {n}^2 peak, {dtype}{' (f32 accumulation)' if dtype != 'float32' else ''}: "
                f"{results['peaks'][dtype]:.0f} GFLOP/s")
    for t in targets:
        results["targets"].append(run_target(t, args, results["peaks"], log))
        save(results, args.json)  # a long run killed midway keeps what it measured
    if args.fully_conv:
        results["fully_conv"] = run_fully_conv(args, log)
        save(results, args.json)
    if args.input_pipeline:
        results["input_pipeline"] = run_input_pipeline(
            args.input_pipeline, workers=args.workers, batch_size=args.pipeline_batch_size,
            batches=args.pipeline_batches, rounds=args.reps, log=log)
        save(results, args.json)
        if args.pipeline_train:
            results["fed_step"] = run_fed_step(
                args.input_pipeline, args.pipeline_train, batch_size=args.pipeline_batch_size,
                workers=args.workers, rounds=args.reps, log=log)
            save(results, args.json)
    if args.compile_report:
        results["compile_report"] = run_compile_report(args.compile_report, log, args.scan_steps,
                                                       args.compile_rounds)
    if not args.no_peak and targets:  # the peak again: how much the machine's load moved
        results["peaks_after"] = {d: matmul_peak(d, n=n, reps=3) for d in results["peaks"]}
    results["wall_s"] = time.time() - started
    log(f"\ntotal {results['wall_s']:.0f} s")
    if args.json:
        save(results, args.json)
        log(f"wrote {args.json}")
    return results


def save(results: dict, path: str | None):
    if path:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=1, default=str)
        os.replace(tmp, path)


def run_fully_conv(args, log) -> dict:
    log(f"\n== fully-convolutional VGG16 at {args.fully_conv_size}")
    try:
        return benchmark_dense_eval("vgg16", size=args.fully_conv_size,
                                               repeats=max(3, min(args.reps, 5)), log=log)
    except Exception as err:  # report, don't lose the rest of the run
        log(f"   failed: {err!r}")
        return dict(error=repr(err))
