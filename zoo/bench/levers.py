"""What each conv policy field gives: a model's conv choices, and the variants of its
policy with one field changed that change its program."""
from __future__ import annotations

from .. import kernels
from ..train import DTYPES
from ..tuning.measure import convs_of, traced_convs


def conv_choices(model, input_shape, *, dtype: str = "float32", train: bool = False) -> list[tuple]:
    """What each conv of ``model`` runs as for ``input_shape`` under its policy (traced
    abstractly, nothing computed; ``train``: in a train step): rows ``(path, impl, input
    shape, kernel shape)``."""
    return traced_convs(model, input_shape, train=train, dtype=DTYPES[dtype]).convs


#: Lever variants: name -> (changes to the model's policy, applies to 'infer'/'train'), each
#: measured against the model's own policy in the same run.
LEVER_VARIANTS = {
    "xla": ({"impl": "xla"}, ("infer", "train")),                 # plain JAX: every conv XLA's
    "no_small_map": ({"small_map": 0}, ("infer", "train")),
    "no_pointwise": ({"pointwise": False}, ("infer", "train")),
    "no_single_channel": ({"single_channel": False}, ("infer", "train")),
    "mmgrad": ({"weight_grad": "matmul"}, ("train",)),  # the matmul weight gradient on
    "no_input_grad": ({"input_grad": "autodiff"}, ("train",)),
    "no_store_input": ({"store_input": False}, ("train",)),
    "no_phases": ({"phases_min_map": 0}, ("train",)),
    "no_winograd": ({"winograd": ()}, ("infer", "train")),
    # XLA's conv forms: neither the compiled weight gradient nor the compiled forward
    "no_native_grad": ({"native_grad_min_map": 0, "native_forward_max_map": 0}, ("train",)),
    "no_native": ({"native": False}, ("infer", "train")),   # no compiled kernel at all
    "bf16_native": ({"low_precision": "native"}, ("infer", "train")),
}


def same_program(rows: list[tuple], mode: str) -> list[tuple]:
    """:func:`conv_choices` rows with each implementation named by the program it runs: in
    inference the custom convs with XLA's forward run just XLA's convolution."""
    custom = kernels.CUSTOM_CONVS
    return [(p, "xla" if mode == "infer" and i in custom and custom[i].forward == "xla" else i,
             x, w) for p, i, x, w in rows]


def lever_variants(model, mode: str, input_shape, dtype: str) -> dict:
    """``{name: model under the varied policy}`` for the :data:`LEVER_VARIANTS` that change
    something for this model and mode (their conv choices differ from its own policy's, or
    the lever acts in this mode and dtype)."""
    custom = kernels.CUSTOM_CONVS

    train = mode == "train"
    base = same_program(conv_choices(model, input_shape, dtype=dtype, train=train), mode)
    out = {}
    for name, (changes, modes) in LEVER_VARIANTS.items():
        if mode not in modes:
            continue
        variant = model.with_policy(model.policy.replace(**changes))
        if name == "bf16_native":
            if dtype != "bfloat16":
                continue
        elif name == "no_input_grad":
            if not any(c[1] in custom and custom[c[1]].input_grad is None for c in base):
                continue
        elif name == "no_native":
            # float32: the compiled forward and gradients; bfloat16: the AMX forward
            if not (dtype == "float32" or any(c[1] == "amx" for c in base)):
                continue
        elif name == "no_native_grad":
            calls = convs_of(model, input_shape, train=True, dtype=DTYPES[dtype])
            if not any(c.native and c.policy.choose(c.geometry, True) in custom
                       and custom[c.policy.choose(c.geometry, True)].weight_grad == "xla"
                       for c in calls):
                continue
        elif same_program(conv_choices(variant, input_shape, dtype=dtype, train=train),
                          mode) == base:
            continue
        out[name] = variant
    return out
