"""Benchmark the causal multi-head attention implementations of efficient_attention.py.

Each implementation is loaded with the same weights as the chapter's MultiHeadAttention
(dropout off) and timed on the same random input: the forward pass (inference: eval mode, under torch.no_grad)
and a forward+backward pass in training mode (gradients w.r.t. input and weights). Each measurement is the median
of --repeats runs (round-robin over the implementations) after --warmup untimed runs of each. Times are printed together with their ratio to
the chapter's version (below 1 = faster), and the fastest implementation is named.

    python ch03/bench_attention.py                          # batch 8 x 1,024 tokens x 768 dims, 12 heads
    python ch03/bench_attention.py --tokens 256 --repeats 3 # quicker
"""
import argparse
import os
import statistics
import time

import torch

from efficient_attention import IMPLEMENTATIONS, from_chapter
from previous_chapters import MultiHeadAttention, check_range, memory_error, pick_device, run_script


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--emb-dim", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads, 1 to the number of CPUs (default: PyTorch's)")
    parser.add_argument("--only", nargs="+", choices=list(IMPLEMENTATIONS), default=list(IMPLEMENTATIONS),
                        help="implementations to time (the chapter's is always included as the reference)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (chapter 1's pick_device)")
    args = parser.parse_args(argv)
    check_range(parser, args, ("batch", "tokens", "emb_dim", "heads", "repeats"), 1)
    check_range(parser, args, ("threads",), 1, os.cpu_count() or 1)  # far more threads than CPUs can crash
    check_range(parser, args, ("warmup",), 0)
    if args.emb_dim % args.heads:
        parser.error(f"--emb-dim ({args.emb_dim}) must be divisible by --heads ({args.heads})")
    try:
        args.device = pick_device(args.device)  # a device that is not there: an error now, not a traceback later
    except ValueError as exc:
        parser.error(f"--device {args.device}: {exc}")
    need = memory_needed(args.batch, args.tokens, args.emb_dim, args.heads, 1 + len(set(args.only) - {"chapter"}))
    problem = memory_error(f"--batch {args.batch} x --tokens {args.tokens} x --emb-dim {args.emb_dim} with --heads "
                           f"{args.heads}", need, args.device)
    if problem:
        parser.error(f"{problem}; lower --batch, --tokens or --emb-dim")
    return args


def memory_needed(batch, tokens, emb_dim, heads, n_modules):
    """A rough estimate of the float32 bytes a run holds at once: each of the n_modules keeps four
    (emb_dim, emb_dim) weights with their gradients and a (tokens, tokens) mask; one forward+backward
    of the chapter's attention about four (batch, heads, tokens, tokens) score tensors (scores,
    masked, softmax, and a gradient) and about a dozen (batch, tokens, emb_dim) ones (input,
    queries, keys, values, context, output and their gradients)."""
    modules = n_modules * (2 * 4 * emb_dim ** 2 + tokens ** 2)
    return 4 * (modules + 4 * batch * heads * tokens ** 2 + 12 * batch * tokens * emb_dim)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_once(fn, device):
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def make_steps(module, x):
    """The two timed operations for one module: inference forward and a training forward+backward."""
    def forward():  # eval mode, no autograd (lets nn.MultiheadAttention take its fast path)
        module.eval()
        with torch.no_grad():
            module(x)

    def forward_backward():  # a training step without the optimizer
        module.train()
        module.zero_grad(set_to_none=True)
        x.grad = None
        module(x.requires_grad_(True)).sum().backward()
        x.requires_grad_(False)

    return forward, forward_backward


def benchmark(modules, x, repeats, warmup, device):
    """Median seconds per implementation for forward and forward+backward.

    Every implementation is warmed up first; the timed runs then go round-robin over the
    implementations, so a burst of load from other processes hits all of them alike.
    """
    steps = {name: make_steps(module, x) for name, module in modules.items()}
    results = {}
    for kind in (0, 1):  # 0: forward, 1: forward+backward
        for _ in range(warmup):
            for name in steps:
                steps[name][kind]()
        times = {name: [] for name in steps}
        for _ in range(repeats):
            for name in steps:
                times[name].append(time_once(steps[name][kind], device))
        for name in steps:
            results.setdefault(name, []).append(statistics.median(times[name]))
    return {name: tuple(v) for name, v in results.items()}


def main(argv=None):
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = args.device  # checked by parse_args
    torch.manual_seed(123)
    chapter = MultiHeadAttention(args.emb_dim, args.emb_dim, args.tokens, 0.0, args.heads).to(device)
    x = torch.randn(args.batch, args.tokens, args.emb_dim, device=device)
    names = ["chapter"] + [n for n in args.only if n != "chapter"]
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads; "
          f"batch {args.batch} x {args.tokens} tokens x {args.emb_dim} dims, {args.heads} heads; "
          f"median of {args.repeats} after {args.warmup} warm-up")
    modules = {name: from_chapter(IMPLEMENTATIONS[name], chapter).to(device) for name in names}
    results = benchmark(modules, x, args.repeats, args.warmup, device)
    base_f, base_fb = results["chapter"]
    print(f"{'implementation':<12} {'forward':>10} {'ratio':>7} {'fwd+bwd':>10} {'ratio':>7}")
    for name, (f, fb) in results.items():
        print(f"{name:<12} {f * 1e3:8.1f} ms {f / base_f:7.2f} {fb * 1e3:8.1f} ms {fb / base_fb:7.2f}")
    fastest_f = min(results, key=lambda n: results[n][0])
    fastest_fb = min(results, key=lambda n: results[n][1])
    print(f"fastest forward: {fastest_f} ({base_f / results[fastest_f][0]:.2f}x the chapter's speed)")
    print(f"fastest forward+backward: {fastest_fb} ({base_fb / results[fastest_fb][1]:.2f}x the chapter's speed)")
    return results


if __name__ == "__main__":
    run_script(main)  # bad input: `error: ...`, exit code 2
