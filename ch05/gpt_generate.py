"""Generate text with GPT-2's pretrained weights (OpenAI's checkpoint or Hugging Face's safetensors).

    python ch05/gpt_generate.py --prompt "Every effort moves you"
    python ch05/gpt_generate.py --model-size 355M --temperature 1.0 --top-k 50 --seed 1
    python ch05/gpt_generate.py --weights-dir path/to/gpt2/124M          # OpenAI's files, no download
    python ch05/gpt_generate.py --safetensors path/to/model.safetensors  # a Hugging Face GPT-2 file

Without --safetensors the weights come from OpenAI's files: from --weights-dir if it holds them
(hparams.json, model.ckpt.*), otherwise they are downloaded once into --weights-dir/<size>
(default: the download cache). When they cannot be downloaded and LLMS_STANDIN_WEIGHTS=1 is set,
a small random stand-in model is used instead, with a loud banner (see chapter 5, section 5.5).
For --safetensors the configuration is read from Hugging Face's config.json beside the file when
there is one, else taken from --model-size. A --weights-dir that does not exist is an error (it is
never created for a mistyped name). --max-new-tokens is capped at MAX_NEW_TOKENS (10,000).
"""
import argparse
import json
import sys
from pathlib import Path

import tiktoken
import torch

from previous_chapters import (MAX_NEW_TOKENS, DownloadError, GPT2_SIZES, GPTModel, check_model_size, generate,
                               gpt2_config, load_gpt2_from_dir, load_gpt2_params_or_standin,
                               load_hf_safetensors_into_gpt, load_weights_into_gpt, pick_device, range_error,
                               run_script, text_to_token_ids, token_ids_to_text)

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model-size", default="124M", help=f"GPT-2 size, one of: {', '.join(GPT2_SIZES)}")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--weights-dir", type=Path, default=None,
                     help="folder with OpenAI's files, or the folder holding one subfolder per size")
    src.add_argument("--safetensors", type=Path, default=None, help="a Hugging Face GPT-2 model.safetensors")
    p.add_argument("--prompt", default="Every effort moves you")
    p.add_argument("--max-new-tokens", type=int, default=50, help=f"tokens to generate, 0 to {MAX_NEW_TOKENS:,}")
    p.add_argument("--temperature", type=float, default=0.0, help="0 means greedy decoding")
    p.add_argument("--top-k", type=int, default=None, help="sample only from the k most likely tokens")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (checked: it must be present)")
    args = p.parse_args(argv)
    try:
        check_model_size(args.model_size)
    except ValueError as exc:
        p.error(f"--model-size: {exc}")
    if args.max_new_tokens < 0:
        p.error(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if args.max_new_tokens > MAX_NEW_TOKENS:
        p.error(f"--max-new-tokens must be at most {MAX_NEW_TOKENS:,}, got {args.max_new_tokens:,}")
    if range_error("--temperature", args.temperature) is not None:  # nan, inf
        p.error(range_error("--temperature", args.temperature))
    if args.temperature < 0:
        p.error(f"--temperature must be >= 0 (0 means greedy), got {args.temperature}")
    seed_error = range_error("--seed", args.seed, -2 ** 63, 2 ** 64 - 1)  # what torch.manual_seed accepts
    if seed_error:
        p.error(seed_error)
    if args.top_k is not None and args.top_k < 1:
        p.error(f"--top-k must be at least 1, got {args.top_k}")
    if not args.prompt:
        p.error("--prompt must not be empty")
    if args.weights_dir is not None and not args.weights_dir.is_dir():
        what = "is not a folder" if args.weights_dir.exists() else "does not exist"
        p.error(f"--weights-dir {args.weights_dir} {what}; create it first or leave the option out "
                "to use the download cache")
    if args.safetensors is not None and not args.safetensors.is_file():
        p.error(f"--safetensors file not found: {args.safetensors}")
    try:
        args.device = pick_device(args.device)  # before any weights are read
    except ValueError as exc:
        p.error(f"--device {args.device}: {exc}")
    return args


def safetensors_config(path, model_size):
    """GPTModel config for a Hugging Face file: its config.json if present, else the named size."""
    hf_config = Path(path).with_name("config.json")
    if hf_config.is_file():
        try:
            c = json.loads(hf_config.read_text(encoding="utf-8"))
            settings = {"n_vocab": c["vocab_size"], "n_ctx": c.get("n_positions", c.get("n_ctx")),
                        "n_embd": c["n_embd"], "n_head": c["n_head"], "n_layer": c["n_layer"]}
        except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:  # JSON, UTF-8, keys
            what = f"no {exc}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
            raise ValueError(f"--safetensors {path}: the config.json beside it is not a Hugging Face GPT-2 "
                             f"configuration ({what})") from None
        bad = {k: v for k, v in settings.items() if not (type(v) is int and v > 0)}
        if bad or settings["n_embd"] % settings["n_head"]:
            what = f"not positive integers: {bad}" if bad else "n_embd is not a multiple of n_head"
            raise ValueError(f"--safetensors {path}: the config.json beside it is not a Hugging Face GPT-2 "
                             f"configuration ({what})")
    else:
        s = GPT2_SIZES[model_size]
        settings = {"n_vocab": 50257, "n_ctx": 1024, "n_embd": s["emb_dim"], "n_head": s["n_heads"],
                    "n_layer": s["n_layers"]}
    return gpt2_config(settings)


def load_model(args):
    """(model, description) for the weights the arguments name."""
    if args.safetensors is not None:
        config = safetensors_config(args.safetensors, args.model_size)
        model = GPTModel(config)
        try:
            load_hf_safetensors_into_gpt(model, args.safetensors)
        except ValueError as exc:
            raise ValueError(f"--safetensors {args.safetensors}: {exc}") from None
        return model, f"Hugging Face weights from {args.safetensors.name}"
    if args.weights_dir is not None and (args.weights_dir / "hparams.json").is_file():
        try:
            settings, params = load_gpt2_from_dir(args.weights_dir)
        except ValueError as exc:
            raise ValueError(f"--weights-dir {args.weights_dir}: {exc}") from None
        description = f"OpenAI GPT-2 weights from {args.weights_dir.name}"
    else:
        settings, params, standin = load_gpt2_params_or_standin(args.model_size, args.weights_dir)
        description = "STAND-IN weights (not GPT-2)" if standin else f"OpenAI GPT-2 {args.model_size} weights"
    model = GPTModel(gpt2_config(settings))
    load_weights_into_gpt(model, params)
    return model, description


def main(argv=None):
    args = parse_args(argv)
    device = args.device  # checked by parse_args
    model, description = load_model(args)
    model.to(device).eval()
    print(f"[{description}; {sum(p.numel() for p in model.parameters()):,} parameters]", file=sys.stderr)
    tokenizer = tiktoken.get_encoding("gpt2")
    torch.manual_seed(args.seed)
    idx = text_to_token_ids(args.prompt, tokenizer).to(device)
    out = generate(model, idx, args.max_new_tokens, model.pos_emb.weight.shape[0],
                   temperature=args.temperature, top_k=args.top_k, eos_id=50256)
    print(token_ids_to_text(out.cpu(), tokenizer))
    return 0


if __name__ == "__main__":
    run_script(main, expected=(ValueError, DownloadError))
