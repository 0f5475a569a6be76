"""Pretrain a GPT model on plain text: chapter 5's training loop as a headless script.

    python ch05/gpt_train.py                                   # the-verdict.txt, 124M, 10 epochs
    python ch05/gpt_train.py --text-files a.txt b.txt --model-size tiny --epochs 2
    python ch05/gpt_train.py --resume runs/gpt_train/model_and_optimizer.pth --epochs 15
    torchrun --nproc_per_node=2 ch05/gpt_train.py --model-size tiny   # DistributedDataParallel

The first 90% of the text (the files joined with <|endoftext|>) trains the model, the rest
validates it. The output folder receives model_and_optimizer.pth (model, optimizer, configuration
and progress: continue with --resume), loss.png and samples.txt. It runs on CUDA, Apple's MPS or
the CPU. Ctrl+C stops a single-process run early and still saves. Under torchrun every process
trains on its own share of the batches (a distributed sampler) with DistributedDataParallel (nccl
on CUDA, gloo on the CPU); only the first process prints, plots and saves.
"""
import argparse
import os
import sys
import time
from pathlib import Path

import tiktoken
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from previous_chapters import (GPT2_SIZES, DownloadError, GPTDatasetV1, GPTModel, calc_loss_batch,
                               calc_loss_loader, download_file, generate_text_simple, plot_losses,
                               text_to_token_ids, token_ids_to_text, pick_device)

MODEL_SIZES = {"tiny": {"emb_dim": 32, "n_layers": 2, "n_heads": 2}, **GPT2_SIZES}
ARCHITECTURE_KEYS = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "qkv_bias")
CHECKPOINT_NAME = "model_and_optimizer.pth"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--text-files", nargs="+", type=Path, default=None,
                   help="plain-text training files (default: the-verdict.txt via the download helper)")
    p.add_argument("--model-size", default="124M",
                   help=f"model configuration, one of: {', '.join(MODEL_SIZES)}")
    p.add_argument("--context-length", type=int, default=256, help="tokens per training window")
    p.add_argument("--epochs", type=int, default=10, help="total epochs (a resumed run continues up to this)")
    p.add_argument("--batch-size", type=int, default=2, help="windows per batch and process")
    p.add_argument("--lr", type=float, default=4e-4, help="AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--drop-rate", type=float, default=0.1)
    p.add_argument("--val-ratio", type=float, default=0.1, help="share of the text kept for validation")
    p.add_argument("--eval-freq", type=int, default=5, help="evaluate every this many steps")
    p.add_argument("--eval-iter", type=int, default=5, help="batches per loss estimate")
    p.add_argument("--start-context", default="Every effort moves you", help="prompt of the samples")
    p.add_argument("--output-dir", type=Path, default=Path("runs/gpt_train"))
    p.add_argument("--resume", type=Path, default=None, help="checkpoint to continue from")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bars")
    args = p.parse_args(argv)
    if args.model_size not in MODEL_SIZES:
        p.error(f"unknown --model-size {args.model_size!r}; valid sizes: {', '.join(MODEL_SIZES)}")
    for name in ("context_length", "epochs", "batch_size", "eval_freq", "eval_iter"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.lr <= 0:
        p.error(f"--lr must be positive, got {args.lr}")
    if not 0 < args.val_ratio < 1:
        p.error(f"--val-ratio must lie between 0 and 1, got {args.val_ratio}")
    if not 0 <= args.drop_rate < 1:
        p.error(f"--drop-rate must lie in [0, 1), got {args.drop_rate}")
    return args


def model_config(args):
    return {"vocab_size": 50257, "context_length": args.context_length, **MODEL_SIZES[args.model_size],
            "drop_rate": args.drop_rate, "qkv_bias": False}


def resolve_device(name, local_rank):
    """The torch.device for --device NAME in the process with this local rank."""
    if name == "auto":
        name = pick_device().type
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was requested, but CUDA is not available")
        return torch.device("cuda", local_rank)
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps was requested, but MPS is not available")
    return torch.device(name)


def read_text(paths):
    if paths is None:
        paths = [download_file("the-verdict.txt")]
    texts = []
    for path in paths:
        if not Path(path).is_file():
            raise ValueError(f"text file not found: {path}")
        texts.append(Path(path).read_text(encoding="utf-8"))
    return " <|endoftext|> ".join(texts)


def make_dataset(text, tokenizer, context_length, which):
    n_tokens = len(tokenizer.encode(text, allowed_special={"<|endoftext|>"}))
    if n_tokens < context_length + 1:
        raise ValueError(f"the {which} split has {n_tokens} tokens, but one window needs "
                         f"--context-length + 1 = {context_length + 1}; use a longer text or a "
                         f"smaller --context-length")
    return GPTDatasetV1(text, tokenizer, context_length, context_length)


def make_loaders(text, args, world_size, rank):
    tokenizer = tiktoken.get_encoding("gpt2")
    split = int((1 - args.val_ratio) * len(text))
    train_ds = make_dataset(text[:split], tokenizer, args.context_length, "training")
    per_process = len(train_ds) // world_size
    if per_process < args.batch_size:
        raise ValueError(f"the training split gives {len(train_ds)} windows of {args.context_length + 1} "
                         f"tokens, fewer than one batch of {args.batch_size} per process x {world_size} "
                         f"process(es); use a longer text or a smaller --batch-size or --context-length")
    val_ds = make_dataset(text[split:], tokenizer, args.context_length, "validation")
    sampler = DistributedSampler(train_ds, world_size, rank, shuffle=True, seed=args.seed,
                                 drop_last=True) if world_size > 1 else None
    train_loader = DataLoader(train_ds, batch_size=args.batch_size, shuffle=sampler is None,
                              sampler=sampler, drop_last=True)
    val_loader = DataLoader(val_ds, batch_size=args.batch_size, shuffle=False, drop_last=False)
    return tokenizer, train_loader, val_loader, sampler


def load_checkpoint(path, config, model, optimizer, device):
    if not Path(path).is_file():
        raise ValueError(f"--resume checkpoint not found: {path}")
    ckpt = torch.load(path, map_location=device, weights_only=True)
    saved = ckpt.get("config", {})
    diff = [f"{k} {saved.get(k)!r} vs {config[k]!r}" for k in ARCHITECTURE_KEYS if saved.get(k) != config[k]]
    if diff:
        raise ValueError(f"--resume checkpoint {Path(path).name} was trained with another configuration "
                         f"(checkpoint vs this run: {'; '.join(diff)}); pass the same --model-size and "
                         f"--context-length, or start a new run")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    return ckpt


def evaluate(model, train_loader, val_loader, device, eval_iter, world_size):
    """Mean (train, val) loss over eval_iter batches, averaged over all processes."""
    model.eval()
    with torch.no_grad():
        losses = torch.tensor([calc_loss_loader(train_loader, model, device, eval_iter),
                               calc_loss_loader(val_loader, model, device, eval_iter)], device=device)
    model.train()
    if world_size > 1:
        dist.all_reduce(losses)
        losses /= world_size
    return losses[0].item(), losses[1].item()


def sample(model, tokenizer, device, start_context):
    model.eval()
    idx = text_to_token_ids(start_context, tokenizer).to(device)
    with torch.no_grad():
        out = generate_text_simple(model, idx, 50, model.pos_emb.weight.shape[0])
    model.train()
    return token_ids_to_text(out.cpu(), tokenizer).replace("\n", " ")


def main(argv=None):
    args = parse_args(argv)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(args.device, local_rank)
    if world_size > 1:
        if device.type == "mps":
            raise ValueError("DistributedDataParallel does not support MPS; use --device cpu")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    main_process = rank == 0
    log = print if main_process else (lambda *a, **k: None)
    try:
        text = read_text(args.text_files)
        tokenizer, train_loader, val_loader, sampler = make_loaders(text, args, world_size, rank)
        config = model_config(args)
        torch.manual_seed(args.seed)
        model = GPTModel(config).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                                      fused=device.type in ("cpu", "cuda"))  # one kernel: much faster
        state = {"epoch": 0, "global_step": -1, "tokens_seen": 0,
                 "train_losses": [], "val_losses": [], "track_tokens_seen": []}
        if args.resume is not None:
            ckpt = load_checkpoint(args.resume, config, model, optimizer, device)
            state = {k: ckpt[k] for k in state}
            log(f"resumed from {args.resume.name} after epoch {state['epoch']}")
        if state["epoch"] >= args.epochs:
            log(f"the checkpoint has already trained {state['epoch']} epochs; raise --epochs to continue")
            return 0
        raw_model = model
        if world_size > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[local_rank] if device.type == "cuda" else None)
        log(f"model {args.model_size}: {sum(p.numel() for p in raw_model.parameters()):,} parameters | "
            f"device {device.type} | processes {world_size} | training batches per process {len(train_loader)}")
        samples, start = [], time.time()
        try:
            train_epochs(args, model, raw_model, optimizer, train_loader, val_loader, sampler, tokenizer,
                         device, state, samples, world_size, main_process, log)
        except KeyboardInterrupt:
            if world_size > 1:
                raise
            log(f"interrupted: saving the weights; --resume repeats epoch {state['epoch'] + 1}")
        log(f"training took {(time.time() - start) / 60:.2f} min")
        if main_process:
            save_outputs(args, config, raw_model, optimizer, state, samples, world_size)
    finally:
        if world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()
    return 0


def train_epochs(args, model, raw_model, optimizer, train_loader, val_loader, sampler, tokenizer,
                 device, state, samples, world_size, main_process, log):
    """The training loop; updates `state` (progress and losses) and `samples` in place."""
    for epoch in range(state["epoch"], args.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        for input_batch, target_batch in tqdm(train_loader, desc=f"epoch {epoch + 1}/{args.epochs}",
                                              disable=args.no_progress or not main_process):
            optimizer.zero_grad()
            loss = calc_loss_batch(input_batch, target_batch, model, device)
            loss.backward()
            optimizer.step()
            state["tokens_seen"] += input_batch.numel() * world_size
            state["global_step"] += 1
            if state["global_step"] % args.eval_freq == 0:
                train_loss, val_loss = evaluate(raw_model, train_loader, val_loader, device,
                                                args.eval_iter, world_size)
                state["train_losses"].append(train_loss)
                state["val_losses"].append(val_loss)
                state["track_tokens_seen"].append(state["tokens_seen"])
                log(f"Ep {epoch + 1} (step {state['global_step']:06d}): "
                    f"train loss {train_loss:.3f}, val loss {val_loss:.3f}")
        state["epoch"] = epoch + 1
        if main_process:
            samples.append(f"epoch {epoch + 1}: {sample(raw_model, tokenizer, device, args.start_context)}")
            log(samples[-1])


def save_outputs(args, config, model, optimizer, state, samples, world_size):
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    path = out / CHECKPOINT_NAME
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "config": config,
                "model_size": args.model_size, "world_size": world_size, **state}, path)
    print(f"saved checkpoint: {path}")
    if state["train_losses"]:
        import matplotlib
        matplotlib.use("Agg")  # files only, no window
        epochs = torch.linspace(0, state["epoch"], len(state["train_losses"]))
        fig = plot_losses(epochs, state["track_tokens_seen"], state["train_losses"], state["val_losses"])
        fig.savefig(out / "loss.png", dpi=120)
        print(f"saved loss plot: {out / 'loss.png'}")
    with open(out / "samples.txt", "a", encoding="utf-8") as f:
        f.writelines(s + "\n" for s in samples)
    print(f"saved samples: {out / 'samples.txt'}")


if __name__ == "__main__":
    try:
        code = main()
    except (ValueError, DownloadError) as exc:
        sys.exit(f"error: {exc}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Under torchrun, skip the interpreter teardown, during which gloo's threads can abort
        # a process that finished its work (see appendix-A/DDP-script.py's leave()).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
