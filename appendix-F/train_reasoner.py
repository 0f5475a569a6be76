"""Appendix F's experiments, headless: SFT with or without a chain of thought, GRPO from a
checkpoint, and distillation of a checkpoint's verified traces into a smaller student.

    python appendix-F/train_reasoner.py --method cot --steps 600 --output cot.pth
    python appendix-F/train_reasoner.py --method answer-only --steps 1800
    python appendix-F/train_reasoner.py --grpo-from cot.pth --steps 60 --output grpo.pth
    python appendix-F/train_reasoner.py --distill-from cot.pth --emb-dim 32 --steps 800

The last line printed is the held-out greedy accuracy, e.g.
`held-out greedy accuracy: 0.998 (1000 problems)`.

--output is checked before any work: an existing file is refused unless --overwrite replaces it,
as are a folder, a path under a file and a place that cannot be written. The checkpoint is
written to a temporary file and renamed into place, so an interruption leaves the previous file.
"""
import argparse
import math
import sys
import time
from pathlib import Path

import torch

from previous_chapters import (GPTModel, add_overwrite_argument, check_output, check_range, greedy_accuracy,
                               make_problems, model_from_checkpoint, pick_device, read_checkpoint, reasoner_config,
                               sample_traces, save_atomic, train_grpo, train_sft)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--method", choices=["answer-only", "cot"], default="cot",
                        help="SFT target: the answer alone, or the chain of thought then the answer")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--grpo-from", type=Path, metavar="CKPT", help="run GRPO from this checkpoint instead of SFT")
    source.add_argument("--distill-from", type=Path, metavar="CKPT",
                        help="train a new student on this checkpoint's sampled, verified traces")
    parser.add_argument("--digits", type=int, default=None, help="digits per operand (default 5, or the checkpoint's)")
    parser.add_argument("--steps", type=int, default=600, help="SFT or GRPO steps")
    parser.add_argument("--batch-size", type=int, default=64, help="SFT problems per step")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default 3e-3 for SFT, 3e-4 for GRPO)")
    parser.add_argument("--emb-dim", type=int, default=64, help="model width (new models only)")
    parser.add_argument("--n-layers", type=int, default=2, help="transformer blocks (new models only)")
    parser.add_argument("--n-heads", type=int, default=4, help="attention heads (new models only)")
    parser.add_argument("--n-train", type=int, default=20_000, help="training problems")
    parser.add_argument("--n-test", type=int, default=1000, help="held-out problems")
    parser.add_argument("--group-size", type=int, default=8, help="GRPO samples per problem (at least 2: each is scored against its group)")
    parser.add_argument("--problems-per-step", type=int, default=16, help="GRPO problems per step")
    parser.add_argument("--kl-coef", type=float, default=0.0, help="GRPO KL penalty to the starting model")
    parser.add_argument("--format-weight", type=float, default=0.1, help="GRPO reward for a well-formed scratchpad")
    parser.add_argument("--n-traces", type=int, default=4000, help="problems the teacher solves for distillation")
    parser.add_argument("--temperature", type=float, default=0.7, help="the teacher's sampling temperature")
    parser.add_argument("--eval-every", type=int, default=100, help="steps between held-out evaluations")
    parser.add_argument("--seed", type=int, default=123, help="seed of the problems, the model and the sampling")
    parser.add_argument("--device", default="auto", help="auto (pick_device()), cpu, cuda, mps, ...")
    parser.add_argument("--output", type=Path, metavar="CKPT", help="save the trained model here (atomically)")
    add_overwrite_argument(parser, "--output")
    args = parser.parse_args(argv)

    check_range(parser, args, ("steps", "batch_size", "emb_dim", "n_layers", "n_heads", "n_train", "n_test",
                               "problems_per_step", "n_traces", "eval_every"), 1)
    check_range(parser, args, ("group_size",), 2)  # advantages compare samples within a group
    if args.digits is not None and not 1 <= args.digits <= 9:
        parser.error(f"--digits must be between 1 and 9, got {args.digits}")
    if args.emb_dim % args.n_heads:
        parser.error(f"--emb-dim ({args.emb_dim}) must be divisible by --n-heads ({args.n_heads})")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        parser.error(f"--lr must be a positive finite number, got {args.lr}")
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        parser.error(f"--temperature must be a positive finite number, got {args.temperature}")
    for name in ("kl_coef", "format_weight"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value >= 0):
            parser.error(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
    if args.distill_from is not None and args.n_traces > args.n_train:
        parser.error(f"--n-traces ({args.n_traces}) must not exceed --n-train ({args.n_train})")
    if args.output is not None:
        check_output(parser, "--output", args.output, overwrite=args.overwrite)
    try:
        args.device = pick_device(args.device)
    except ValueError as exc:
        parser.error(f"--device {args.device!r}: {exc}")
    return args, parser


def load_checkpoint(path, flag, device):
    """(model, checkpoint dict) from a file this script saved; ValueError naming `flag` otherwise."""
    ckpt = read_checkpoint(path, flag, ("model", "config", "digits"), device,
                           expected="a checkpoint that train_reasoner.py --output saved (model, config and digits)")
    return model_from_checkpoint(GPTModel, ckpt, flag, path).to(device), ckpt


def save_checkpoint(path, model, config, digits, method):
    """Write to a temporary file in the same folder, then rename: never a half-written checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)  # checked before any work (check_output)
    state = {"model": model.state_dict(), "config": config, "digits": digits, "method": method}
    save_atomic(path, lambda tmp: torch.save(state, tmp))


def main(argv=None):
    args, parser = parse_args(argv)
    try:
        start = time.time()
        source = args.grpo_from or args.distill_from
        if source is not None:  # read and checked before any work
            base, ckpt = load_checkpoint(source, "--grpo-from" if args.grpo_from else "--distill-from", args.device)
            if args.digits is not None and args.digits != ckpt["digits"]:
                parser.error(f"--digits {args.digits} differs from the checkpoint's {ckpt['digits']} ({source})")
            digits = ckpt["digits"]
        else:
            digits = args.digits or 5
        if args.n_train + args.n_test > (9 * 10 ** (digits - 1)) ** 2 // 2:
            parser.error(f"--n-train + --n-test ({args.n_train + args.n_test}) is too many distinct "
                         f"{digits}-digit problems")
        train_problems, test_problems = make_problems(args.n_train, args.n_test, digits, args.seed)
        log = print
        torch.manual_seed(args.seed)
        if args.grpo_from is not None:
            model, config, method = base, ckpt["config"], "cot"
            print(f"GRPO from {source.name}: greedy accuracy {greedy_accuracy(model, test_problems, 'cot', digits):.3f}")
            train_grpo(model, train_problems, args.steps, args.problems_per_step, args.group_size,
                       lr=args.lr or 3e-4, kl_coef=args.kl_coef, format_weight=args.format_weight, digits=digits,
                       seed=args.seed, eval_problems=test_problems, eval_every=args.eval_every, log=log)
        else:
            config = reasoner_config(digits, args.emb_dim, args.n_layers, args.n_heads)
            model = GPTModel(config).to(args.device)
            method = args.method
            target = method
            if args.distill_from is not None:
                traces = sample_traces(base, train_problems[: args.n_traces], digits, args.temperature, args.seed)
                print(f"teacher {source.name}: {len(traces)} of {args.n_traces} sampled traces well formed and verified")
                if not traces:
                    raise ValueError(f"the teacher {source} produced no verified trace to learn from")
                train_problems, target, method = list(traces), traces.__getitem__, "cot"
            print(f"SFT ({method}), {sum(p.numel() for p in model.parameters()):,} parameters, {digits}-digit problems")
            train_sft(model, train_problems, target, args.steps, args.batch_size, lr=args.lr or 3e-3, digits=digits,
                      seed=args.seed, eval_problems=test_problems, eval_every=args.eval_every, log=log)
        if args.output is not None:
            save_checkpoint(args.output, model, config, digits, method)
            print(f"saved {args.output}")
        accuracy = greedy_accuracy(model, test_problems, method, digits)
        print(f"took {time.time() - start:.1f} s")
        print(f"held-out greedy accuracy: {accuracy:.3f} ({len(test_problems)} problems)")
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
