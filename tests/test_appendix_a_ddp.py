"""appendix-A/DDP-script.py: DistributedDataParallel training of the toy network on CPUs.

Runs the script as typed (it starts two gloo processes on the CPU itself), with torchrun, and
as a single process (--nproc-per-node 1), and unit-tests its argument checks through import_path.
"""
import os
import re
import subprocess
import sys
from argparse import Namespace

import pytest

from conftest import ROOT, free_port, import_path

SCRIPT = ROOT / "appendix-A" / "DDP-script.py"
TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                 "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")
EPOCH = re.compile(r"^\[rank (\d)\] epoch (\d+)/\d+ \| examples \[([\d, ]+)\] \| batches (\d+) \| train loss (\d+\.\d{4})$")
CHECKSUM = re.compile(r"^\[rank (\d)\] weights checksum (-?\d+\.\d{4})$")
ACCURACY = re.compile(r"^\[rank (\d)\] train accuracy (\d\.\d{4}) \| test accuracy (\d\.\d{4})$")


def _env():
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    env["OMP_NUM_THREADS"] = "1"
    env["CUDA_VISIBLE_DEVICES"] = ""  # the test is about the CPU (gloo) path, even on a GPU machine
    return env


def _run(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=_env(), cwd=ROOT)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}"
    return proc.stdout.splitlines()


def _parse(lines):
    epochs, checksums, accuracies = {}, {}, {}
    for line in lines:
        if m := EPOCH.match(line):
            rank, epoch = int(m[1]), int(m[2])
            examples = [int(i) for i in m[3].split(", ")]
            epochs[rank, epoch] = (examples, int(m[4]), float(m[5]))
        elif m := CHECKSUM.match(line):
            checksums[int(m[1])] = float(m[2])
        elif m := ACCURACY.match(line):
            accuracies[int(m[1])] = (float(m[2]), float(m[3]))
    return epochs, checksums, accuracies


@pytest.fixture(scope="module")
def two_process_output():
    return _run([sys.executable, str(SCRIPT)])  # two processes by default, started by the script


def test_torchrun_runs_the_same_training(two_process_output):
    lines = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                  f"--master_port={free_port()}", str(SCRIPT)])
    assert sorted(_parse(lines)[0].items()) == sorted(_parse(two_process_output)[0].items())
    assert _parse(lines)[1] == _parse(two_process_output)[1]  # the same checksums


def test_both_ranks_train_every_epoch(two_process_output):
    epochs, _, _ = _parse(two_process_output)
    assert sorted(epochs) == [(r, e) for r in (0, 1) for e in (1, 2, 3)], two_process_output
    assert any("[rank 0] world size 2 | backend gloo | device cpu" == l for l in two_process_output)
    assert any("[rank 1] world size 2 | backend gloo | device cpu" == l for l in two_process_output)
    for (rank, epoch), (examples, batches, loss) in epochs.items():
        assert len(examples) == 4 and batches == 2  # 8 examples split in two, batches of 2
        assert 0 < loss < 1.0
    # the loss falls on both ranks
    for rank in (0, 1):
        assert epochs[rank, 3][2] < epochs[rank, 1][2]


def test_sampler_shards_are_disjoint_and_cover_the_data(two_process_output):
    epochs, _, _ = _parse(two_process_output)
    shards = []
    for epoch in (1, 2, 3):
        a, b = epochs[0, epoch][0], epochs[1, epoch][0]
        assert not set(a) & set(b), f"epoch {epoch}: ranks share examples {a} / {b}"
        assert sorted(a + b) == list(range(8))
        shards.append(tuple(a))
    assert len(set(shards)) > 1, "the shards should change from epoch to epoch (set_epoch)"


def test_gradients_are_synchronised(two_process_output):
    # The ranks see different data (different losses) but end with identical weights.
    epochs, checksums, _ = _parse(two_process_output)
    assert set(checksums) == {0, 1}
    assert checksums[0] == checksums[1]
    assert epochs[0, 1][2] != epochs[1, 1][2]


def test_only_rank_0_reports_perfect_accuracy(two_process_output):
    _, _, accuracies = _parse(two_process_output)
    assert accuracies == {0: (1.0, 1.0)}


def test_single_process():
    lines = _run([sys.executable, str(SCRIPT), "--epochs", "2", "--nproc-per-node", "1"])
    assert lines[0].startswith("note: --nproc-per-node 1, so this runs as a single process")
    epochs, checksums, accuracies = _parse(lines)
    assert sorted(epochs) == [(0, 1), (0, 2)]
    for examples, batches, _ in epochs.values():
        assert sorted(examples) == list(range(8)) and batches == 4
    assert list(checksums) == [0]
    assert accuracies == {0: (1.0, 1.0)}


@pytest.fixture(scope="module")
def ddp():
    return import_path("appendix-A/DDP-script.py")


def _args(**overrides):
    return Namespace(**{"epochs": 3, "lr": 0.5, "batch_size": 2, "seed": 123, "device": "cpu", **overrides})


@pytest.mark.parametrize("overrides, message", [
    ({"epochs": 0}, "--epochs must be at least 1, got 0"),
    ({"lr": -0.1}, "--lr must be positive, got -0.1"),
    ({"batch_size": 0}, "--batch-size must be at least 1, got 0"),
    ({"batch_size": 5}, "--batch-size 5 is larger than the 4 training examples per process (8 examples over 2 process(es))"),
])
def test_bad_arguments_are_named(ddp, overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ddp.validate(_args(**overrides), world_size=2, num_train=8)
    ddp.validate(_args(), world_size=2, num_train=8)  # the defaults are fine


def test_distributed_env(ddp):
    assert ddp.distributed_env({}) == (0, 0, 1, False)
    assert ddp.distributed_env({"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}) == (1, 1, 2, True)
    with pytest.raises(ValueError, match="found RANK but not LOCAL_RANK, WORLD_SIZE"):
        ddp.distributed_env({"RANK": "0"})
    with pytest.raises(ValueError, match=r"RANK=2 is outside 0..1"):
        ddp.distributed_env({"RANK": "2", "LOCAL_RANK": "0", "WORLD_SIZE": "2"})


def test_bad_batch_size_exits_with_a_clear_message():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--batch-size", "9", "--nproc-per-node", "1"],
                          capture_output=True, text=True, timeout=120, env=_env(), cwd=ROOT)
    assert proc.returncode != 0
    assert "error: --batch-size 9 is larger than the 8 training examples per process (8 examples over 1 process(es))" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_stopping_the_launcher_stops_every_process():
    # `kill` of the script (as Ctrl+C would): both processes stop, one line, exit code 130
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--epochs", "1000000"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT, start_new_session=True)
    try:
        seen = [proc.stdout.readline() for _ in range(3)]  # both ranks are training
        assert any("epoch 1/" in line for line in seen), seen
        proc.terminate()
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert err.strip() == "interrupted: stopped all 2 processes"
    left = subprocess.run(["ps", "-o", "pid=,stat=", "-g", str(proc.pid)], capture_output=True, text=True).stdout
    assert all(line.split()[1].startswith("Z") for line in left.splitlines()), left  # no process still running
