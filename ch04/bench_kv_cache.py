"""Benchmark greedy generation with and without the KV cache on the 124M GPT model.

Both generators run in the same process on the same weights: the chapter's GPTModel with its
generate_text_simple (the reference), and gpt_with_kv_cache.GPTModel loaded from the same
state_dict with generate_text_simple(..., use_cache=True). Runs alternate between the two, so a
change in machine load affects both alike; the script reports the median of the repeats, checks
that both produce the same tokens, and prints the memory the cache holds at the last step.

    python ch04/bench_kv_cache.py                      # 200 new tokens, 3 repeats
    python ch04/bench_kv_cache.py --max-new-tokens 50 --repeats 1

Throughput depends on the CPU and on whatever else runs on the machine: compare the ratio, not
the absolute numbers, and note the load average the script prints. When other programs keep some
cores busy, PyTorch's threads wait for each other at every operation, which hurts the many small
operations of cached generation most; try --threads 1 there.
"""
import argparse
import os
import statistics
import time

import torch

from previous_chapters import GPT_CONFIG_124M, check_range, run_script
from previous_chapters import GPTModel as ChapterGPTModel
from previous_chapters import generate_text_simple as chapter_generate
from gpt_with_kv_cache import GPTModel as CachedGPTModel
from gpt_with_kv_cache import generate_text_simple as cached_generate


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-new-tokens", type=int, default=200,
                        help="tokens to generate; with the prompt's tokens at most the model's context "
                             f"length, {GPT_CONFIG_124M['context_length']}")
    parser.add_argument("--prompt", default="Hello, I am", help="the prompt (<|endoftext|> is allowed)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each generator")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads, 1 to the number of CPUs (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args(argv)
    check_range(parser, args, ("max_new_tokens", "repeats"), 1)
    check_range(parser, args, ("seed",), -2 ** 63, 2 ** 64 - 1)  # what torch.manual_seed accepts
    check_range(parser, args, ("threads",), 1, os.cpu_count() or 1)  # far more threads than CPUs can crash
    import tiktoken
    n_prompt = len(tiktoken.get_encoding("gpt2").encode(args.prompt, allowed_special={"<|endoftext|>"}))
    ctx = GPT_CONFIG_124M["context_length"]
    if n_prompt == 0:
        parser.error(f"--prompt must contain some text, got {args.prompt!r}")
    if n_prompt + args.max_new_tokens > ctx:  # the model has no position beyond its context
        parser.error(f"--prompt ({n_prompt} tokens) + --max-new-tokens ({args.max_new_tokens}) must be at most "
                     f"the model's context length {ctx}; lower --max-new-tokens to {max(ctx - n_prompt, 0)} "
                     f"or shorten --prompt")
    return args


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main(argv=None):
    args = parse_args(argv)  # checks that the prompt and the new tokens fit the context
    import tiktoken
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = tiktoken.get_encoding("gpt2")
    idx = torch.tensor([tokenizer.encode(args.prompt, allowed_special={"<|endoftext|>"})])
    ctx = GPT_CONFIG_124M["context_length"]

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average at start {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    torch.manual_seed(args.seed)
    reference = ChapterGPTModel(GPT_CONFIG_124M).eval()
    cached = CachedGPTModel(GPT_CONFIG_124M).eval()
    cached.load_state_dict(reference.state_dict())

    # warm-up (first calls allocate memory and pick kernels)
    chapter_generate(reference, idx, 3, ctx)
    cached_generate(cached, idx, 3, ctx, use_cache=True)

    n = args.max_new_tokens
    times = {"without cache": [], "with cache": []}
    for r in range(args.repeats):
        out_ref, t_ref = timed(lambda: chapter_generate(reference, idx, n, ctx))
        out_kv, t_kv = timed(lambda: cached_generate(cached, idx, n, ctx, use_cache=True))
        if not torch.equal(out_ref, out_kv):
            raise SystemExit("error: the cached generator produced different tokens than the reference")
        times["without cache"].append(t_ref)
        times["with cache"].append(t_kv)
        print(f"repeat {r + 1}: without cache {n / t_ref:6.2f} tokens/s, with cache {n / t_kv:6.2f} tokens/s, "
              f"ratio {t_ref / t_kv:.2f}x")

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{n} new tokens after a {idx.shape[1]}-token prompt, batch 1, 124M model, float32, "
          f"median of {args.repeats} repeat(s):")
    for k, v in med.items():
        print(f"  {k:<14} {n / v:7.2f} tokens/s  ({v:.2f} s)")
    print(f"  speed-up with the KV cache: {med['without cache'] / med['with cache']:.2f}x "
          f"(outputs identical: True)")

    # the cache at the last generation step holds every token but the final one
    with torch.no_grad():
        cached.reset_kv_cache()
        cached(out_kv[:, :-1], use_cache=True)
    cache_mb = cached.kv_cache_bytes() / 1024 ** 2
    cfg = GPT_CONFIG_124M
    full_mb = 2 * cfg["n_layers"] * cfg["context_length"] * cfg["emb_dim"] * 4 / 1024 ** 2
    weights_mb = sum(p.numel() * p.element_size() for p in cached.parameters()) / 1024 ** 2
    print(f"  KV cache at the last step ({out_kv.shape[1] - 1} tokens): {cache_mb:.1f} MB "
          f"(full {cfg['context_length']}-token context: {full_mb:.1f} MB; weights: {weights_mb:.1f} MB)")
    cached.reset_kv_cache()
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    run_script(main)  # bad input: `error: ...`, exit code 2
