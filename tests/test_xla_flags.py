"""``import zoo`` turns XLA:CPU's YNNPACK fusions off for the whole process through
``XLA_FLAGS``, so a plain ``jax.jit`` around a zoo model compiles zoo.jit's program; a user's
own entry, ``ZOO_XLA_FLAGS=0`` and a backend started too early are respected. Each case that
depends on when JAX starts runs in a fresh interpreter."""
import json
import os
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import pytest

from zoo.kernels import xla

# Compiles LeNet-5's forward with plain jax.jit and with zoo.jit; reports XLA_FLAGS after
# `import zoo`, whether the plain program holds a YNNPACK fusion, whether both compiled
# programs are the same text, and the warnings `import zoo` gave.
PROBE = """
import json, os, sys, warnings
import jax, jax.numpy as jnp
if sys.argv[1] == "early":
    jnp.ones(1).block_until_ready()   # the user's first array starts the backends
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import zoo
model = zoo.create("lenet5")
v = model.init(jax.random.key(0), (2, 32, 32, 1))
x = jnp.ones((2, 32, 32, 1))
def logits(p, s, x):
    return model.apply(p, s, x)[0]
plain = jax.jit(logits).lower(v["params"], v["state"], x).compile().as_text()
ours = zoo.jit(logits).lower(v["params"], v["state"], x).compile().as_text()
print(json.dumps(dict(xla_flags=os.environ.get("XLA_FLAGS"), ynn="__ynn_fusion" in plain,
                      same=plain == ours, warnings=[str(w.message) for w in caught
                                                    if w.category is UserWarning])))
"""

needs_cpu = pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU option")


def probe(when="first", **env) -> dict:
    environ = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla.OPT_OUT)}
    out = subprocess.run([sys.executable, "-c", PROBE, when], env={**environ, **env},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.splitlines()[-1])


@needs_cpu
def test_plain_jax_jit_after_import_zoo_compiles_zoo_jits_program():
    r = probe(XLA_FLAGS="--xla_cpu_multi_thread_eigen=true")
    # appended to the user's flags, which are kept
    assert r["xla_flags"] == "--xla_cpu_multi_thread_eigen=true " + xla.XLA_FLAG
    assert not r["ynn"] and r["same"] and r["warnings"] == []


@needs_cpu
def test_opting_out_leaves_xla_flags_and_jaxs_defaults():
    r = probe(ZOO_XLA_FLAGS="0")
    assert r["xla_flags"] is None
    assert r["ynn"] and not r["same"]       # XLA's default: the dense layers fused by YNNPACK
    assert r["warnings"] == []


@needs_cpu
def test_a_backend_started_before_import_zoo_warns_once_and_changes_nothing():
    r = probe("early")
    assert r["xla_flags"] is None and r["ynn"] and not r["same"]
    (message,) = r["warnings"]
    assert "before `import zoo`" in message
    for remedy in ("Import zoo before making any JAX array", f"XLA_FLAGS={xla.XLA_FLAG}",
                   "zoo.jit", "ZOO_XLA_FLAGS=0"):
        assert remedy in message


def test_a_users_own_entry_and_the_opt_out_are_kept():
    jnp.ones(1).block_until_ready()  # the decisions below come before the backend check
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for value in ("0", "false", " Off ", "NO"):
            env = {"ZOO_XLA_FLAGS": value, "XLA_FLAGS": "--xla_dump_to=/tmp/d"}
            assert xla.set_process_flags(env) == "opted out"
            assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/d"
        for own in ("--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT",
                    "--xla_dump_to=/tmp/d -xla_cpu_experimental_ynn_fusion_type"):
            env = {"XLA_FLAGS": own}
            assert xla.set_process_flags(env) == "user's own" and env == {"XLA_FLAGS": own}
    assert not xla.names_flag("--xla_cpu_experimental_ynn_fusion_types=x --xla_dump_to=ynn")


@needs_cpu
def test_in_a_started_process_it_only_warns():
    jnp.ones(1).block_until_ready()
    env = {"ZOO_XLA_FLAGS": "1"}             # anything but 0/false/no/off keeps it on
    with pytest.warns(UserWarning, match="before `import zoo`"):
        assert xla.set_process_flags(env) == "too late"
    assert env == {"ZOO_XLA_FLAGS": "1"}


def test_a_jaxlib_without_the_flag_gets_no_xla_flags_entry(monkeypatch):
    # an XLA_FLAGS entry XLA does not know aborts the process at its first compile
    monkeypatch.setattr(xla, "_jaxlib_has_flag", lambda: False)
    env = {}
    assert xla.set_process_flags(env) == "unknown to jaxlib" and env == {}
