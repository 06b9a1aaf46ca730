"""Multi-host streamed input: two real processes joined through ``jax.distributed`` (one
CPU device each) train from a streamed folder. Every process reads only its own rows of
each global batch; the two processes' rows are disjoint and together are exactly the
batches one process reads, and the run's metrics and weights equal a one-process run on
the same global batch. (In-process shards of ``stream_batches``: tests/test_stream.py.)"""
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from zoo import checkpoint as ckpt
from zoo import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = ("images_per_second", "seconds")


def record_reads(log: list, setattr=setattr):
    """Appends ``[epoch, train, batch, [(file, label), ...]]`` to ``log`` for every batch
    the streaming loader makes in this process (``--workers 0``: the reads happen here)."""
    from zoo.data import stream, stream_sources

    make, read = stream._MakeBatch.__call__, stream_sources.FolderReader.read
    current = []

    def call(self, epoch, b):
        current.append([int(epoch), bool(self.train), int(b), []])
        try:
            return make(self, epoch, b)
        finally:
            log.append(current.pop())

    def reading(self, i, *args, **kwargs):
        if current:   # the normalisation statistics' sample is read outside any batch
            current[-1][3].append([self.name(i), int(self.labels[i])])
        return read(self, i, *args, **kwargs)

    setattr(stream._MakeBatch, "__call__", call)
    setattr(stream_sources.FolderReader, "read", reading)


# One process of the distributed run: zoo's own command line, its batches recorded.
_PROCESS = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
    from test_multihost_stream import record_reads
    from zoo import cli
    log = []
    record_reads(log)
    code = cli.main(sys.argv[2:])
    with open(sys.argv[1], "w") as f:
        json.dump(log, f)
    sys.exit(code)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_folder(root, per_class, seed):
    """3 classes x ``per_class`` distinct 16x16 RGB PNGs."""
    rng = np.random.default_rng(seed)
    for c in ("a", "b", "c"):
        os.makedirs(os.path.join(root, c))
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
                os.path.join(root, c, f"{i}.png"))
    return str(root)


def _metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]


def _by_batch(log, root):
    """``{(epoch, train, batch): [rows (file under root, label) of each call, in order]}``."""
    out = {}
    for epoch, train, b, rows in log:
        out.setdefault((epoch, train, b), []).append(
            [(os.path.relpath(f, root), label) for f, label in rows])
    return out


def test_two_processes_read_disjoint_shards_and_train_as_one(tmp_path, monkeypatch):
    """24 train images (3 global batches of 8), 9 eval images (a batch of 8, then one image:
    process 1's share of it is empty), 2 epochs with crop_flip augmentation."""
    train_dir = _write_folder(tmp_path / "train", 8, seed=0)
    val_dir = _write_folder(tmp_path / "val", 3, seed=1)
    args = ["train", "--dataset", train_dir, "--val-dataset", val_dir, "--data-mode", "stream",
            "--workers", "0", "--model", "lenet5", "--augment", "crop_flip", "--epochs", "2",
            "--batch-size", "8", "--seed", "3", "--no-progress"]
    address = f"127.0.0.1:{_free_port()}"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}   # one CPU device each
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    script = _PROCESS.format(repo=REPO, tests=os.path.dirname(os.path.abspath(__file__)))
    procs = []
    for me in (0, 1):
        cmd = [sys.executable, "-c", script, str(tmp_path / f"reads{me}.json"), *args,
               "--output-dir", str(tmp_path / "multi"), "--distributed", "--coordinator", address,
               "--num-processes", "2", "--process-id", str(me), "--distributed-timeout", "60"]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=env, cwd=str(tmp_path)))
    try:
        # Meanwhile the one-process reference, in this process, reading the same batches.
        single_log = []
        record_reads(single_log, monkeypatch.setattr)
        assert cli.main(args + ["--output-dir", str(tmp_path / "single")]) == 0
        outs = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out + err
        assert "Traceback" not in err, err
    assert "2 x cpu in 2 process(es); batch 8 (4 per device)" in outs[0][0]
    assert "input: stream" in outs[0][0]

    # Shards: each global batch is process 0's rows then process 1's, disjoint, and equal to
    # the batch one process reads; over an epoch they cover every image exactly once.
    single = _by_batch(single_log, tmp_path)
    shards = [_by_batch(json.loads((tmp_path / f"reads{me}.json").read_text()), tmp_path)
              for me in (0, 1)]
    assert set(shards[0]) == set(shards[1]) == set(single)
    assert {k[:2] for k in single} == {(0, True), (1, True), (0, False)}
    for key, calls in single.items():
        assert len(shards[0][key]) == len(shards[1][key]) == len(calls), key
        for whole, first, second in zip(calls, shards[0][key], shards[1][key]):
            assert not set(first) & set(second), (key, first, second)
            assert first + second == whole, key
            assert len(first) == (len(whole) + 1) // 2, key   # np.array_split's rows
    for epoch, train, folder, count in ((0, True, "train", 24), (1, True, "train", 24),
                                        (0, False, "val", 9)):
        read = [row for me in (0, 1) for key, calls in shards[me].items()
                if key[:2] == (epoch, train) for row in calls[0]]
        assert len(read) == len(set(read)) == count, (epoch, train)
        assert {f for f, _ in read} == {os.path.join(folder, c, f"{i}.png") for c in "abc"
                                        for i in range(count // 3)}
        assert all(label == "abc".index(os.path.basename(os.path.dirname(f)))
                   for f, label in read)
    orders = [[row for key in sorted(single) if key[:2] == (e, True) for row in single[key][0]]
              for e in (0, 1)]
    assert orders[0] != orders[1]   # each epoch its own permutation, still partitioned

    # The run: the same metrics and weights as one process on the same global batch.
    multi, one = _metrics(tmp_path / "multi"), _metrics(tmp_path / "single")
    assert len(multi) == len(one) == 2
    for a, b in zip(multi, one):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), (a["epoch"], k)
    flat = [ckpt.load_flat(ckpt.CheckpointManager(str(tmp_path / d / "checkpoints")).latest())[0]
            for d in ("multi", "single")]
    assert flat[0].keys() == flat[1].keys()
    for k in flat[0]:
        np.testing.assert_allclose(np.asarray(flat[0][k], np.float64),
                                   np.asarray(flat[1][k], np.float64), rtol=0, atol=1e-5,
                                   err_msg=k)
