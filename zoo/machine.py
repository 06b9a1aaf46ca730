"""What machine this is: the CPU's model and the flags that decide conv and matmul speed,
the cores this process may use, the JAX versions. Benchmarks print it; ``zoo.tune`` keys
its measurements by it."""
from __future__ import annotations

import contextlib
import os
import platform

#: CPU flags that decide how fast the convolutions and matmuls can run (vector width, the
#: bfloat16 and int8 dot instructions, Intel's AMX tiles)
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
             "amx_bf16", "amx_int8")


def cpuinfo() -> dict:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    out = {}
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                out[key.strip()] = value.strip()
    return out


def cores() -> int:
    """The cores this process may run on (its affinity; all of them where unknown)."""
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu() -> dict:
    """The CPU's model name, vendor, family and model (``kind``: one benchmark table per
    kind), the :data:`ISA_FLAGS` it has, and the cores."""
    info = cpuinfo()
    name = info.get("model name") or platform.processor() or platform.machine() or "unknown"
    flags = set(info.get("flags", "").split())
    family, model = info.get("cpu family", "?"), info.get("model", "?")
    return dict(cpu=name, vendor=info.get("vendor_id", ""), family=family, model=model,
                kind=f"{name} (family {family}, model {model})",
                isa=[x for x in ISA_FLAGS if x in flags], cores=cores())


def fingerprint() -> dict:
    """What a speed measurement is valid for: the CPU (:func:`cpu`), the JAX and jaxlib
    versions and the backend. Another value of any field is another machine."""
    import jax
    import jaxlib

    c = cpu()
    return dict(kind=c["kind"], vendor=c["vendor"], isa=c["isa"], cores=c["cores"],
                jax=jax.__version__, jaxlib=jaxlib.__version__, backend=jax.default_backend())
