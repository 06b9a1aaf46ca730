"""The fit loop: epochs with a progress bar, per-epoch evaluation, ``metrics.jsonl``,
checkpoints (last k and best), a NaN/inf guard, early stop for resume tests."""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Callable, Mapping

import jax
import numpy as np

from .. import checkpoint as ckpt
from .config import NonFiniteLossError
from .rundir import writing
from .trainer import Trainer, TrainState


# ----------------------------------------------------------------------------------------
# Data plumbing: per-process shards, padded eval batches.

def data_module():
    from .. import data
    return data


def _shard_args() -> dict:
    return dict(num_shards=jax.process_count(), shard_index=jax.process_index())


def epoch_batches(ds, cfg, *, train: bool, epoch: int, mean, std, drop_remainder: bool):
    """This process's batches of one epoch from either path: a :class:`zoo.data.Dataset`
    (in memory) or a :class:`zoo.data.StreamSet` (streamed by ``cfg.workers`` processes);
    both are pure functions of ``(seed, epoch)`` and yield ``(x, y)`` alike."""
    data = data_module()
    seed = cfg.seed if train else 0
    if isinstance(ds, data.StreamSet):
        return data.stream_batches(ds, batch_size=cfg.batch_size, image_size=ds.image_shape,
                                   train=train, seed=seed, epoch=epoch, workers=cfg.workers,
                                   shard=(jax.process_index(), jax.process_count()),
                                   mean=mean, std=std, drop_remainder=drop_remainder)
    return data.batches(ds, cfg.batch_size, train=train, seed=seed, epoch=epoch, mean=mean,
                        std=std, drop_remainder=drop_remainder, **_shard_args())


def run_stream(train_ds, eval_ds, cfg, *, epochs: range, mean, std):
    """One :class:`zoo.data.RunStream` for every epoch of a streamed run (the workers start
    once); None when the training set is in memory."""
    data = data_module()
    if not isinstance(train_ds, data.StreamSet):
        return None
    train = epoch_batches(train_ds, cfg, train=True, epoch=epochs.start, mean=mean, std=std,
                          drop_remainder=True)
    ev = (epoch_batches(eval_ds, cfg, train=False, epoch=0, mean=mean, std=std,
                        drop_remainder=False) if isinstance(eval_ds, data.StreamSet) else None)
    return data.RunStream(train, ev, epochs)


def eval_batches(trainer: Trainer, ds, *, mean, std, batches=None):
    """Padded eval batches ``(x, y, mask)``: this process's rows of each global batch, the
    last one zero-padded (mask 0) so that shapes never change (one compilation).
    ``batches``: the ``(x, y)`` batches of ``ds`` already under way (a run's stream)."""
    bs = trainer.local_batch
    if batches is None:
        batches = epoch_batches(ds, trainer.cfg, train=False, epoch=0, mean=mean, std=std,
                                drop_remainder=False)
    for x, y in batches:
        n = len(y)
        if n < bs:
            x = np.concatenate([x, np.zeros((bs - n, *x.shape[1:]), x.dtype)])
            y = np.concatenate([y, np.zeros((bs - n,), y.dtype)])
        yield x, y.astype(np.int32), (np.arange(bs) < n).astype(np.float32)


def evaluate(trainer: Trainer, params, state, ds, *, mean, std, predictions: bool = False,
             batches=None) -> dict:
    """``{"loss", "accuracy", "count"}`` of ``ds`` (plus ``"predictions"`` and ``"labels"``
    when asked; single-process only); ``batches`` as :func:`eval_batches` takes them."""
    loss = correct = count = 0.0
    preds, labels = [], []
    for x, y, mask in eval_batches(trainer, ds, mean=mean, std=std, batches=batches):
        xg, yg, mg = trainer.put_batch(x, y, mask)
        sums, pred = trainer.eval_step(params, state, xg, yg, mg)
        sums = jax.device_get(sums)
        loss += float(sums["loss"])
        correct += float(sums["correct"])
        count += float(sums["count"])
        if predictions:
            preds.append(np.asarray(pred)[mask > 0])
            labels.append(y[mask > 0])
    out = {"loss": loss / max(count, 1), "accuracy": correct / max(count, 1), "count": int(count)}
    if predictions:
        out["predictions"] = np.concatenate(preds) if preds else np.zeros((0,), np.int32)
        out["labels"] = np.concatenate(labels) if labels else np.zeros((0,), np.int32)
    return out


# ----------------------------------------------------------------------------------------
# The fit loop.

def is_main() -> bool:
    return jax.process_index() == 0


def write_jsonl(path, rows):
    ckpt.atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode())


TIMING_KEYS = ("images_per_second", "seconds")


def fit(trainer: Trainer, ts: TrainState, train_ds, eval_ds, *, mean, std,
        start_epoch: int = 0, history: list | None = None, run_dir: str | None = None,
        manager: ckpt.CheckpointManager | None = None, metadata: Mapping | None = None,
        stop_after_epoch: int | None = None, log: Callable = print):
    """Train ``trainer.cfg.epochs`` epochs from ``start_epoch``; returns ``(ts, history)``.

    Each epoch: shuffled batches from ``(seed, epoch)``, one jitted call per step, a host
    sync every ``log_every`` steps (progress bar, NaN/inf check), evaluation, a line in
    ``run_dir/metrics.jsonl`` and a checkpoint (``manager``). A non-finite loss or gradient
    raises :class:`NonFiniteLossError` before anything is saved, so the last checkpoint
    on disk is the last good one. ``stop_after_epoch`` stops early (as an interruption
    would) after that many epochs in total."""
    from tqdm.auto import tqdm

    cfg = trainer.cfg
    history = list(history or [])
    spe = trainer.steps_per_epoch
    total_steps = cfg.epochs * spe
    step = int(jax.device_get(ts.step))
    bar = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True, file=sys.stderr,
               disable=not (cfg.progress and is_main()), smoothing=0.1, leave=False)
    metrics_path = os.path.join(run_dir, "metrics.jsonl") if run_dir else None
    say = (lambda msg: bar.write(msg, file=sys.stdout)) if not bar.disable and log is not quiet \
        else log
    stream = run_stream(train_ds, eval_ds, cfg, epochs=range(start_epoch, cfg.epochs),
                        mean=mean, std=std)
    try:
        for epoch in range(start_epoch, cfg.epochs):
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                log(f"stopping after epoch {epoch} as asked; continue with --resume {run_dir}")
                break
            bar.set_description(f"epoch {epoch + 1}/{cfg.epochs}")
            t0 = time.perf_counter()
            pending, loss_sum, correct, seen, n_steps = [], 0.0, 0, 0, 0
            last_rate_t, last_rate_seen = t0, 0

            def flush():
                nonlocal loss_sum, correct, seen, last_rate_t, last_rate_seen
                values = jax.device_get([m for _, m in pending])
                for (s, _), v in zip(pending, values):
                    bad = [k for k in ("loss", "grad_norm") if not np.isfinite(v[k])]
                    if bad:
                        last = manager.latest() if manager else None
                        where = (f"the last good checkpoint is {last}" if last else
                                 "no checkpoint was written yet (this was the first epoch)")
                        raise NonFiniteLossError(
                            f"the {bad[0].replace('_', ' ')} became {v[bad[0]]} at step {s} "
                            f"(epoch {epoch + 1}, batch {s - epoch * spe}); training stopped and "
                            f"nothing after it was saved: {where}. Try a smaller --lr, "
                            f"--clip-norm, or check the data.", step=s, epoch=epoch + 1,
                            checkpoint=last)
                    loss_sum += float(v["loss"]) * cfg.batch_size
                    correct += int(v["correct"])
                    seen += cfg.batch_size
                now = time.perf_counter()
                rate = (seen - last_rate_seen) / max(now - last_rate_t, 1e-9)
                last_rate_t, last_rate_seen = now, seen
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}",
                                img_s=f"{rate:,.0f}", refresh=False)
                pending.clear()

            batches = stream.train(epoch) if stream else epoch_batches(
                train_ds, cfg, train=True, epoch=epoch, mean=mean, std=std, drop_remainder=True)
            for x, y in batches:
                xg, yg = trainer.put_batch(x, y.astype(np.int32))
                ts, m = trainer.train_step(ts, xg, yg)
                step += 1
                n_steps += 1
                pending.append((step, m))
                bar.update(1)
                if len(pending) >= cfg.log_every:
                    flush()
            if pending:
                flush()
            if n_steps != spe:
                raise RuntimeError(f"epoch {epoch + 1} had {n_steps} steps, expected {spe}")
            train_seconds = time.perf_counter() - t0
            ev = evaluate(trainer, ts.params, ts.state, eval_ds, mean=mean, std=std,
                          batches=stream.evaluation(epoch) if stream and stream.eval_batches
                          else None)
            row = {"epoch": epoch + 1, "step": step,
                   "loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
                   "eval_loss": ev["loss"], "eval_accuracy": ev["accuracy"],
                   "lr": trainer.lr_at(step),
                   "images_per_second": seen / max(train_seconds, 1e-9),
                   "seconds": time.perf_counter() - t0}
            history.append(row)
            say(f"epoch {epoch + 1}/{cfg.epochs}: loss {row['loss']:.4f}, train acc "
                f"{row['train_accuracy']:.4f}, eval acc {row['eval_accuracy']:.4f}, lr "
                f"{row['lr']:.3g}, {row['images_per_second']:,.0f} img/s, {row['seconds']:.1f} s")
            if manager is not None:
                meta = dict(metadata or {}, epoch=epoch + 1, step=step, metrics=history,
                            eval_accuracy=row["eval_accuracy"])
                last = manager.latest()
                with writing(manager.path(step), f"checkpoint of epoch {epoch + 1}",
                             f"the previous checkpoint {last} is intact: free space (or make the "
                             f"directory writable) and continue with --resume {run_dir}" if last
                             else "no earlier checkpoint exists; free space and train again"):
                    manager.save(step, {"params": ts.params, "state": ts.state, "opt_state":
                                        ts.opt_state, "step": ts.step, "rng": ts.rng}, meta)
            if metrics_path and is_main():
                with writing(metrics_path, "metrics", "the checkpoint of this epoch is saved: "
                             f"continue with --resume {run_dir} (it rewrites the metrics)"):
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(row) + "\n")
    finally:
        bar.close()
        if stream:
            stream.close()
    return ts, history


def quiet(*args, **kwargs):
    pass
