"""Pretrain a GPT model on plain text: chapter 5's training loop as a headless script.

    python ch05/gpt_train.py                                   # the-verdict.txt, 124M, 10 epochs
    python ch05/gpt_train.py --text-files a.txt b.txt --model-size tiny --epochs 2 --output-dir runs/mine
    python ch05/gpt_train.py --resume runs/gpt_train/model_and_optimizer.pth --epochs 15
    python ch05/gpt_train.py --nproc-per-node 2 --model-size tiny --output-dir runs/ddp   # DistributedDataParallel

The first 90% of the text (the files joined with <|endoftext|>) trains the model, the rest
validates it. The output folder receives model_and_optimizer.pth (model, optimizer, configuration
and progress: continue with --resume), loss.png and samples.txt; the output folder is checked
(created, writable) before training, and every output is written to a temporary file and renamed
into place, so an interruption leaves the previous ones intact. A folder that already holds a
run's outputs is refused before any work unless --resume continues from the checkpoint in it
(samples.txt then keeps the earlier samples) or --overwrite replaces them. A non-finite training
loss stops the run with an error (nothing is saved, the previous checkpoint stays); with several
processes, a non-finite loss on any one of them stops them all with the same error. --resume keeps
the checkpoint's learning rate and weight decay unless --lr or --weight-decay is given (it says
which). It runs on CUDA, Apple's MPS or the CPU. Ctrl+C stops a single-process run early and
still saves (with several processes it stops them all). With --nproc-per-node N the script starts N
processes itself (the arguments are checked once, before); each trains on its own share of the
batches (a distributed sampler) with DistributedDataParallel (nccl on CUDA, gloo on the CPU);
only the first process prints, plots and saves. torchrun works too (torchrun --nproc_per_node=2
ch05/gpt_train.py ...; --nproc-per-node is then ignored).
"""
import argparse
import sys
import time
from pathlib import Path

import tiktoken
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from previous_chapters import (GPT2_SIZES, DownloadError, FastGPTModel, GPTDatasetV1, GPTModel,
                               ScriptArgumentParser, add_fast_path_arguments, add_nproc_argument,
                               add_overwrite_argument, add_pretraining_arguments, check_fast_path_arguments,
                               check_output, check_pretraining_arguments, distributed_env, download_file,
                               evaluate_model, generate_sample, launch, load_chapter_weights, load_weights,
                               maybe_compile, pick_device, plot_losses, pretraining_config, read_checkpoint,
                               read_text, report_bf16, save_atomic, save_figure, train_model_simple, training_view)

MODEL_SIZES = {"tiny": {"emb_dim": 32, "n_layers": 2, "n_heads": 2}, **GPT2_SIZES}
ARCHITECTURE_KEYS = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "qkv_bias")
CHECKPOINT_NAME = "model_and_optimizer.pth"
OUTPUT_NAMES = (CHECKPOINT_NAME, "loss.png", "samples.txt")  # what a run leaves in --output-dir


def parse_args(argv=None):
    p = ScriptArgumentParser(description=__doc__.splitlines()[0], conflict_handler="resolve",
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_pretraining_arguments(p, MODEL_SIZES, output_dir="runs/gpt_train")
    # --lr and --weight-decay again (replacing the shared ones): left out, --resume keeps the checkpoint's
    new_run = {"lr": p.get_default("lr"), "weight_decay": p.get_default("weight_decay")}
    p.add_argument("--lr", type=float, default=None,
                   help=f"AdamW's learning rate; None (left out): {new_run['lr']:g} for a new run, with "
                        f"--resume the checkpoint's")
    p.add_argument("--weight-decay", type=float, default=None,
                   help=f"AdamW's weight decay; None (left out): {new_run['weight_decay']:g} for a new run, "
                        f"with --resume the checkpoint's")
    p.add_argument("--resume", type=Path, default=None,
                   help="checkpoint to continue from; when it lies in --output-dir, that folder's "
                        "earlier outputs are continued (samples.txt keeps the earlier samples)")
    add_overwrite_argument(p, "--output-dir")
    add_fast_path_arguments(p)
    add_nproc_argument(p, default=1)
    args = p.parse_args(argv)
    check_pretraining_arguments(p, args, MODEL_SIZES)
    if args.resume is None:  # a new run: the shared defaults for what was left out
        for name, value in new_run.items():
            if getattr(args, name) is None:
                setattr(args, name, value)
    check_fast_path_arguments(p, args)
    if not args.start_context.strip():
        p.error(f"--start-context must contain some text (it is the samples' prompt), got {args.start_context!r}")
    check_output(p, "--output-dir", args.output_dir, OUTPUT_NAMES,
                 overwrite=args.overwrite or resumes_into_output_dir(args),
                 resume=args.output_dir / CHECKPOINT_NAME)
    return args


def resumes_into_output_dir(args):
    """True if --resume names a checkpoint inside --output-dir (this run continues that folder's run)."""
    return args.resume is not None and args.resume.resolve().parent == args.output_dir.resolve()


def apply_optimizer_settings(optimizer, lr, weight_decay):
    """Set the given lr and weight decay (None: keep the loaded one) in a loaded optimizer;
    ['name old -> new', ...] for those changed."""
    changes = []
    for name, value in (("lr", lr), ("weight_decay", weight_decay)):
        if value is None:
            continue
        old = optimizer.param_groups[0][name]
        if old != value:
            changes.append(f"{name} {old:g} -> {value:g}")
        for group in optimizer.param_groups:
            group[name] = value
    return changes


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
    return tokenizer, train_loader, val_loader


CHECKPOINT_KEYS = ("model", "optimizer", "config", "epoch", "global_step", "tokens_seen", "train_losses",
                   "val_losses", "track_tokens_seen")


def check_configuration(ckpt, path, config, tie_weights=False):
    """ValueError "another configuration" naming what differs if the checkpoint's model is not this run's."""
    saved = ckpt["config"] if isinstance(ckpt["config"], dict) else {}
    diff = [f"{k} {saved.get(k)!r} vs {config[k]!r}" for k in ARCHITECTURE_KEYS if saved.get(k) != config[k]]
    if ckpt.get("tie_weights", False) != tie_weights:
        diff.append(f"tie_weights {ckpt.get('tie_weights', False)} vs {tie_weights}")
    if diff:
        raise ValueError(f"--resume checkpoint {Path(path).name} was trained with another configuration "
                         f"(checkpoint vs this run: {'; '.join(diff)}); pass the same --model-size and "
                         f"--context-length (and --tie-weights), or start a new run")


def load_checkpoint(ckpt, path, model, optimizer):
    """Load a checkpoint read by read_checkpoint (its configuration checked) into model and optimizer."""
    load_weights(model, ckpt["model"], "--resume", path,  # GPTModel or FastGPTModel: the same names
                 load=lambda state_dict: load_chapter_weights(model, state_dict))
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except (KeyError, TypeError, ValueError) as exc:  # a hand-made or damaged optimizer entry
        raise ValueError(f"--resume {path}: its optimizer state does not fit this run's AdamW optimizer "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})") from None
    return ckpt


def ddp_evaluate(raw_model, world_size):
    """Chapter 5's loss estimate on the unwrapped model, averaged over all processes."""
    def estimate(model, train_loader, val_loader, device, eval_iter):
        losses = torch.tensor(evaluate_model(raw_model, train_loader, val_loader, device, eval_iter), device=device)
        if world_size > 1:
            dist.all_reduce(losses)
            losses /= world_size
        return losses[0].item(), losses[1].item()
    return estimate


def main(argv=None):
    args = parse_args(argv)
    rank, local_rank, world_size, _ = distributed_env()
    device = pick_device(args.device, local_rank)
    if world_size > 1:
        if device.type == "mps":
            raise ValueError("DistributedDataParallel does not support MPS; use --device cpu")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    main_process = rank == 0
    log = print if main_process else (lambda *a, **k: None)
    try:
        ckpt = None if args.resume is None else read_checkpoint(  # before any work
            args.resume, "--resume", CHECKPOINT_KEYS, device, expected=f"the {CHECKPOINT_NAME} this script "
            f"saves (model, optimizer, configuration and progress)")
        config = pretraining_config(args, MODEL_SIZES)
        if ckpt is not None:
            check_configuration(ckpt, args.resume, config, args.tie_weights)  # before any work too
        text = read_text(args.text_files or [download_file("the-verdict.txt")])
        tokenizer, train_loader, val_loader = make_loaders(text, args, world_size, rank)
        torch.manual_seed(args.seed)
        model = (FastGPTModel(config, tie_weights=args.tie_weights) if args.fast else GPTModel(config)).to(device)
        given = {k: v for k, v in (("lr", args.lr), ("weight_decay", args.weight_decay)) if v is not None}
        optimizer = torch.optim.AdamW(model.parameters(), **given,  # --resume: the rest from the checkpoint
                                      fused=device.type in ("cpu", "cuda"))  # one kernel: much faster
        state = {"epoch": 0}  # train_model_simple adds the rest of the progress
        if args.resume is not None:
            load_checkpoint(ckpt, args.resume, model, optimizer)
            state = {k: ckpt[k] for k in ("epoch", "global_step", "tokens_seen",
                                          "train_losses", "val_losses", "track_tokens_seen")}
            log(f"resumed from {args.resume.name} after epoch {state['epoch']}")
            for change in apply_optimizer_settings(optimizer, args.lr, args.weight_decay):
                log(f"--resume: optimizer {change} (this run's setting replaces the checkpoint's)")
            kept = [f"{name} {optimizer.param_groups[0][name]:g}" for name in ("lr", "weight_decay")
                    if getattr(args, name) is None]
            if kept:
                log(f"--resume: optimizer {', '.join(kept)} kept from the checkpoint (change with "
                    f"--lr / --weight-decay)")
        if state["epoch"] >= args.epochs:
            log(f"the checkpoint has already trained {state['epoch']} epochs; raise --epochs to continue")
            return 0
        raw_model = model
        report_bf16(args, device, log)
        model = training_view(raw_model, device, bf16=args.bf16)  # the model itself unless --bf16
        if world_size > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index or 0] if device.type == "cuda" else None)
        model = maybe_compile(model, enabled=args.compile)
        log(f"model {args.model_size}: {sum(p.numel() for p in raw_model.parameters()):,} parameters | "
            f"device {device.type} | processes {world_size} | training batches per process {len(train_loader)}")
        samples, start = [], time.time()

        def record_sample(epochs_done):
            if main_process:
                samples.append(f"epoch {epochs_done}: "
                               f"{generate_sample(raw_model, tokenizer, device, args.start_context)}")
                log(samples[-1])

        try:
            train_model_simple(model, train_loader, val_loader, optimizer, device, args.epochs, args.eval_freq,
                               args.eval_iter, args.start_context, tokenizer, state=state,
                               evaluate=ddp_evaluate(raw_model, world_size), on_epoch_end=record_sample,
                               world_size=world_size, log=log, progress=main_process and not args.no_progress)
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


def save_outputs(args, config, model, optimizer, state, samples, world_size):
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    path = out / CHECKPOINT_NAME
    checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "config": config,
                  "model_size": args.model_size, "world_size": world_size,
                  "tie_weights": args.tie_weights, **state}
    save_atomic(path, lambda tmp: torch.save(checkpoint, tmp))  # an interruption keeps the old file
    print(f"saved checkpoint: {path}")
    if state["train_losses"]:
        import matplotlib
        matplotlib.use("Agg")  # files only, no window
        epochs = torch.linspace(0, state["epoch"], len(state["train_losses"]))
        fig = plot_losses(epochs, state["track_tokens_seen"], state["train_losses"], state["val_losses"])
        save_figure(fig, out / "loss.png")
        print(f"saved loss plot: {out / 'loss.png'}")
    samples_path = out / "samples.txt"
    earlier = ""
    if resumes_into_output_dir(args) and samples_path.is_file():  # continuing this folder's run
        earlier = samples_path.read_text(encoding="utf-8", errors="replace")
    text = earlier + "".join(s + "\n" for s in samples)
    save_atomic(samples_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    print(f"saved samples: {samples_path}")


if __name__ == "__main__":
    args = parse_args()  # bad arguments stop here, once, before any process starts
    # --nproc-per-node > 1: launch starts the processes; each (like each torchrun process) leaves
    # without the interpreter teardown, during which gloo's threads can abort it (ch01/how-the-scripts-are-built.ipynb)
    launch(main, sys.argv[1:], args.nproc_per_node, expected=(ValueError, DownloadError))
