"""The trainer fed from a folder against the bare train step (``zoo benchmark
--input-pipeline FOLDER --pipeline-train MODEL``): is training input-bound?

One process holds both, interleaved round by round: the trainer's jitted step
(:class:`zoo.train.Trainer`, as ``zoo train`` builds it: SGD, the default settings) fed by
the streaming loader over the folder (one :class:`zoo.data.RunStream` for the whole
measurement, ``random_resized_crop`` at the model's size, its mean and std, as a
streamed run reads), and the benchmark's bare train step (:func:`.runners.jax_runner`) on
one fixed batch. A round is ``steps`` steps of each, timed until the last step's result is
ready; the ratio is the fed trainer's images/s over the bare step's (1.0: the input costs
nothing)."""
from __future__ import annotations

import time
import warnings
from typing import Callable

import jax



def run_fed_step(folder, model_name: str, *, batch_size: int = 32, workers: int = 2,
                 rounds: int = 3, steps: int = 4, seed: int = 0, log: Callable = print) -> dict:
    """``rounds`` interleaved rounds of ``steps`` steps: images/s of the trainer fed from
    ``folder`` and of the bare step, and their ratio per round."""
    from .. import create
    from ..data import RunStream, open_stream, stream_batches
    from ..train import Trainer, as_config
    from .pipeline import _spread
    from .runners import jax_runner

    model = create(model_name)
    shape = model.input_shape
    with warnings.catch_warnings():   # the split's notes: every image is read
        warnings.simplefilter("ignore")
        train, _ = open_stream(folder, image_shape=shape, seed=seed,
                               augment="random_resized_crop")
    batches = stream_batches(train, batch_size=batch_size, image_size=shape, train=True,
                             seed=seed, workers=workers, mean=model.mean, std=model.std)
    if len(batches) < 1:
        raise ValueError(f"--pipeline-train: {len(train)} training images of {folder!r} make "
                         f"no batch of {batch_size}")
    log(f"\n== {model_name} train step at {shape[0]}px b{batch_size}: fed by the streaming "
        f"loader ({workers} worker(s), {len(train)} images) against the bare step, {rounds} "
        f"round(s) of {steps} steps")
    cfg = as_config(model=model_name, dataset=str(folder), batch_size=batch_size,
                    optimizer="sgd", epochs=1, progress=False)
    abstract = model.abstract_init((1, *shape))[0]
    trainer = Trainer(model, cfg, len(batches), params_template=abstract["params"],
                      state_template=abstract["state"])
    variables = jax.jit(model.init, static_argnums=1)(jax.random.key(seed), (1, *shape))
    box = [trainer.init_state(variables, seed)]
    run = RunStream(batches, None, range(10**6 // max(len(batches), 1)))

    def fed():
        for epoch in run.epochs:
            yield from run.train(epoch)
    source = fed()

    def fed_step():
        x, y = next(source)
        xg, yg = trainer.put_batch(x, y)
        box[0], metrics = trainer.train_step(box[0], xg, yg)
        return metrics

    bare = jax_runner(model, "train", batch_size, shape[0], seed=seed)
    runners = {"fed": fed_step, "bare": bare.step}
    times = {name: [] for name in runners}
    try:
        for fn in runners.values():   # compile, and the workers' start, before any round
            jax.block_until_ready(fn())
        for k in range(rounds):
            for name in (("fed", "bare") if k % 2 == 0 else ("bare", "fed")):
                t0 = time.perf_counter()
                for _ in range(steps):
                    out = runners[name]()
                jax.block_until_ready(out)
                times[name].append(time.perf_counter() - t0)
    finally:
        source.close()
        run.close()
    images = steps * batch_size
    result = dict(folder=str(folder), model=model_name, batch_size=batch_size, workers=workers,
                  rounds=rounds, steps=steps, size=shape[0],
                  fed_img_s=_spread([images / t for t in times["fed"]]),
                  bare_img_s=_spread([images / t for t in times["bare"]]),
                  ratio=_spread([b / f for f, b in zip(times["fed"], times["bare"])]))
    log(f"   fed by the loader {result['fed_img_s']['median']:.2f} img/s, bare step "
        f"{result['bare_img_s']['median']:.2f} img/s: fed / bare {result['ratio']['median']:.2f} "
        f"(rounds: {' '.join(f'{r:.2f}' for r in result['ratio']['rounds'])})")
    return result
