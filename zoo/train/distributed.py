"""Joining a multi-host run (``--distributed``) without waiting forever.

``jax.distributed.initialize`` blocks until every process has registered with the
coordinator, and at its own deadline it aborts the whole process from C++ (no Python
exception, no message naming what was missing). So the call runs in a helper thread under
this module's deadline (``--distributed-timeout``): one line says what it waits for, and
a process still waiting at the deadline gets a :class:`ConfigError` naming the
coordinator, the timeout and the process ids it expected besides itself. JAX's own
deadline is set later than ours, as a backstop only.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import Callable

import jax

from .config import ConfigError, TrainConfig

#: seconds JAX's own deadline (which aborts the process) comes after ours
BACKSTOP_S = 3600


def _missing(cfg: TrainConfig) -> str:
    """Which processes this one waited for (all but itself: JAX does not say which came)."""
    n, me = cfg.num_processes, cfg.process_id
    if n is None or me is None:
        return "the cluster's other processes did not all arrive"
    others = [i for i in range(n) if i != me]
    if len(others) == 1:
        return f"process {others[0]} did not arrive"
    shown = ", ".join(map(str, others[:16])) + (", ..." if len(others) > 16 else "")
    return f"processes {shown} did not all arrive (JAX does not say which did)"


@contextlib.contextmanager
def _native_stderr_muted():
    """File descriptor 2 to /dev/null: the coordination service logs its own shutdown from
    C++ in many lines, after which the one error line would be lost."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def init_distributed(cfg: TrainConfig, log: Callable = None) -> None:
    """``jax.distributed.initialize`` (once) with the configured coordinator, or the
    cluster's autodetection (SLURM, Open MPI, TPU) when none is given, waiting at most
    ``cfg.distributed_timeout`` seconds for every process to arrive."""
    if jax.distributed.is_initialized():
        return
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    kwargs = {k: v for k, v in (("coordinator_address", cfg.coordinator),
                                ("num_processes", cfg.num_processes),
                                ("process_id", cfg.process_id)) if v is not None}
    timeout = float(cfg.distributed_timeout)
    where = cfg.coordinator or "the autodetected coordinator"
    count = f"{cfg.num_processes} processes" if cfg.num_processes else "the cluster's processes"
    me = f"this is process {cfg.process_id}" if cfg.process_id is not None else "autodetected id"
    say(f"waiting up to {timeout:g} s for {count} at {where} ({me})")
    outcome: dict = {}

    def connect():
        try:
            jax.distributed.initialize(**kwargs,
                                       initialization_timeout=int(timeout) + BACKSTOP_S)
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            outcome["error"] = e

    start = time.monotonic()
    worker = threading.Thread(target=connect, name="zoo-distributed-init", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        # Stop the half-made service and client so that nothing of them outlives the error.
        with _native_stderr_muted():
            try:
                jax.distributed.shutdown()
            except Exception:  # noqa: BLE001 - the timeout is the error to report
                pass
        me = cfg.process_id if cfg.process_id is not None else "?"
        raise ConfigError(
            f"--distributed: timed out after {timeout:g} s waiting at {where} for {count} "
            f"(this is process {me}): {_missing(cfg)}. Start every process with the same "
            f"--coordinator and --num-processes and its own --process-id, check that {where} "
            f"is reachable from each host, or give a longer --distributed-timeout")
    error = outcome.get("error")
    if error is not None:
        reason = str(error).rstrip(".")
        raise ConfigError(f"--distributed: jax.distributed.initialize() failed after "
                          f"{time.monotonic() - start:.0f} s: {reason}. Give --coordinator "
                          "HOST:PORT --num-processes N --process-id I, or launch under "
                          "SLURM / Open MPI (see docs/training.md)") from error
