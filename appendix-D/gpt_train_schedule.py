"""Pretrain a GPT with appendix D's loop: learning-rate warmup, cosine decay and gradient clipping.

    python appendix-D/gpt_train_schedule.py                       # as chapter 5: constant lr, no clipping
    python appendix-D/gpt_train_schedule.py --model-size tiny --epochs 15 --lr 0.001 \\
        --initial-lr 0.0001 --warmup-ratio 0.2 --min-lr 0.00001 --grad-clip 1.0

The first 90% of the text (the files joined with <|endoftext|>) trains the model, the rest
validates it. --lr is the peak learning rate, given to AdamW itself. --warmup-ratio, --min-lr and
--grad-clip are off by default, which keeps chapter 5's behaviour (the same rate at every step,
no clipping). The output folder receives model.pth (weights, configuration and the recorded
losses, learning rates and gradient norms), history.json, loss.png and lr.png, each written to a
temporary file and renamed into place. The folder is checked before any work: one that already
holds an earlier run's outputs is refused unless --overwrite replaces them. It runs on CUDA,
Apple's MPS or the CPU. A single process; for data-parallel training see ch05/gpt_train.py.
"""
import argparse
import json
import time
from pathlib import Path

import torch

from previous_chapters import (GPT2_SIZES, DownloadError, GPTModel, add_overwrite_argument, add_pretraining_arguments,
                               check_output, check_pretraining_arguments, check_range, check_schedule,
                               create_dataloader_v1, download_file, pick_device, plot_losses, plot_lr_schedule,
                               pretraining_config, read_text, run_script, save_atomic, save_figure, train_model)

MODEL_SIZES = {"tiny": {"emb_dim": 32, "n_layers": 2, "n_heads": 2}, **GPT2_SIZES}
OUTPUT_NAMES = ("model.pth", "history.json", "loss.png", "lr.png")  # what a run leaves in --output-dir


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_pretraining_arguments(p, MODEL_SIZES, output_dir="runs/gpt_train_schedule")
    p.add_argument("--initial-lr", type=float, default=None,
                   help="learning rate at step 0 of the warmup (default: a tenth of --lr)")
    p.add_argument("--warmup-ratio", type=float, default=0.0,
                   help="share of the steps spent warming up from --initial-lr to --lr (0: no warmup)")
    p.add_argument("--min-lr", type=float, default=None,
                   help="cosine decay from --lr down to this at the last step (default: no decay)")
    p.add_argument("--grad-clip", type=float, default=None,
                   help="clip the gradient norm to this from the end of the warmup on (default: no clipping)")
    add_overwrite_argument(p, "--output-dir")
    args = p.parse_args(argv)
    check_pretraining_arguments(p, args, MODEL_SIZES)
    check_range(p, args, ("initial_lr", "min_lr", "grad_clip", "warmup_ratio"))  # finite (or left out)
    if args.initial_lr is None:
        args.initial_lr = args.lr / 10
    if not 0 <= args.initial_lr <= args.lr:
        p.error(f"--initial-lr must lie between 0 and --lr ({args.lr}), got {args.initial_lr}")
    if args.min_lr is None:
        args.min_lr = args.lr  # a "decay" from the peak to the peak: chapter 5's constant rate
    check_range(p, args, ("min_lr",), 0)
    if args.min_lr > args.lr:
        p.error(f"--min-lr {args.min_lr} is above the peak --lr {args.lr}; the decay must go down")
    check_range(p, args, ("warmup_ratio",), 0, 1, high_open=True)
    if args.grad_clip is not None and args.grad_clip <= 0:
        p.error(f"--grad-clip must be positive (leave it out for no clipping), got {args.grad_clip}")
    check_output(p, "--output-dir", args.output_dir, OUTPUT_NAMES, overwrite=args.overwrite)
    return args


def make_loaders(text, args):
    split = int((1 - args.val_ratio) * len(text))
    loaders = []
    for which, part, train in (("training", text[:split], True), ("validation", text[split:], False)):
        try:
            loader = create_dataloader_v1(part, batch_size=args.batch_size, max_length=args.context_length,
                                          stride=args.context_length, shuffle=train, drop_last=train)
        except ValueError as exc:
            raise ValueError(f"the {which} split is too short for --context-length {args.context_length}: {exc}") from None
        if len(loader) == 0:
            raise ValueError(f"the {which} split gives {len(loader.dataset)} windows, fewer than one batch of "
                             f"--batch-size {args.batch_size}; use a longer text or a smaller --batch-size")
        loaders.append(loader)
    return loaders


def warmup_steps_for(args, total_steps):
    """The warmup length of --warmup-ratio, checked against the run before any training."""
    warmup_steps = int(args.warmup_ratio * total_steps)
    try:
        check_schedule(total_steps, warmup_steps, args.initial_lr, args.lr, args.min_lr)
    except ValueError as exc:
        raise ValueError(f"--warmup-ratio {args.warmup_ratio} gives {warmup_steps} warmup steps in a run of "
                         f"{total_steps} steps (--epochs {args.epochs} x {total_steps // args.epochs} batches): {exc}") from None
    return warmup_steps


def save_outputs(args, config, model, history, warmup_steps):
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)  # checked before training (check_output)
    save_atomic(out / "model.pth", lambda tmp: torch.save(
        {"model": model.state_dict(), "config": config, "model_size": args.model_size, **history}, tmp))
    save_atomic(out / "history.json", lambda tmp: Path(tmp).write_text(json.dumps(
        {"settings": vars(args), "warmup_steps": warmup_steps, **history}, indent=1, default=str), encoding="utf-8"))
    epochs = torch.linspace(0, args.epochs, len(history["train_losses"]))
    fig = plot_losses(epochs, history["tokens_seen"], history["train_losses"], history["val_losses"])
    save_figure(fig, out / "loss.png")
    save_figure(plot_lr_schedule(history["lrs"], warmup_steps), out / "lr.png")
    for name in OUTPUT_NAMES:
        print(f"saved {out / name}")


def main(argv=None):
    args = parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")  # files only, no window
    device = pick_device(args.device)
    text = read_text(args.text_files or [download_file("the-verdict.txt")])
    train_loader, val_loader = make_loaders(text, args)
    total_steps = args.epochs * len(train_loader)
    warmup_steps = warmup_steps_for(args, total_steps)
    config = pretraining_config(args, MODEL_SIZES)
    torch.manual_seed(args.seed)
    model = GPTModel(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)  # lr = the peak
    print(f"model {args.model_size}: {sum(p.numel() for p in model.parameters()):,} parameters | device "
          f"{device.type} | {total_steps} steps, warmup {warmup_steps} | lr {args.initial_lr:g} -> {args.lr:g} -> "
          f"{args.min_lr:g} | grad clip {args.grad_clip}")
    import tiktoken
    start = time.time()
    train_losses, val_losses, tokens_seen, lrs, grad_norms = train_model(
        model, train_loader, val_loader, optimizer, device, args.epochs, args.eval_freq, args.eval_iter,
        args.start_context, tiktoken.get_encoding("gpt2"), warmup_steps, initial_lr=args.initial_lr,
        min_lr=args.min_lr, grad_clip=args.grad_clip, progress=not args.no_progress)
    print(f"training took {(time.time() - start) / 60:.2f} min")
    history = {"train_losses": train_losses, "val_losses": val_losses, "tokens_seen": tokens_seen,
               "lrs": lrs, "grad_norms": grad_norms}
    save_outputs(args, config, model, history, warmup_steps)
    return 0


if __name__ == "__main__":
    run_script(main, expected=(ValueError, DownloadError))
