"""How close does one training step of the 124M GPT model come to the CPU's matmul speed?

Times one training step (forward, cross-entropy loss, backward, AdamW update) of the chapter's
GPTModel with the 124M configuration at batch 2 x 256 tokens, for the chapter's from-scratch
attention and for the option that uses F.scaled_dot_product_attention ("use_sdpa": True). In the
same run, between the steps, it times a plain float32 matrix multiply, the best case for this CPU.
It reports tokens per second, the achieved FLOP/s and that as a fraction of the matmul rate.

FLOPs of a step: a matrix multiply with an n-parameter weight matrix costs 2n FLOPs per token
forward and 4n backward, so 6 x parameters x tokens, plus the attention scores and weighted sums
(4 x tokens x seq_len x emb_dim per layer forward, x3 with backward). Following the usual
convention the first count uses all parameters. The token and position embeddings are lookups,
not multiplies, so the script also prints the stricter count without them.

    python ch04/perf_analysis.py                    # both attention variants, 3 timed steps each
    python ch04/perf_analysis.py --variants sdpa --steps 2
    python ch04/perf_analysis.py --threads 1        # on a machine other programs keep busy
    python ch04/perf_analysis.py --drop-rate 0      # lets SDPA use its fused CPU kernel

Timings depend on the machine and on its load (the script prints the load average). When other
programs keep some cores busy, PyTorch's threads wait for each other at every operation, and
small element-wise operations slow down several-fold; fewer threads (--threads) can then be
faster. Compare the fraction of the matmul rate, which the script measures under the same load.

Before any work the script estimates the memory a run needs (see memory_needed) and refuses
settings that exceed the machine's physical memory, naming the option to lower.
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from previous_chapters import GPT_CONFIG_124M, GPTModel, check_range, memory_error

VARIANTS = {"chapter": False, "sdpa": True}  # name -> cfg["use_sdpa"]


def step_flops(cfg, n_params, batch_size, seq_len):
    """FLOPs of one forward + backward pass: 6 * params * tokens + attention."""
    tokens = batch_size * seq_len
    attention = 3 * 4 * cfg["n_layers"] * tokens * seq_len * cfg["emb_dim"]
    return 6 * n_params * tokens + attention


def embedding_params(model):
    return model.tok_emb.weight.numel() + model.pos_emb.weight.numel()


def matmul_rate(a, b, out, reps=5):
    """FLOP/s of a square float32 matrix multiply (median of `reps` calls)."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        times.append(time.perf_counter() - start)
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] / statistics.median(times)


def train_step(model, optimizer, inputs, targets):
    """One optimizer step; returns the loss and the seconds of forward, backward and update."""
    t0 = time.perf_counter()
    logits = model(inputs)
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    t3 = time.perf_counter()
    return loss.item(), (t1 - t0, t2 - t1, t3 - t2)


def memory_needed(cfg, n_variants, batch_size, seq_len, matmul_size):
    """A rough estimate of the bytes a run holds at once: the three n x n float32 matrices; per
    variant the float32 weights, gradients and AdamW's two moments; one step's activations (about
    (68 + 10 x heads x seq_len / emb_dim) bytes per token, layer and emb_dim in float32, after
    Korthikanti et al. 2022) and the logits with their softmax and gradient."""
    h, n_layers, vocab = cfg["emb_dim"], cfg["n_layers"], cfg["vocab_size"]
    n_params = 2 * vocab * h + cfg["context_length"] * h + n_layers * (12 * h * h + 10 * h) + 2 * h
    tokens = batch_size * seq_len
    activations = n_layers * tokens * h * (68 + 10 * cfg["n_heads"] * seq_len / h) + 3 * tokens * vocab * 4
    return 3 * matmul_size ** 2 * 4 + n_variants * 16 * n_params + activations


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant (after 1 warm-up step)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--matmul-size", type=int, default=2048, help="n of the n x n reference matmul")
    parser.add_argument("--drop-rate", type=float, default=GPT_CONFIG_124M["drop_rate"],
                        help="dropout rate (the 124M config's 0.1 by default; on CPU, SDPA uses its fused "
                             "kernel only without attention dropout)")
    parser.add_argument("--no-fused-adamw", action="store_true", help="use AdamW's default (unfused) update")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads, 1 to the number of CPUs (default: torch's choice)")
    args = parser.parse_args(argv)
    ctx = GPT_CONFIG_124M["context_length"]
    check_range(parser, args, ("batch_size", "steps"), 1)
    check_range(parser, args, ("threads",), 1, os.cpu_count() or 1)  # far more threads than CPUs can crash
    check_range(parser, args, ("seq_len",), 1, ctx)  # at most the context length
    check_range(parser, args, ("matmul_size",), 64)
    check_range(parser, args, ("drop_rate",), 0, 1, high_open=True)
    # refuse what cannot fit instead of swapping or being killed mid-run
    problem = memory_error(f"--matmul-size {args.matmul_size} (three matrices)", 3 * args.matmul_size ** 2 * 4)
    if problem:
        parser.error(problem)
    need = memory_needed(GPT_CONFIG_124M, len(set(args.variants)), args.batch_size, args.seq_len, args.matmul_size)
    problem = memory_error(f"--batch-size {args.batch_size} x --seq-len {args.seq_len} (weights, gradients, AdamW "
                           "state and activations)", need)
    if problem:
        parser.error(f"{problem}; lower --batch-size")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = {**GPT_CONFIG_124M, "drop_rate": args.drop_rate}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average at start {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")

    torch.manual_seed(123)
    inputs = torch.randint(0, cfg["vocab_size"], (args.batch_size, args.seq_len))
    targets = torch.randint(0, cfg["vocab_size"], (args.batch_size, args.seq_len))
    n = args.matmul_size
    a, b, out = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)

    runs = {}
    state = None
    for name in args.variants:
        torch.manual_seed(123)
        model = GPTModel({**cfg, "use_sdpa": VARIANTS[name]})
        if state is None:
            state = {k: v.clone() for k, v in model.state_dict().items()}  # a copy: training changes the model
        else:
            model.load_state_dict(state)  # same weights for every variant
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1,
                                      fused=not args.no_fused_adamw)
        train_step(model, optimizer, inputs, targets)  # warm-up: allocates gradients and optimizer state
        runs[name] = {"model": model, "optimizer": optimizer, "steps": []}

    # alternate matmul and training steps so that load changes hit all measurements alike
    matmul_rates = [matmul_rate(a, b, out)]
    for _ in range(args.steps):
        for name, run in runs.items():
            loss, parts = train_step(run["model"], run["optimizer"], inputs, targets)
            run["steps"].append(parts)
            run["loss"] = loss
            matmul_rates.append(matmul_rate(a, b, out))
    peak = statistics.median(matmul_rates)

    any_model = next(iter(runs.values()))["model"]
    n_params = sum(p.numel() for p in any_model.parameters())
    n_matmul = n_params - embedding_params(any_model)
    flops = step_flops(cfg, n_params, args.batch_size, args.seq_len)
    flops_strict = step_flops(cfg, n_matmul, args.batch_size, args.seq_len)
    tokens = args.batch_size * args.seq_len

    print(f"\nreference: {n}x{n} float32 matmul, median of {len(matmul_rates)} measurements: "
          f"{peak / 1e9:.1f} GFLOP/s (range {min(matmul_rates) / 1e9:.1f} to {max(matmul_rates) / 1e9:.1f})")
    print(f"training step: 124M config, batch {args.batch_size} x {args.seq_len} tokens, float32, "
          f"AdamW ({'unfused' if args.no_fused_adamw else 'fused'}), dropout {cfg['drop_rate']}")
    print(f"FLOPs per step: {flops / 1e9:.1f} G (6 x {n_params / 1e6:.1f}M params x {tokens} tokens + attention); "
          f"{flops_strict / 1e9:.1f} G without the {(n_params - n_matmul) / 1e6:.1f}M embedding params")
    for name, run in runs.items():
        totals = [sum(p) for p in run["steps"]]
        i = totals.index(statistics.median_low(totals))
        fwd, bwd, upd = run["steps"][i]
        step = totals[i]
        achieved = flops / step
        print(f"\n[{name} attention] median step {step:.2f} s "
              f"(forward {fwd:.2f} s, backward {bwd:.2f} s, AdamW {upd:.2f} s), last loss {run['loss']:.3f}")
        print(f"  {tokens / step:8.1f} tokens/s")
        print(f"  {achieved / 1e9:8.1f} GFLOP/s = {achieved / peak:6.1%} of the matmul rate "
              f"(stricter count: {flops_strict / step / 1e9:.1f} GFLOP/s = {flops_strict / step / peak:.1%})")
        print("  all steps: " + ", ".join(f"{t:.2f} s" for t in totals))
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
