# Generated from the cells tagged "export" in the notebooks below: only what this folder's
# notebooks and scripts use. Edit the notebooks, not this file; regenerate with:
#     python tests/generate_previous_chapters.py
#
# ch01/ch01.ipynb: pick_device
# appendix-A/appendix-A.ipynb: NeuralNetwork, make_toy_data, ToyDataset, compute_accuracy
# ch01/how-the-scripts-are-built.ipynb (the scripts' tooling, not a lesson): TORCHRUN_VARS,
#     distributed_env, exit_without_teardown, MAX_NPROC, ScriptArgumentParser, nproc_count,
#     add_nproc_argument, free_port, launch_worker, stop_workers, launch, run_script,
#     check_finite_loss

import os
import torch
import time
import sys
import argparse
import multiprocessing
import multiprocessing.util
import signal
import socket
from multiprocessing.connection import wait
from torch.utils.data import Dataset


# ---- from ch01/ch01.ipynb ----

def pick_device(name="auto", local_rank=0):
    """The torch.device to compute on.

    name="auto" picks the fastest device PyTorch can use here: CUDA, then Apple's MPS, then the
    CPU. Setting LLMS_DEVICE to cpu, cuda or mps overrides that choice; the test command sets
    LLMS_DEVICE=cpu so that every stored output means the same on every machine. Any other name
    ("cpu", "cuda", "cuda:1", "mps") is checked: a ValueError says when it is not available.
    A process started by torchrun passes its local_rank to get its own GPU of "cuda".
    """
    if name == "auto":
        name = os.environ.get("LLMS_DEVICE")
        if name and name not in ("cpu", "cuda", "mps"):
            raise ValueError(f"LLMS_DEVICE must be cpu, cuda or mps, got {name!r}")
        if not name:
            name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was requested (--device or LLMS_DEVICE), but CUDA is not available")
        index = local_rank if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} (GPU {index}) was requested, but only "
                             f"{torch.cuda.device_count()} CUDA GPU(s) are available")
        return device if index == 0 and device.index is None else torch.device("cuda", index)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} was requested (--device or LLMS_DEVICE), but MPS is not available")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


# ---- from appendix-A/appendix-A.ipynb ----

class NeuralNetwork(torch.nn.Module):
    """A multilayer perceptron: num_inputs -> 30 -> 20 -> num_outputs, ReLU in between."""

    def __init__(self, num_inputs, num_outputs):
        super().__init__()
        if num_inputs < 1 or num_outputs < 1:
            raise ValueError(f"num_inputs and num_outputs must be >= 1, got {num_inputs} and {num_outputs}")
        self.layers = torch.nn.Sequential(
            # first hidden layer
            torch.nn.Linear(num_inputs, 30),
            torch.nn.ReLU(),
            # second hidden layer
            torch.nn.Linear(30, 20),
            torch.nn.ReLU(),
            # output layer: one logit per class
            torch.nn.Linear(20, num_outputs),
        )

    def forward(self, x):
        return self.layers(x)


def make_toy_data():
    """Return (X_train, y_train, X_test, y_test): 8 + 4 points in 2D, two well-separated classes."""
    X_train = torch.tensor([
        [-1.2, 3.1], [2.3, -1.1], [-0.9, 2.9], [2.7, -1.5],
        [-0.5, 2.6], [1.9, -0.8], [-1.5, 2.2], [3.1, -1.3],
    ])
    y_train = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    X_test = torch.tensor([[-0.8, 2.8], [2.6, -1.6], [-1.1, 2.4], [2.2, -0.9]])
    y_test = torch.tensor([0, 1, 0, 1])
    return X_train, y_train, X_test, y_test


class ToyDataset(Dataset):
    """A Dataset over a features tensor and a labels tensor with the same number of rows."""

    def __init__(self, features, labels):
        if len(features) != len(labels):
            raise ValueError(f"features has {len(features)} rows but labels has {len(labels)}")
        self.features = features
        self.labels = labels

    def __getitem__(self, index):
        return self.features[index], self.labels[index]

    def __len__(self):
        return len(self.labels)


def compute_accuracy(model, dataloader, device="cpu"):
    """Fraction (0.0 to 1.0) of the examples in `dataloader` that `model` classifies correctly."""
    model.eval()
    correct, total = 0, 0
    with torch.no_grad():
        for features, labels in dataloader:
            features, labels = features.to(device), labels.to(device)
            predictions = torch.argmax(model(features), dim=1)
            correct += (predictions == labels).sum().item()
            total += len(labels)
    if total == 0:
        raise ValueError("compute_accuracy got a data loader with no examples")
    return correct / total


# ---- from ch01/how-the-scripts-are-built.ipynb ----

TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


def distributed_env(env=None):
    """(rank, local_rank, world_size, launched_by_torchrun) from torchrun's environment variables."""
    env = os.environ if env is None else env
    present = [k for k in TORCHRUN_VARS if k in env]
    if not present:
        return 0, 0, 1, False
    if len(present) < len(TORCHRUN_VARS):
        missing = [k for k in TORCHRUN_VARS if k not in env]
        raise ValueError(f"found {', '.join(present)} but not {', '.join(missing)} in the environment; "
                         "launch with torchrun, or unset them to run as a single process")
    rank, local_rank, world_size = (int(env[k]) for k in TORCHRUN_VARS)
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is outside 0..{world_size - 1} (WORLD_SIZE={world_size})")
    return rank, local_rank, world_size, True


def exit_without_teardown(code=0):
    """Flush stdout and stderr, then end this process at once with `code`, skipping teardown."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


MAX_NPROC = 64  # a typo such as --nproc-per-node 200 would start 200 processes


class ScriptArgumentParser(argparse.ArgumentParser):
    """argparse's parser; in a process whose RANK is not 0, a bad argument exits with code 2 quietly
    (rank 0 sees the same command line and reports it)."""

    def error(self, message):
        if os.environ.get("RANK", "0") != "0":
            sys.exit(2)
        super().error(message)


def nproc_count(text):
    """argparse type of --nproc-per-node: an int from 1 to MAX_NPROC."""
    value = int(text)
    if not 1 <= value <= MAX_NPROC:
        raise argparse.ArgumentTypeError(f"must lie in [1, {MAX_NPROC}], got {value}")
    return value


def add_nproc_argument(parser, default=1):
    """Add --nproc-per-node: how many processes launch() starts on this machine."""
    parser.add_argument("--nproc-per-node", type=nproc_count, default=default, metavar="N",
                        help="processes to start on this machine, each training on its share of the "
                             "data with DistributedDataParallel (one per GPU with CUDA); ignored "
                             "under torchrun, which starts the processes itself")


def free_port():
    """A TCP port on this machine that is free now (where the processes will meet)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_worker(main, argv, rank, nproc, port, expected, error_pipe):
    """One process started by launch(): torchrun's environment, main(argv), then leave at once."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
                       "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it (a background job)
    try:
        code = main(argv)
        code = code if isinstance(code, int) else 0
    except expected as exc:
        error_pipe.send(str(exc))  # the parent prints one of them
        code = 2
    except KeyboardInterrupt:  # Ctrl+C reaches every process; the parent reports it
        code = 130
    except SystemExit as exc:  # argparse: rank 0 printed the error
        code = exc.code if isinstance(exc.code, int) else 1
    # what multiprocessing does when a process ends (frees its semaphores, e.g. tqdm's lock), then
    # leave without the interpreter teardown
    getattr(multiprocessing.util, "_exit_function", lambda: None)()
    exit_without_teardown(code)


def stop_workers(workers, grace):
    """Wait up to `grace` seconds for the workers to end, then stop those left (SIGTERM, then SIGKILL)."""
    deadline = time.monotonic() + grace
    for w in workers:
        w.join(max(0.0, deadline - time.monotonic()))
    for w in workers:
        if w.is_alive():
            w.terminate()
            w.join(5)
        if w.is_alive():
            w.kill()
            w.join()


def launch(main, argv=None, nproc=1, expected=(ValueError,), skip_teardown=None, grace=10.0):
    """Run main(argv) in `nproc` processes on this machine (as torchrun would start them), then exit:
    0, or 2 with one `error: ...` line for an expected error, or a failing process's code (130 after
    Ctrl+C, which stops them all)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if nproc == 1 or "RANK" in os.environ:  # one process, or torchrun started this one already
        run_script(lambda: main(argv), expected, skip_teardown)
    ctx = multiprocessing.get_context("spawn")
    pipes = [ctx.Pipe(duplex=False) for _ in range(nproc)]  # (read end, write end): a worker's error
    port = free_port()
    workers = [ctx.Process(target=launch_worker, args=(main, argv, rank, nproc, port, expected, pipes[rank][1]))
               for rank in range(nproc)]

    def on_sigterm(signum, frame):  # `kill` of this process: stop the workers as Ctrl+C would
        for w in workers:
            if w.is_alive():
                os.kill(w.pid, signal.SIGINT)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        for w in workers:
            w.start()
        pending = list(workers)
        while pending:  # until all have ended, or one failed and the others had `grace` seconds
            wait([w.sentinel for w in pending])
            pending = [w for w in pending if w.exitcode is None]
            if any(w.exitcode for w in workers if w.exitcode is not None):
                break
        stop_workers(pending, grace)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl+C must not leave workers behind
        stop_workers(workers, grace=5.0)
        print(f"interrupted: stopped all {nproc} processes", file=sys.stderr)
        sys.exit(130)
    reported = [read_end.recv() for read_end, _ in pipes if read_end.poll()]  # in rank order
    if reported:
        print(f"error: {reported[0]}", file=sys.stderr)
        sys.exit(2)
    failed = [w.exitcode for w in workers if w.exitcode]  # negative: stopped by a signal
    exited = [code for code in failed if code > 0]
    sys.exit(exited[0] if exited else 1 if failed else 0)


def run_script(main, expected=(ValueError,), skip_teardown=None):
    """Run a script's main() and exit: with its return value if that is an int, else with 0.

    An exception of the `expected` types becomes one line `error: <message>` on stderr and exit
    code 2. skip_teardown (default: when torchrun started several processes) leaves through
    exit_without_teardown.
    """
    try:
        code = main()
        code = code if isinstance(code, int) else 0
    except expected as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    if skip_teardown is None:
        skip_teardown = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if skip_teardown:
        exit_without_teardown(code)
    sys.exit(code)


def check_finite_loss(loss, where, lr, world_size=1, advice="lower the learning rate"):
    """Raise a ValueError if `loss` is NaN or infinite (on any process when world_size > 1 in a
    process group): 'the training loss became nan <where> (learning rate <lr>); <advice>'."""
    check = loss.detach()
    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        check = check.clone()
        torch.distributed.all_reduce(check)  # the sum: non-finite on every process if on any one
        check /= world_size
    if not torch.isfinite(check):
        mean = f", mean over {world_size} processes" if world_size > 1 else ""
        raise ValueError(f"the training loss became {check.item()} {where} (learning rate {lr:g}{mean}); {advice}")
