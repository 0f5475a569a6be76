"""Classify text messages as spam or ham with a classifier saved by gpt_class_finetune.py.

    python ch06/classify.py --checkpoint runs/gpt_class_finetune/run-001/classifier.pth "WINNER! Call now"
    python ch06/classify.py --checkpoint runs/spam/classifier.pth < messages.txt   # one per line

Prints one line per message: the label, the probability the model gives that label, two
spaces, and the message, e.g. "spam 0.973  WINNER! Call now". Messages are classified in padded
batches, each at its last real token, so a message gets the same answer alone or among others.
Each is cut to the length the classifier was trained with (and never beyond the model's context).
"""
import argparse
import sys
from pathlib import Path

import tiktoken
import torch

from previous_chapters import GPTModel, classify_texts, load_weights, pick_device, read_checkpoint

CHECKPOINT_KIND = "gpt-spam-classifier"  # written by gpt_class_finetune.py
CONFIG_KEYS = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "drop_rate", "qkv_bias")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="classifier.pth from gpt_class_finetune.py")
    p.add_argument("messages", nargs="*", help="messages to classify (default: one per line from standard input)")
    p.add_argument("--batch-size", type=int, default=8, help="messages per padded batch (default 8)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="default auto: CUDA, then MPS, then the CPU")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error(f"--batch-size must be at least 1, got {args.batch_size}")
    return args


def load_classifier(path, device):
    """(model, checkpoint dict) from a gpt_class_finetune.py checkpoint; ValueError if it is not one."""
    ckpt = read_checkpoint(path, "--checkpoint", ("kind", "model_state_dict", "config", "num_classes"), device,
                           expected="the classifier.pth that gpt_class_finetune.py saves")
    if ckpt["kind"] != CHECKPOINT_KIND:
        raise ValueError(f"--checkpoint {path} is not a spam classifier saved by gpt_class_finetune.py "
                         f"(its kind is {ckpt['kind']!r})")
    config = ckpt["config"]
    if not isinstance(config, dict) or any(k not in config for k in CONFIG_KEYS):
        raise ValueError(f"--checkpoint {path} lacks the model configuration")
    try:
        model = GPTModel(config)
        model.out_head = torch.nn.Linear(config["emb_dim"], ckpt["num_classes"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"--checkpoint {path}: its configuration cannot build a model "
                         f"({type(exc).__name__}: {str(exc)[:120]})") from None
    load_weights(model, ckpt["model_state_dict"], "--checkpoint", path,
                 hint=f"its weights do not fit its configuration (emb_dim {config['emb_dim']}, n_layers "
                      f"{config['n_layers']}, context_length {config['context_length']}): the file was damaged or edited")
    return model.to(device).eval(), ckpt


def read_messages(args):
    if args.messages:
        messages, where = args.messages, "argument"
    else:
        messages, where = sys.stdin.read().splitlines(), "line"
        if not messages:
            raise ValueError("no messages: pass them as arguments or one per line on standard input")
    for i, message in enumerate(messages, 1):
        if not message.strip():
            raise ValueError(f"message {i} (the {where} number {i}) is empty")
    return messages


def main(argv=None):
    args = parse_args(argv)
    try:
        device = pick_device(args.device)
        model, ckpt = load_classifier(args.checkpoint, device)  # before waiting for standard input
        messages = read_messages(args)
        tokenizer = tiktoken.get_encoding("gpt2")
        probas = classify_texts(messages, model, tokenizer, device, max_length=ckpt.get("max_length"),
                                pad_token_id=ckpt.get("pad_token_id", 50256), batch_size=args.batch_size)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    labels = ckpt.get("labels", ["ham", "spam"])
    for message, p in zip(messages, probas):
        k = int(p.argmax())
        print(f"{labels[k]} {p[k].item():.3f}  {' '.join(message.split())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
