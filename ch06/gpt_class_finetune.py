"""Fine-tune a GPT as a spam classifier: chapter 6's training as a headless script.

    python ch06/gpt_class_finetune.py                         # GPT-2 124M, last block, 5 epochs
    python ch06/gpt_class_finetune.py --trainable all --epochs 2 --output-dir runs/spam-all
    python ch06/gpt_class_finetune.py --model-size tiny --max-examples 64 --epochs 1   # a quick trial

The data is the SMS Spam Collection, balanced and split 70/10/20 as in the notebook (the CSV
files go to the download cache), or your own train.csv, validation.csv and test.csv (columns
Text and Label, 0 = ham, 1 = spam) with --data-dir. The output folder receives classifier.pth
(the weights plus the configuration needed to rebuild the model; classify it with
ch06/classify.py), metrics.json (train_accuracy, val_accuracy, test_accuracy, seconds, ...),
loss.png and accuracy.png.

Output folder: without --output-dir every run gets a fresh folder runs/gpt_class_finetune/run-NNN
(one above the highest run number there), so an earlier run is never overwritten. An --output-dir
that already holds any of the outputs is refused before any work unless --overwrite replaces
them; a file, or a place that cannot be written, is refused too. Every output is written to a
temporary file and renamed into place, so an interruption leaves the previous file intact.

--model-size tiny is a small randomly initialised GPT (width 32, 2 layers), not pretrained: for
tests and quick trials. The GPT-2 sizes load OpenAI's weights through chapter 5's loader (or
its labelled stand-in where LLMS_STANDIN_WEIGHTS allows it).
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import pandas as pd
import tiktoken
import torch
from torch.utils.data import DataLoader

from previous_chapters import (GPT2_SIZES, SPLIT_NAMES, TRAINABLE_CHOICES, DownloadError, GPTModel, SpamDataset,
                               add_fast_path_arguments, add_overwrite_argument, calc_accuracy_loader, check_output,
                               fast_from_chapter, fresh_run_dir, load_pretrained_gpt2, pick_device, plot_values,
                               prepare_classifier, prepare_spam_csvs, report_bf16, save_atomic, save_figure,
                               train_classifier_simple, training_view)

CHECKPOINT_NAME = "classifier.pth"
CHECKPOINT_KIND = "gpt-spam-classifier"
LABELS = ("ham", "spam")  # class 0, class 1
TINY = {"vocab_size": 50257, "context_length": 256, "emb_dim": 32, "n_heads": 2, "n_layers": 2,
        "drop_rate": 0.0, "qkv_bias": True}
MODEL_SIZES = ("tiny",) + tuple(GPT2_SIZES)
OUTPUTS = (CHECKPOINT_NAME, "metrics.json", "loss.png", "accuracy.png")
DEFAULT_RUNS = Path("runs/gpt_class_finetune")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-size", default="124M", help=f"one of: {', '.join(MODEL_SIZES)} (default 124M)")
    p.add_argument("--trainable", default="last-block", choices=TRAINABLE_CHOICES,
                   help="which parameters train besides the new head (default last-block: the last "
                        "transformer block and the final LayerNorm, as in the book)")
    p.add_argument("--epochs", type=int, default=5, help="default 5")
    p.add_argument("--batch-size", type=int, default=8, help="default 8")
    p.add_argument("--lr", type=float, default=5e-5, help="AdamW learning rate (default 5e-5)")
    p.add_argument("--weight-decay", type=float, default=0.1, help="default 0.1")
    p.add_argument("--max-length", type=int, default=None,
                   help="pad and truncate every message to this many tokens (default: the longest "
                        "training message); at most the model's context length")
    p.add_argument("--max-examples", type=int, default=None,
                   help="use only the first N messages of each split (default: all); for quick runs")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="folder with train.csv, validation.csv and test.csv (default: the SMS Spam "
                        "Collection, downloaded, balanced and split into the download cache)")
    p.add_argument("--eval-freq", type=int, default=50, help="loss estimate every N steps (default 50)")
    p.add_argument("--eval-iter", type=int, default=5, help="batches per estimate (default 5)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="default auto: CUDA, then MPS, then the CPU")
    p.add_argument("--seed", type=int, default=123,
                   help="seeds the balancing and splitting of the data, the new head and the shuffling (default 123)")
    p.add_argument("--output-dir", type=Path, default=None,
                   help=f"where to write {', '.join(OUTPUTS)} (default: a fresh {DEFAULT_RUNS}/run-NNN)")
    add_overwrite_argument(p, "--output-dir")
    p.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bars")
    add_fast_path_arguments(p, tie_weights=False)  # the classifier's head is its own, never tied
    args = p.parse_args(argv)
    if args.model_size not in MODEL_SIZES:
        p.error(f"unknown --model-size {args.model_size!r}; valid sizes: {', '.join(MODEL_SIZES)}")
    for name in ("epochs", "batch_size", "eval_freq", "eval_iter", "max_length", "max_examples"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    for name in ("lr", "weight_decay"):
        value = getattr(args, name)
        if not math.isfinite(value) or value < 0 or (name == "lr" and value == 0):
            p.error(f"--{name.replace('_', '-')} must be a finite {'positive' if name == 'lr' else 'non-negative'} "
                    f"number, got {value}")
    if args.data_dir is not None:
        for split in SPLIT_NAMES:
            if not (args.data_dir / f"{split}.csv").is_file():
                p.error(f"--data-dir {args.data_dir}: missing {split}.csv (need {', '.join(SPLIT_NAMES)} .csv)")
    if args.output_dir is None:
        args.output_dir = fresh_run_dir(DEFAULT_RUNS)
    check_output(p, "--output-dir", args.output_dir, OUTPUTS, overwrite=args.overwrite)
    return args


def read_splits(args):
    """{split: DataFrame} from --data-dir or the prepared SMS Spam Collection, cut to --max-examples."""
    paths = ({s: args.data_dir / f"{s}.csv" for s in SPLIT_NAMES} if args.data_dir is not None
             else prepare_spam_csvs(seed=args.seed))
    splits = {}
    for split, path in paths.items():
        try:
            df = pd.read_csv(path, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read {path}: {exc}") from None
        if not {"Text", "Label"} <= set(df.columns):
            raise ValueError(f"{path} needs the columns Text and Label, has {list(df.columns)}")
        labels = pd.to_numeric(df["Label"], errors="coerce")
        if not labels.isin([0, 1]).all():
            raise ValueError(f"{path}: every Label must be 0 (ham) or 1 (spam)")
        splits[split] = df if args.max_examples is None else df.head(args.max_examples)
    if len(splits["train"]) < args.batch_size:
        raise ValueError(f"the training split has {len(splits['train'])} messages, fewer than one batch of "
                         f"--batch-size {args.batch_size}; use more data or a smaller --batch-size")
    for split in SPLIT_NAMES[1:]:
        if len(splits[split]) == 0:
            raise ValueError(f"the {split} split has no messages")
    return splits


def make_dataset(splits, split, tokenizer, max_length):
    try:
        return SpamDataset(splits[split], tokenizer, max_length=max_length)
    except ValueError as exc:
        raise ValueError(f"the {split} split: {str(exc).replace('the DataFrame: ', '')}") from None


def build_model(args, device):
    """(model, config, is_standin) with a fresh 2-class head and the chosen parameters trainable."""
    if args.model_size == "tiny":
        torch.manual_seed(args.seed)
        model, config, is_standin = GPTModel(TINY), dict(TINY), False
    else:
        model, config, is_standin = load_pretrained_gpt2(args.model_size, drop_rate=0.0)
    if args.fast:
        model = fast_from_chapter(model, config)  # same weights, same results, faster
    if args.max_length is not None and args.max_length > config["context_length"]:
        raise ValueError(f"--max-length {args.max_length} exceeds the model's context length "
                         f"{config['context_length']}")
    torch.manual_seed(args.seed)
    prepare_classifier(model, num_classes=len(LABELS), trainable=args.trainable)
    return model.to(device), config, is_standin


def save_outputs(out, model, config, args, max_length, is_standin, metrics, history):
    ckpt = {"kind": CHECKPOINT_KIND, "model_state_dict": model.state_dict(), "config": config,
            "num_classes": len(LABELS), "labels": list(LABELS), "max_length": max_length,
            "pad_token_id": 50256, "model_size": args.model_size, "trainable": args.trainable,
            "standin": is_standin}
    out.mkdir(parents=True, exist_ok=True)  # checked before any work (check_output)
    save_atomic(out / CHECKPOINT_NAME, lambda tmp: torch.save(ckpt, tmp))
    save_atomic(out / "metrics.json",
                lambda tmp: Path(tmp).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8"))
    import matplotlib
    matplotlib.use("Agg")  # files only, no window

    train_losses, val_losses, train_accs, val_accs, examples_seen = history
    for name, train_values, val_values, first_epoch in (("loss", train_losses, val_losses, 0),
                                                         ("accuracy", train_accs, val_accs, 1)):
        n = len(train_values)
        epochs = torch.linspace(first_epoch * args.epochs / max(n, 1), args.epochs, n)
        seen = torch.linspace(first_epoch * examples_seen / max(n, 1), examples_seen, n)
        fig = plot_values(epochs, seen, train_values, val_values, label=name)
        save_figure(fig, out / f"{name}.png")


def run(args):
    device = pick_device(args.device)
    splits = read_splits(args)
    out = args.output_dir  # checked in parse_args, created when the outputs are saved
    tokenizer = tiktoken.get_encoding("gpt2")
    train_ds = make_dataset(splits, "train", tokenizer, args.max_length)
    val_ds = make_dataset(splits, "validation", tokenizer, train_ds.max_length)
    test_ds = make_dataset(splits, "test", tokenizer, train_ds.max_length)
    model, config, is_standin = build_model(args, device)
    if train_ds.max_length > config["context_length"]:
        raise ValueError(f"the longest training message has {train_ds.max_length} tokens, more than the model's "
                         f"context length {config['context_length']}; pass --max-length")
    torch.manual_seed(args.seed)
    train_loader = DataLoader(train_ds, batch_size=args.batch_size, shuffle=True, drop_last=True)
    val_loader = DataLoader(val_ds, batch_size=args.batch_size)
    test_loader = DataLoader(test_ds, batch_size=args.batch_size)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"model {args.model_size}{' (STAND-IN weights)' if is_standin else ''}: {trainable:,} of "
          f"{sum(p.numel() for p in model.parameters()):,} parameters trainable ({args.trainable}) | "
          f"device {device.type} | {len(train_ds)}/{len(val_ds)}/{len(test_ds)} messages, "
          f"padded to {train_ds.max_length} tokens")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                                  weight_decay=args.weight_decay)
    report_bf16(args, device)
    start = time.time()
    trained = training_view(model, device, args.bf16, args.compile)  # `model` itself unless --bf16/--compile
    history = train_classifier_simple(trained, train_loader, val_loader, optimizer, device, args.epochs,
                                      args.eval_freq, args.eval_iter, progress=not args.no_progress)
    seconds = time.time() - start
    metrics = {"train_accuracy": calc_accuracy_loader(train_loader, model, device),
               "val_accuracy": calc_accuracy_loader(val_loader, model, device),
               "test_accuracy": calc_accuracy_loader(test_loader, model, device),
               "seconds": round(seconds, 2), "model_size": args.model_size, "trainable": args.trainable,
               "standin": is_standin, "epochs": args.epochs, "examples": {s: len(splits[s]) for s in SPLIT_NAMES}}
    print(f"training took {seconds:.1f} s | accuracy: train {metrics['train_accuracy'] * 100:.1f}%, "
          f"validation {metrics['val_accuracy'] * 100:.1f}%, test {metrics['test_accuracy'] * 100:.1f}%")
    save_outputs(out, model, config, args, train_ds.max_length, is_standin, metrics, history)
    print(f"saved {', '.join(OUTPUTS)} in {out}")
    return 0


def main(argv=None):
    args = parse_args(argv)
    try:
        return run(args)
    except (ValueError, OSError, DownloadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
