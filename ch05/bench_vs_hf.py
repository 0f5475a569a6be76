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
import copy
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from previous_chapters import (GPT2_SIZES, GPTModel, fast_adamw, fast_from_chapter, generate, generate_fast, memory_error,
                               pick_device)

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
    cfg = {"vocab_size": 50257, "context_length": CONTEXT_LENGTH, **MODEL_SIZES[args.model_size]}
    device = pick_device() if args.device == "auto" else torch.device(args.device)
    problem = memory_error(f"--model-size {args.model_size} with --batch-size {args.batch_size} x --seq-len "
                           f"{args.seq_len}", memory_needed(cfg, args.batch_size, args.seq_len), device)
    if problem:
        p.error(f"{problem}; lower --batch-size, --seq-len or --model-size")
    return args


def memory_needed(cfg, batch, seq_len):
    """A rough upper estimate of the bytes held at once: four models' float32 weights (chapter, fast
    untied and tied, Hugging Face's), one model's gradients and AdamW state, and one training step's
    activations (about 34 * emb_dim + 5 * n_heads * seq_len values per token and layer, plus the
    logits, their softmax and gradient)."""
    emb, layers = cfg["emb_dim"], cfg["n_layers"]
    params = 2 * cfg["vocab_size"] * emb + cfg["context_length"] * emb + 12 * layers * emb ** 2
    tokens = batch * seq_len
    activations = tokens * layers * (34 * emb + 5 * cfg["n_heads"] * seq_len) + 3 * tokens * cfg["vocab_size"]
    return 4 * (7 * params + activations)


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


def make_stepper(model, logits_of, bf16, args, device):
    """A function running one training step (forward, loss, backward, AdamW) on a batch; it
    returns the step's seconds and loss."""
    model.train()
    optimizer = fast_adamw(model, lr=1e-4, weight_decay=0.1)
    step_model = torch.compile(model) if args.compile else model

    def step(inputs, targets):
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = logits_of(step_model, inputs)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(device)
        return time.perf_counter() - t0, loss.item()
    return step


def time_training(models, batches, args, device, ref_label):
    """{label: (median seconds per step, median ratio of the reference's step time to this one's
    (None without a reference), first loss)}.

    Each model's steps alternate with the reference model's (Hugging Face), step by step and in
    turns, so that a machine busy with other work slows both alike; only two models hold optimizer
    state at a time.
    """
    ref = make_stepper(*models[ref_label], args, device) if ref_label in models else None
    ref_times, results = [], {}
    for label, (model, logits_of, bf16) in models.items():
        if label == ref_label:
            continue
        step = make_stepper(model, logits_of, bf16, args, device)
        times, ratios, losses = [], [], []
        for i, (inputs, targets) in enumerate(batches):
            order = [step, ref] if i % 2 else [ref, step]
            measured = {id(f): f(inputs, targets) for f in order if f is not None}
            sec, loss = measured[id(step)]
            losses.append(loss)
            if i >= args.warmup:
                times.append(sec)
                if ref is not None:
                    ref_times.append(measured[id(ref)][0])
                    ratios.append(measured[id(ref)][0] / sec)
        model.zero_grad(set_to_none=True)  # free its gradients (its optimizer goes with `step`)
        del step
        results[label] = (statistics.median(times), statistics.median(ratios) if ratios else None, losses[0])
    if ref is not None:
        results[ref_label] = (statistics.median(ref_times), 1.0, None)
    return results


def time_generation(runs, args, device, ref_label):
    """{label: (median seconds per generation, median ratio of the reference's time to this one's, ids)}.

    The models take turns, one generation each per round (in a rotating order), so that other
    work on the machine slows them alike; the first args.warmup rounds are not timed.
    """
    labels = list(runs)
    times = {label: [] for label in labels}
    ids = {}
    for r in range(args.warmup + args.gen_repeats):
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            sync(device)
            t0 = time.perf_counter()
            ids[label] = runs[label]()
            sync(device)
            if r >= args.warmup:
                times[label].append(time.perf_counter() - t0)
    results = {}
    for label in labels:
        ratios = [a / b for a, b in zip(times[ref_label], times[label])] if ref_label in runs else []
        results[label] = (statistics.median(times[label]), statistics.median(ratios) if ratios else None,
                          ids[label].cpu())
    return results


def line(label, value, unit, ratio):
    ratio = f"{ratio:5.2f}x HF" if ratio else "   (HF not measured)"
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
    bf16 = args.dtype == "bf16"

    def logits(m, x):
        return m(x)
    models = {  # label -> (model, function giving its logits, bf16 autocast)
        "chapter GPTModel": (chapter, logits, bf16),
        "fast path (untied head)": (fast_from_chapter(chapter, cfg), logits, bf16),
        "fast path (tied head)": (fast_from_chapter(chapter, cfg, tie_weights=True), logits, bf16),
    }
    if bf16:  # the same fast model without autocast, for the bf16 vs fp32 speed-up in this run
        models["fast path (tied head) in fp32"] = (fast_from_chapter(chapter, cfg, tie_weights=True), logits, False)
    if hf is not None:
        models["Hugging Face GPT2LMHeadModel"] = (hf, lambda m, x: m(input_ids=x).logits, bf16)
    for model, _, _ in models.values():
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

    if args.new_tokens > 0:
        prompt = torch.tensor([PROMPT], device=device)
        runs = {
            "chapter generate() (no cache)": (chapter, lambda m: generate(m, prompt, args.new_tokens, CONTEXT_LENGTH)),
            "fast path generate_fast (KV cache)": (
                models["fast path (tied head)"][0],
                lambda m: generate_fast(m, prompt, args.new_tokens, CONTEXT_LENGTH)),
        }
        if hf is not None:
            runs["Hugging Face generate (KV cache)"] = (hf, lambda m: m.generate(
                prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=args.new_tokens, do_sample=False))
        for label, (model, run) in runs.items():  # generation first, from the weights every model shares
            if bf16:  # bf16 copies; the fp32 models train below
                runs[label] = (copy.deepcopy(model).to(torch.bfloat16), run)
            runs[label][0].eval()
        hf_gen = "Hugging Face generate (KV cache)"
        with torch.no_grad():
            results = time_generation({label: (lambda m=m, run=run: run(m)) for label, (m, run) in runs.items()},
                                      args, device, hf_gen)
        print(f"greedy generation tokens/s (batch 1, {args.new_tokens} new tokens, median of {args.gen_repeats} "
              "runs; the models take turns, the ratio is the median of the rounds' ratios):")
        for label, (sec, ratio, _) in results.items():
            print(line(label, args.new_tokens / sec, "tokens/s", ratio))
        ids = [i for _, _, i in results.values()]
        agree = all(torch.equal(ids[0], i) for i in ids[1:])
        note = " (bf16 rounding differs between implementations)" if bf16 and not agree else ""
        print(f"greedy ids of every model agree: {agree}{note}")
        del runs  # the bf16 copies

    tokens = args.batch_size * args.seq_len
    hf_label = "Hugging Face GPT2LMHeadModel"
    train = time_training(models, batches, args, device, hf_label)
    print(f"training tokens/s (median of {args.steps} steps after {args.warmup} warm-up; each model's steps "
          "alternate with Hugging Face's, the ratio is the median of the paired steps' ratios):")
    for label, (sec, ratio, _) in train.items():
        print(line(label, tokens / sec, "tokens/s", ratio))
    if bf16 and hf is not None:
        speedup = train["fast path (tied head)"][1] / train["fast path (tied head) in fp32"][1]
        print(f"fast path (tied head), bf16 autocast vs fp32 (both against Hugging Face in bf16): {speedup:.2f}x")
    losses = [f"{label} {loss:.4f}" for label, (_, _, loss) in train.items() if loss is not None]
    print("first-step losses (same weights, same batch): " + ", ".join(losses))
    if args.peak_tflops:
        n_params = sum(p.numel() for p in models["fast path (tied head)"][0].parameters())
        flops_per_token = 6 * n_params + 12 * cfg["n_layers"] * cfg["emb_dim"] * args.seq_len
        for label, (sec, _, _) in train.items():
            print(f"  MFU {label}: {100 * tokens / sec * flops_per_token / (args.peak_tflops * 1e12):.1f}%")

    if hf is None:
        print(INSTALL_HF)
    return 0


if __name__ == "__main__":
    sys.exit(main())
