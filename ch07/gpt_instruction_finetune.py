"""Instruction fine-tuning of GPT-2 (chapter 7, sections 7.2-7.7) as a headless script.

    python ch07/gpt_instruction_finetune.py                        # the book: 355M, 2 epochs, 110 answers
    python ch07/gpt_instruction_finetune.py --mask-instructions --output-dir runs/masked
    python ch07/gpt_instruction_finetune.py --model-size tiny --max-examples 64 --max-test 4 \\
        --max-new-tokens 8 --epochs 1                              # a few seconds: a smoke test

The data are instruction-data.json (via the download helper, or --data-file): the first 85% of
the entries train, the next 10% test and the last 5% validate. The pretrained GPT-2 weights come
through chapter 5's loader (with LLMS_STANDIN_WEIGHTS=1, the labelled stand-in when they cannot
be downloaded); --model-size tiny is a small randomly initialised GPT instead, for quick tests.

The output folder receives model.pth (weights and configuration; chat.py and evaluate.py read
it), test-responses.json (the test entries with the model's answers under "model_response"),
loss.png and metrics.json (losses, and the per-token negative log-likelihood of the reference
answers of the answered test entries before and after fine-tuning), each written to a temporary
file and renamed into place. Without --output-dir each run gets a fresh folder
runs/instruction-finetune/run-NNN; an --output-dir that already holds any of these outputs is
refused before any work unless --overwrite replaces them (a file, or a place that cannot be
written, is refused too).
"""
import argparse
import math
import time
from functools import partial
from pathlib import Path

import tiktoken
import torch
from torch.utils.data import DataLoader

from previous_chapters import (GPT2_SIZES, DownloadError, GPTModel, InstructionDataset, add_fast_path_arguments,
                               add_overwrite_argument, check_fast_path_arguments, check_output, check_range,
                               download_file, fast_from_chapter, format_input, fresh_run_dir,
                               generate_and_print_sample, generate_test_responses, instruction_collate,
                               load_instruction_data, load_pretrained_gpt2, pick_device, plot_losses, report_bf16,
                               response_nll, run_script, save_figure, save_finetuned, save_json, split_data,
                               train_model_simple, training_view)

TINY = {"vocab_size": 50257, "context_length": 256, "emb_dim": 32, "n_heads": 2, "n_layers": 2, "qkv_bias": True}
MODEL_SIZES = ["tiny", *GPT2_SIZES]
RUNS_DIR = Path("runs") / "instruction-finetune"
OUTPUT_FILES = ("model.pth", "test-responses.json", "loss.png", "metrics.json")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-file", type=Path, default=None,
                   help="a JSON list of {instruction, input, output} entries (default: instruction-data.json)")
    p.add_argument("--model-size", default="355M", help=f"one of: {', '.join(MODEL_SIZES)} (default: 355M)")
    p.add_argument("--models-dir", type=Path, default=None, help="where GPT-2's files are (default: the cache)")
    p.add_argument("--epochs", type=int, default=2, help="default: 2")
    p.add_argument("--batch-size", type=int, default=8, help="default: 8")
    p.add_argument("--lr", type=float, default=5e-5, help="AdamW learning rate (default: 5e-5)")
    p.add_argument("--weight-decay", type=float, default=0.1, help="default: 0.1")
    p.add_argument("--drop-rate", type=float, default=0.0, help="dropout while fine-tuning (default: 0.0)")
    p.add_argument("--mask-instructions", action="store_true",
                   help="count only the response tokens in the loss (mask the instruction and input)")
    p.add_argument("--eval-freq", type=int, default=5, help="evaluate every this many steps (default: 5)")
    p.add_argument("--eval-iter", type=int, default=5, help="batches per loss estimate (default: 5)")
    p.add_argument("--max-examples", type=int, default=None,
                   help="train on only the first N training entries (default: all)")
    p.add_argument("--max-test", type=int, default=None, help="answer only the first N test entries (default: all)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest answer in tokens (default: 256)")
    p.add_argument("--output-dir", type=Path, default=None,
                   help=f"folder for {', '.join(OUTPUT_FILES)} (default: a fresh {RUNS_DIR}/run-NNN)")
    add_overwrite_argument(p, "--output-dir")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="default: auto")
    p.add_argument("--seed", type=int, default=123, help="default: 123")
    p.add_argument("--no-progress", action="store_true", help="no progress bar while answering")
    add_fast_path_arguments(p)
    args = p.parse_args(argv)
    check_fast_path_arguments(p, args)
    if args.model_size not in MODEL_SIZES:
        p.error(f"unknown --model-size {args.model_size!r}; valid sizes: {', '.join(MODEL_SIZES)}")
    check_range(p, args, ("epochs", "batch_size", "eval_freq", "eval_iter", "max_new_tokens", "max_examples",
                          "max_test"), 1)
    if not (math.isfinite(args.lr) and args.lr > 0):
        p.error(f"--lr must be a positive number, got {args.lr}")
    check_range(p, args, ("weight_decay",), 0)
    check_range(p, args, ("drop_rate",), 0, 1, high_open=True)
    if args.data_file is not None and not args.data_file.is_file():
        p.error(f"--data-file not found: {args.data_file}")
    if args.output_dir is None:
        args.output_dir = fresh_run_dir(RUNS_DIR)
    check_output(p, "--output-dir", args.output_dir, OUTPUT_FILES, overwrite=args.overwrite)
    return args


def load_model(args):
    """(model, config, is_standin) for --model-size, with --drop-rate."""
    if args.model_size == "tiny":
        config = dict(TINY, drop_rate=args.drop_rate)
        torch.manual_seed(args.seed)
        return GPTModel(config), config, False
    return load_pretrained_gpt2(args.model_size, args.models_dir, drop_rate=args.drop_rate)


def save_loss_plot(path, epochs, train_losses, val_losses, tokens_seen):
    import matplotlib

    matplotlib.use("Agg")  # files only, no window

    fig = plot_losses(torch.linspace(0, epochs, len(train_losses)), tokens_seen, train_losses, val_losses)
    return save_figure(fig, path)


def main(argv=None):
    args = parse_args(argv)
    device = pick_device(args.device)
    data = load_instruction_data(args.data_file or download_file("instruction-data.json"))
    train_data, val_data, test_data = split_data(data)
    train_data = train_data[:args.max_examples] if args.max_examples else train_data
    test_data = test_data[:args.max_test] if args.max_test else test_data
    if len(train_data) < args.batch_size or not val_data or not test_data:
        raise ValueError(f"too little data: {len(train_data)} training entries (one batch needs "
                         f"--batch-size {args.batch_size}), {len(val_data)} validation and {len(test_data)} "
                         "test entries; use a larger data file or a smaller --batch-size")
    out = args.output_dir  # checked in parse_args; save_json and save_finetuned create it

    model, config, is_standin = load_model(args)
    if args.fast:  # GPT-2's head equals its embedding, so --tie-weights keeps the results
        model = fast_from_chapter(model, config, tie_weights=args.tie_weights)
    model.to(device)
    tokenizer = tiktoken.get_encoding("gpt2")
    collate = partial(instruction_collate, device=device, allowed_max_length=config["context_length"],
                      mask_instructions=args.mask_instructions)
    torch.manual_seed(args.seed)
    train_loader = DataLoader(InstructionDataset(train_data, tokenizer), batch_size=args.batch_size,
                              collate_fn=collate, shuffle=True, drop_last=True)
    val_loader = DataLoader(InstructionDataset(val_data, tokenizer), batch_size=args.batch_size, collate_fn=collate)
    print(f"model {args.model_size}{' (STAND-IN weights)' if is_standin else ''}: "
          f"{sum(p.numel() for p in model.parameters()):,} parameters | device {device.type} | "
          f"{len(train_data)} training entries, {len(train_loader)} batches per epoch | "
          f"instruction masking {'on' if args.mask_instructions else 'off'}")

    nll_before = response_nll(model, test_data, tokenizer, device, args.batch_size)
    print(f"reference-answer NLL before fine-tuning: {nll_before:.3f}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                                  fused=device.type in ("cpu", "cuda"))
    report_bf16(args, device)
    start = time.time()
    torch.manual_seed(args.seed)
    start_context = format_input(val_data[0])
    train_losses, val_losses, tokens_seen = train_model_simple(
        training_view(model, device, args.bf16, args.compile),  # `model` itself unless --bf16/--compile
        train_loader, val_loader, optimizer, device, args.epochs, args.eval_freq, args.eval_iter,
        start_context=start_context, tokenizer=tokenizer,
        on_epoch_end=lambda _: generate_and_print_sample(model, tokenizer, device, start_context))
    print(f"training took {(time.time() - start) / 60:.2f} min")
    nll_after = response_nll(model, test_data, tokenizer, device, args.batch_size)
    print(f"reference-answer NLL after fine-tuning: {nll_after:.3f}")

    start = time.time()
    responses = generate_test_responses(model, tokenizer, test_data, device, args.max_new_tokens,
                                        progress=not args.no_progress)
    print(f"answered {len(responses)} test entries in {time.time() - start:.1f} s")
    print(f"saved: {save_json(responses, out / 'test-responses.json')}")
    print(f"saved: {save_finetuned(model, config, out / 'model.pth', model_size=args.model_size, is_standin=is_standin)}")
    print(f"saved: {save_loss_plot(out / 'loss.png', args.epochs, train_losses, val_losses, tokens_seen)}")
    metrics = {"model_size": args.model_size, "is_standin": is_standin, "mask_instructions": args.mask_instructions,
               "train_entries": len(train_data), "test_entries": len(test_data), "epochs": args.epochs,
               "nll_before": nll_before, "nll_after": nll_after, "train_losses": train_losses,
               "val_losses": val_losses, "tokens_seen": tokens_seen}
    print(f"saved: {save_json(metrics, out / 'metrics.json')}")
    return 0


if __name__ == "__main__":
    run_script(main, expected=(ValueError, DownloadError))
