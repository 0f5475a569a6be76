"""Train appendix A's toy network with DistributedDataParallel (DDP), one process per device.

It starts its processes itself (two by default, as the book's example; --nproc-per-node N):

    python appendix-A/DDP-script.py
    python appendix-A/DDP-script.py --nproc-per-node 1     # one process (world size 1)

The arguments are checked once, before any process starts; each process gets the environment
torchrun would give it (rank, world size, where to meet), so torchrun works too and runs the same
code (--nproc-per-node is then ignored):

    torchrun --nproc_per_node=2 appendix-A/DDP-script.py

An error in the processes ends as one `error:` line and exit code 2 (under torchrun, torchrun
adds its own report of the failed processes). With CUDA GPUs each process drives one GPU and the processes talk through the "nccl"
backend; without GPUs (or with --device cpu) they run on the CPU and use "gloo". Every rank
prints its training loss each epoch; rank 0 prints the final train and test accuracy. A
non-finite training loss on any process stops every process with the same error.

The network, the toy data and the accuracy helper come from appendix-A.ipynb through the
generated previous_chapters.py.
"""
import math
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from previous_chapters import (NeuralNetwork, ScriptArgumentParser, ToyDataset, add_nproc_argument,
                               check_finite_loss, compute_accuracy, distributed_env, launch, make_toy_data,
                               pick_device)


def parse_args(argv=None):
    parser = ScriptArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="passes over the training data (default 3)")
    parser.add_argument("--lr", type=float, default=0.5, help="SGD learning rate (default 0.5)")
    parser.add_argument("--batch-size", type=int, default=2, help="examples per batch and process (default 2)")
    parser.add_argument("--seed", type=int, default=123, help="random seed, the same on every rank (default 123)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: one CUDA GPU per process if CUDA is available, else the CPU")
    add_nproc_argument(parser, default=2)
    args = parser.parse_args(argv)
    try:  # the world size is torchrun's when it started this process, else --nproc-per-node
        _, _, world_size, by_torchrun = distributed_env()
        validate(args, world_size if by_torchrun else args.nproc_per_node, num_train=len(make_toy_data()[0]))
    except ValueError as exc:
        parser.error(str(exc))
    return args


def validate(args, world_size, num_train):
    """Raise ValueError, naming the numbers, if the arguments cannot train anything."""
    if args.epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {args.epochs}")
    if not args.lr > 0:
        raise ValueError(f"--lr must be positive, got {args.lr}")
    if not args.lr <= torch.finfo(torch.float32).max:  # inf, or a step SGD cannot apply to float32 weights
        raise ValueError(f"--lr must be finite and at most {torch.finfo(torch.float32).max:.3g}, got {args.lr}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    per_rank = math.ceil(num_train / world_size)
    if args.batch_size > per_rank:
        raise ValueError(
            f"--batch-size {args.batch_size} is larger than the {per_rank} training examples per process "
            f"({num_train} examples over {world_size} process(es)); with drop_last no batch would remain")


def choose_device(requested, local_rank, local_world_size):
    """The device of this process and the matching backend: (torch.device, "nccl" or "gloo")."""
    device = pick_device(requested, local_rank)
    if device.type != "cuda":  # DDP has no MPS backend: Apple GPUs train on the CPU here
        return torch.device("cpu"), "gloo"
    num_gpus = torch.cuda.device_count()
    if local_world_size > num_gpus:
        raise ValueError(f"{local_world_size} processes on this machine but only {num_gpus} CUDA GPU(s); "
                         f"use --nproc-per-node {num_gpus} or --device cpu")
    return torch.device("cuda", device.index or 0), "nccl"


def log(rank, message):
    # one write per line, so lines of ranks printing at the same time do not interleave
    sys.stdout.write(f"[rank {rank}] {message}\n")
    sys.stdout.flush()


def checksum(model):
    """The sum of all parameters: equal on every rank if the model copies are in sync."""
    return sum(p.detach().double().sum().item() for p in model.parameters())


def train(args, rank, world_size, device):
    """Train with DDP in this process; return a dict of what it measured."""
    X_train, y_train, X_test, y_test = make_toy_data()
    train_ds, test_ds = ToyDataset(X_train, y_train), ToyDataset(X_test, y_test)

    # Each rank gets its own shard of every epoch's shuffled indices.
    sampler = DistributedSampler(train_ds, num_replicas=world_size, rank=rank, shuffle=True, seed=args.seed)
    loader = DataLoader(train_ds, batch_size=args.batch_size, sampler=sampler, drop_last=True,
                        pin_memory=device.type == "cuda")

    torch.manual_seed(args.seed)  # DDP also copies rank 0's initial weights to every rank
    model = NeuralNetwork(num_inputs=2, num_outputs=2).to(device)
    ddp_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD(ddp_model.parameters(), lr=args.lr)

    losses = []
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)  # a different shuffle (and so different shards) each epoch
        ddp_model.train()
        total, batches = 0.0, 0
        for features, labels in loader:
            features, labels = features.to(device), labels.to(device)
            loss = F.cross_entropy(ddp_model(features), labels)
            # every rank stops together instead of training on NaN (ch01/how-the-scripts-are-built.ipynb)
            check_finite_loss(loss, f"in epoch {epoch + 1}, batch {batches + 1}", args.lr, world_size, "lower --lr")
            optimizer.zero_grad()
            loss.backward()  # DDP averages the gradients over all ranks here
            optimizer.step()
            total += loss.item()
            batches += 1
        losses.append(total / batches)
        log(rank, f"epoch {epoch + 1}/{args.epochs} | examples {sorted(sampler)} | "
                  f"batches {batches} | train loss {losses[-1]:.4f}")

    result = {"rank": rank, "world_size": world_size, "losses": losses, "checksum": checksum(model)}
    log(rank, f"weights checksum {result['checksum']:.4f}")
    dist.barrier()
    if rank == 0:  # the weights are the same everywhere, so one rank evaluates
        result["train_accuracy"] = compute_accuracy(model, DataLoader(train_ds, batch_size=4), device)
        result["test_accuracy"] = compute_accuracy(model, DataLoader(test_ds, batch_size=4), device)
        log(rank, f"train accuracy {result['train_accuracy']:.4f} | test accuracy {result['test_accuracy']:.4f}")
    dist.barrier()  # leave together: a rank tearing down gloo while its peer still works can abort
    return result


def main(argv=None):
    args = parse_args(argv)  # checks the arguments (validate) for this world size
    rank, local_rank, world_size, by_torchrun = distributed_env()
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    device, backend = choose_device(args.device, local_rank, local_world_size)
    if device.type == "cuda":
        torch.cuda.set_device(device)

    if by_torchrun:
        # torchrun (or launch) set MASTER_ADDR and MASTER_PORT, where the processes meet
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    else:
        print("note: --nproc-per-node 1, so this runs as a single process (world size 1). "
              "For two processes: python appendix-A/DDP-script.py --nproc-per-node 2", flush=True)
        dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
    try:
        log(rank, f"world size {world_size} | backend {backend} | device {device}")
        return train(args, rank, world_size, device)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    args = parse_args()  # bad arguments stop here, once, before any process starts
    # each process leaves without the interpreter teardown: gloo's threads can abort it (ch01/how-the-scripts-are-built.ipynb)
    launch(main, sys.argv[1:], args.nproc_per_node, skip_teardown=True)
