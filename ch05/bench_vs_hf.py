"""Training and generation speed: the chapter's GPTModel and the fast path vs Hugging Face's GPT-2.

In one process, on the same device, batch and weights, it times a training step (forward,
cross-entropy loss, backward, AdamW step) and greedy generation for:
  - chapter 4's GPTModel with chapter 5's generate() (no KV cache),
  - the fast path of ch05/fast-path.ipynb (FastGPTModel, untied and tied output head,
    generate_fast with a preallocated KV cache),
  - Hugging Face's GPT2LMHeadModel (SDPA attention) built from the same configuration with the
    same weights copied in, and its generate() (only when `transformers` is installed).
Every line ends with the ratio against Hugging Face (above 1 = faster). Warm-up steps are not
timed; the figures are medians of the timed steps. All models get the same weights (the
chapter model's output head is set to its token embedding, GPT-2's layout), so the greedy ids
can be compared.

    python ch05/bench_vs_hf.py                                  # 124M, fp32, batch 2 x 128
    python ch05/bench_vs_hf.py --dtype bf16                     # bf16 autocast
    python ch05/bench_vs_hf.py --device cuda --dtype bf16 --batch-size 8 --seq-len 1024 --compile
"""
import argparse
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from previous_chapters import GPT2_SIZES, GPTModel, fast_adamw, fast_from_chapter, generate, generate_fast, pick_device

MODEL_SIZES = {"tiny": {"emb_dim": 32, "n_layers": 2, "n_heads": 2}, **GPT2_SIZES}
CONTEXT_LENGTH = 1024  # GPT-2's
PROMPT = [6109, 3626, 6100, 345]  # "Every effort moves you" in GPT-2's tokenizer
INSTALL_HF = "Hugging Face comparison skipped: transformers is not installed (pip install transformers)"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto = the project's pick_device() (LLMS_DEVICE overrides it)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"],
                   help="bf16: autocast for training, bf16 weights for generation (all models alike)")
    p.add_argument("--model-size", default="124M", help=f"one of: {', '.join(MODEL_SIZES)}")
    p.add_argument("--batch-size", type=int, default=2, help="sequences per training step")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per training sequence")
    p.add_argument("--steps", type=int, default=3, help="timed training steps per model (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (and untimed generation runs)")
    p.add_argument("--new-tokens", type=int, default=20, help="tokens per greedy generation")
    p.add_argument("--gen-repeats", type=int, default=2, help="timed generation runs per model (median reported)")
    p.add_argument("--drop-rate", type=float, default=0.0, help="dropout in every model")
    p.add_argument("--compile", action="store_true", help="torch.compile every model for training")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's peak TFLOP/s in --dtype, to print model FLOPs utilisation")
    p.add_argument("--seed", type=int, default=123)
    args = p.parse_args(argv)
    if args.model_size not in MODEL_SIZES:
        p.error(f"unknown --model-size {args.model_size!r}; valid sizes: {', '.join(MODEL_SIZES)}")
    for name in ("batch_size", "seq_len", "steps", "gen_repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("warmup", "new_tokens"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.seq_len > CONTEXT_LENGTH:
        p.error(f"--seq-len must be <= {CONTEXT_LENGTH} (GPT-2's context length), got {args.seq_len}")
    if len(PROMPT) + args.new_tokens > CONTEXT_LENGTH:
        p.error(f"--new-tokens must be <= {CONTEXT_LENGTH - len(PROMPT)}, got {args.new_tokens}")
    if not (math.isfinite(args.drop_rate) and 0.0 <= args.drop_rate < 1.0):
        p.error(f"--drop-rate must lie in [0, 1), got {args.drop_rate}")
    if args.peak_tflops is not None and not (math.isfinite(args.peak_tflops) and args.peak_tflops > 0):
        p.error(f"--peak-tflops must be a positive number, got {args.peak_tflops}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA GPU is available to PyTorch here")
    if args.dtype == "bf16" and args.device == "cuda" and not torch.cuda.is_bf16_supported():
        p.error("--dtype bf16: this CUDA GPU does not support bf16")
    return args


def load_transformers():
    try:
        import transformers
    except ImportError:
        return None
    transformers.logging.set_verbosity_error()
    return transformers


def hf_from_chapter(transformers, model, cfg):
    """Hugging Face's GPT2LMHeadModel with the chapter model's weights (its head tied to the embedding)."""
    config = transformers.GPT2Config(
        vocab_size=cfg["vocab_size"], n_positions=cfg["context_length"], n_embd=cfg["emb_dim"],
        n_layer=cfg["n_layers"], n_head=cfg["n_heads"], resid_pdrop=cfg["drop_rate"],
        embd_pdrop=cfg["drop_rate"], attn_pdrop=cfg["drop_rate"], layer_norm_epsilon=1e-5,
        bos_token_id=None, eos_token_id=None, pad_token_id=None, attn_implementation="sdpa")
    hf = transformers.GPT2LMHeadModel(config)
    sd = {"transformer.wte.weight": model.tok_emb.weight, "transformer.wpe.weight": model.pos_emb.weight,
          "transformer.ln_f.weight": model.final_norm.scale, "transformer.ln_f.bias": model.final_norm.shift}
    for i, b in enumerate(model.trf_blocks):
        h = f"transformer.h.{i}."
        att, ff = b.att, b.ff.layers
        sd[h + "attn.c_attn.weight"] = torch.cat([att.W_query.weight, att.W_key.weight, att.W_value.weight]).T
        sd[h + "attn.c_attn.bias"] = (torch.cat([att.W_query.bias, att.W_key.bias, att.W_value.bias])
                                      if att.W_query.bias is not None else torch.zeros(3 * cfg["emb_dim"]))
        sd[h + "attn.c_proj.weight"], sd[h + "attn.c_proj.bias"] = att.out_proj.weight.T, att.out_proj.bias
        sd[h + "mlp.c_fc.weight"], sd[h + "mlp.c_fc.bias"] = ff[0].weight.T, ff[0].bias
        sd[h + "mlp.c_proj.weight"], sd[h + "mlp.c_proj.bias"] = ff[2].weight.T, ff[2].bias
        sd[h + "ln_1.weight"], sd[h + "ln_1.bias"] = b.norm1.scale, b.norm1.shift
        sd[h + "ln_2.weight"], sd[h + "ln_2.bias"] = b.norm2.scale, b.norm2.shift
    hf.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=False)
    hf.tie_weights()
    return hf


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_training(model, logits_of, batches, args, device):
    """Median seconds of one training step (forward, loss, backward, AdamW) after the warm-up steps."""
    model.train()
    optimizer = fast_adamw(model, lr=1e-4, weight_decay=0.1)
    step_model = torch.compile(model) if args.compile else model
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == "bf16" else None
    times, losses = [], []
    for step, (inputs, targets) in enumerate(batches):
        sync(device)
        t0 = time.perf_counter()
        with ctx if ctx is not None else torch.enable_grad():
            logits = logits_of(step_model, inputs)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    return statistics.median(times), losses


def time_generation(run, args, device):
    """Median seconds of one greedy generation after the warm-up runs, and the ids it produced."""
    times = []
    for i in range(args.warmup + args.gen_repeats):
        sync(device)
        t0 = time.perf_counter()
        ids = run()
        sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times), ids


def line(label, value, unit, ref):
    ratio = f"{value / ref:5.2f}x HF" if ref else "   (HF not measured)"
    return f"  {label:<34} {value:10.1f} {unit}   {ratio}"


def main(argv=None):
    args = parse_args(argv)
    device = pick_device() if args.device == "auto" else torch.device(args.device)
    if args.dtype == "bf16" and device.type not in ("cpu", "cuda"):
        print(f"error: --dtype bf16 is measured on cpu or cuda only, the device is {device.type}", file=sys.stderr)
        return 2
    transformers = load_transformers()
    cfg = {"vocab_size": 50257, "context_length": CONTEXT_LENGTH, **MODEL_SIZES[args.model_size],
           "drop_rate": args.drop_rate, "qkv_bias": False}
    torch.manual_seed(args.seed)
    chapter = GPTModel(cfg)
    with torch.no_grad():  # GPT-2's initial scale for the embeddings, and its tied head, so all models match
        chapter.tok_emb.weight.normal_(0.0, 0.02)
        chapter.pos_emb.weight.normal_(0.0, 0.02)
        chapter.out_head.weight.copy_(chapter.tok_emb.weight)
    hf = hf_from_chapter(transformers, chapter, cfg) if transformers else None
    models = {  # label -> (model, function giving its logits)
        "chapter GPTModel": (chapter, lambda m, x: m(x)),
        "fast path (untied head)": (fast_from_chapter(chapter, cfg), lambda m, x: m(x)),
        "fast path (tied head)": (fast_from_chapter(chapter, cfg, tie_weights=True), lambda m, x: m(x)),
    }
    if hf is not None:
        models["Hugging Face GPT2LMHeadModel"] = (hf, lambda m, x: m(input_ids=x).logits)
    for model, _ in models.values():
        model.to(device)
    gen = torch.Generator().manual_seed(args.seed)
    data = torch.randint(0, cfg["vocab_size"], (args.warmup + args.steps, args.batch_size, args.seq_len + 1),
                         generator=gen)
    batches = [(d[:, :-1].to(device), d[:, 1:].to(device)) for d in data]
    print(f"device: {device.type}, dtype: {args.dtype}, model {args.model_size}, batch {args.batch_size} x "
          f"{args.seq_len}, threads: {torch.get_num_threads()}, compile: {args.compile}, "
          f"dropout: {args.drop_rate}")
    if hf is None:
        print(INSTALL_HF)

    tokens = args.batch_size * args.seq_len
    train = {}
    for label, (model, logits_of) in models.items():
        sec, losses = time_training(model, logits_of, batches, args, device)
        train[label] = (tokens / sec, losses)
    ref = train.get("Hugging Face GPT2LMHeadModel", (None,))[0]
    print(f"training tokens/s (median of {args.steps} steps after {args.warmup} warm-up):")
    for label, (tps, losses) in train.items():
        print(line(label, tps, "tokens/s", ref))
    print("first-step losses: " + ", ".join(f"{label} {losses[0]:.4f}" for label, (_, losses) in train.items()))
    if args.peak_tflops:
        n_params = sum(p.numel() for p in models["fast path (tied head)"][0].parameters())
        flops_per_token = 6 * n_params + 12 * cfg["n_layers"] * cfg["emb_dim"] * args.seq_len
        for label, (tps, _) in train.items():
            print(f"  MFU {label}: {100 * tps * flops_per_token / (args.peak_tflops * 1e12):.1f}%")

    if args.new_tokens == 0:
        return 0
    prompt = torch.tensor([PROMPT], device=device)
    runs = {
        "chapter generate() (no cache)": (chapter, lambda m: generate(m, prompt, args.new_tokens, CONTEXT_LENGTH)),
        "fast path generate_fast (KV cache)": (
            models["fast path (tied head)"][0],
            lambda m: generate_fast(m, prompt, args.new_tokens, CONTEXT_LENGTH)),
    }
    if hf is not None:
        runs["Hugging Face generate (KV cache)"] = (hf, lambda m: m.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens, do_sample=False))
    results = {}
    for label, (model, run) in runs.items():
        model.eval()
        if args.dtype == "bf16":
            model.to(torch.bfloat16)
        with torch.no_grad():
            sec, ids = time_generation(lambda: run(model), args, device)
        results[label] = (args.new_tokens / sec, ids.cpu())
    ref = results.get("Hugging Face generate (KV cache)", (None,))[0]
    print(f"greedy generation tokens/s (batch 1, {args.new_tokens} new tokens, median of {args.gen_repeats} runs):")
    for label, (tps, _) in results.items():
        print(line(label, tps, "tokens/s", ref))
    ids = [i for _, i in results.values()]
    print("greedy ids of every model agree:", all(torch.equal(ids[0], i) for i in ids[1:]))
    if hf is None:
        print(INSTALL_HF)
    return 0


if __name__ == "__main__":
    sys.exit(main())
