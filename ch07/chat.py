"""Chat with an instruction-fine-tuned GPT in the terminal (chapter 7).

    python ch07/chat.py --checkpoint runs/instruction-finetune/run-001/model.pth
    printf 'Name a primary color.\\n/quit\\n' | python ch07/chat.py --checkpoint model.pth   # scripted

Each line you type is one instruction; the Alpaca prompt around it is built for you, and the
answer is printed token by token as it is generated, until the end-of-text token or
--max-new-tokens. Every instruction is answered on its own (the model was fine-tuned on single
turns, so there is no conversation history). /quit or end of input (Ctrl+D) leaves.
"""
import argparse
import math
import sys
from pathlib import Path

import tiktoken
import torch

from previous_chapters import format_input, generate, load_finetuned, pick_device, run_script

EOS_ID = 50256


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="model.pth from gpt_instruction_finetune.py")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest answer in tokens (default: 256)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 means greedy decoding (default: 0)")
    p.add_argument("--top-k", type=int, default=None, help="sample only from the k most likely tokens")
    p.add_argument("--seed", type=int, default=123, help="default: 123")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="default: auto")
    args = p.parse_args(argv)
    if not args.checkpoint.is_file():
        p.error(f"--checkpoint not found: {args.checkpoint}")
    if args.max_new_tokens < 1:
        p.error(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        p.error(f"--temperature must be >= 0 (0 means greedy), got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        p.error(f"--top-k must be at least 1, got {args.top_k}")
    return args


def stream_tokens(model, idx, max_new_tokens, context_size, temperature=0.0, top_k=None, eos_id=EOS_ID):
    """Yield new token ids one at a time (chapter 5's `generate`, one step per token), stop at eos_id."""
    for _ in range(max_new_tokens):
        idx = generate(model, idx, 1, context_size, temperature, top_k)
        token = idx[0, -1].item()
        if token == eos_id:
            return
        yield token


def answer(model, tokenizer, instruction, device, args, out=sys.stdout):
    """Print the model's answer to one instruction as it is generated; return the whole answer."""
    prompt = format_input({"instruction": instruction, "input": ""})
    context_size = model.pos_emb.weight.shape[0]
    idx = torch.tensor([tokenizer.encode(prompt, disallowed_special=())[-context_size:]], device=device)
    ids, shown = [], ""
    for token in stream_tokens(model, idx, args.max_new_tokens, context_size, args.temperature, args.top_k):
        ids.append(token)
        text = tokenizer.decode(ids)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            out.write(text[len(shown):])
            out.flush()
            shown = text
    text = tokenizer.decode(ids)
    out.write(text[len(shown):] + "\n")
    out.flush()
    return text


def main(argv=None, stdin=None):
    args = parse_args(argv)
    stdin = stdin or sys.stdin
    device = pick_device() if args.device == "auto" else torch.device(args.device)
    model, _, extra = load_finetuned(args.checkpoint, device, flag="--checkpoint")
    tokenizer = tiktoken.get_encoding("gpt2")
    torch.manual_seed(args.seed)
    note = " (STAND-IN weights: expect gibberish)" if extra.get("is_standin") else ""
    print(f"loaded {args.checkpoint.name}{note}. Type an instruction; /quit to leave.", file=sys.stderr)
    while True:
        print("you> ", end="", flush=True)
        line = stdin.readline()
        if not line:  # end of input
            print()
            break
        line = line.strip()
        if line == "/quit":
            break
        if not line:
            continue
        print("model> ", end="", flush=True)
        answer(model, tokenizer, line, device, args)
    return 0


def main_until_interrupted(argv=None):
    try:
        return main(argv)
    except KeyboardInterrupt:  # Ctrl+C ends the chat like /quit
        print()
        return 0


if __name__ == "__main__":
    run_script(main_until_interrupted)
