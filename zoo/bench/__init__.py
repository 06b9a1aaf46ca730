"""Benchmarks: every speed figure of docs/benchmarks.md comes from here, measured as ratios
side by side in one process (``zoo benchmark``).

- :mod:`.timing`: the matmul ceiling, interleaved rounds, medians and the spread, the machine;
- :mod:`.runners`: a compiled JAX inference call or train step, and its torch counterpart;
- :mod:`.levers`: a model's conv choices and the policy variants that change them;
- :mod:`.dense_eval`: a fully-convolutional net against the crops it stands for;
- :mod:`.compile`: train-step compile time, scanned and unrolled;
- :mod:`.pipeline`: zoo's streaming loader against torch's DataLoader on an image folder;
- :mod:`.suite`: a whole run (:func:`run` with :class:`Options`); :func:`tune_targets`
  measures the targets' convolutions for ``--policy tuned`` first.

Timing: medians of at least 5 timed repetitions after warm-up, each ending in
``block_until_ready``, the runners compared interleaved round by round (the machines are
shared: compare ratios within a run, not across runs); a short call's repetition starts
with one untimed call, so the cost of switching from another runner is not counted.
"""
from .compile import run_compile_report, scan_step_times
from .dense_eval import HEAD_VARIANTS, benchmark_dense_eval, format_benchmark
from .levers import LEVER_VARIANTS, conv_choices, lever_variants
from .pipeline import run_input_pipeline
from .runners import compile_seconds, has_scanned_runs, jax_runner, torch_model, torch_runner
from .suite import DEFAULT_TARGETS, Options, parse_target, run, target_name, tune_targets
from .timing import Runner, interleaved, machine, matmul_peak, stats, time_calls

__all__ = ["DEFAULT_TARGETS", "HEAD_VARIANTS", "LEVER_VARIANTS", "Options", "Runner",
           "benchmark_dense_eval", "compile_seconds", "conv_choices", "format_benchmark",
           "has_scanned_runs", "interleaved", "jax_runner", "lever_variants", "machine",
           "matmul_peak", "parse_target", "run", "run_compile_report", "run_input_pipeline",
           "scan_step_times", "stats", "target_name", "time_calls", "torch_model",
           "torch_runner", "tune_targets"]
