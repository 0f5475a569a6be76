"""Evaluate instruction-following answers (chapter 7, section 7.8): offline metrics, optionally an LLM judge.

    python ch07/evaluate.py runs/instruction-finetune/run-001/test-responses.json
    python ch07/evaluate.py RESPONSES.json --checkpoint runs/instruction-finetune/run-001/model.pth
    python ch07/evaluate.py RESPONSES.json --judge-url http://127.0.0.1:11434            # Ollama
    python ch07/evaluate.py RESPONSES.json --judge-url http://127.0.0.1:8080 --api openai  # llama-server, LM Studio, vLLM

RESPONSES.json is a list of entries with "instruction", "input" (optional), "output" (the
reference) and "model_response", as gpt_instruction_finetune.py writes it. Always printed: the
mean ROUGE-L F1 (rouge-score, Porter stemming) and the normalised exact-match rate; with
--checkpoint also the model's per-token negative log-likelihood of the reference answers.
With --judge-url, each answer is scored 0-100 by the judge model (temperature 0, fixed seed);
a failed request or a reply without a usable number is reported for its entry and left out of
the average, printed as "judge average: 51.20 (108 of 110 scored)".
"""
import argparse
import json
import math
from pathlib import Path

import tiktoken

from previous_chapters import (JUDGE_PATHS, JudgeUnreachable, check_instruction_data, judge_responses,
                               judge_summary, load_finetuned, offline_metrics, pick_device, response_nll,
                               run_script)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("responses", type=Path, help="JSON file of entries with model_response")
    p.add_argument("--checkpoint", type=Path, default=None, help="model.pth: also report the reference NLL")
    p.add_argument("--judge-url", default=None, help="base URL of the judge server (no judge without it)")
    p.add_argument("--judge-model", default="llama3", help="model name the server knows (default: llama3)")
    p.add_argument("--api", default="ollama", choices=sorted(JUDGE_PATHS),
                   help="ollama: /api/chat; openai: /v1/chat/completions (default: ollama)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per judge request (default: 60)")
    p.add_argument("--seed", type=int, default=123, help="judge sampling seed (default: 123)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="default: auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bar while judging")
    args = p.parse_args(argv)
    if not args.responses.is_file():
        p.error(f"responses file not found: {args.responses}")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        p.error(f"--checkpoint not found: {args.checkpoint}")
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        p.error(f"--timeout must be a positive number of seconds, got {args.timeout}")
    if args.judge_url is not None and not args.judge_url.startswith(("http://", "https://")):
        p.error(f"--judge-url must start with http:// or https://, got {args.judge_url!r}")
    return args


def load_responses(path):
    try:
        entries = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{Path(path).name}: not valid JSON ({exc})") from None
    check_instruction_data(entries, source=Path(path).name)
    for i, entry in enumerate(entries):
        if not isinstance(entry.get("model_response"), str):
            raise ValueError(f"{Path(path).name}: entry {i} has no string 'model_response'")
    if not entries:
        raise ValueError(f"{Path(path).name}: no entries")
    return entries


def main(argv=None):
    args = parse_args(argv)
    entries = load_responses(args.responses)
    if args.checkpoint is not None:  # read (and refused if it is not one) before anything is printed
        device = pick_device() if args.device == "auto" else args.device
        model, _, _ = load_finetuned(args.checkpoint, device, flag="--checkpoint")
    metrics = offline_metrics(entries)
    print(f"responses: {metrics['n']}")
    print(f"ROUGE-L F1: {metrics['rouge_l_f1']:.1f}%")
    print(f"exact match: {metrics['exact_match']:.1f}%")
    if args.checkpoint is not None:
        nll = response_nll(model, entries, tiktoken.get_encoding("gpt2"), device)
        print(f"reference-answer NLL: {nll:.3f} nats/token")
    if args.judge_url is not None:
        try:
            result = judge_responses(entries, args.judge_url, args.judge_model, args.api, args.timeout,
                                     args.seed, progress=not args.no_progress)
        except JudgeUnreachable as exc:
            raise ValueError(f"--judge-url {args.judge_url}: {exc}; start the server (e.g. `ollama serve`) "
                             "or leave out --judge-url") from None
        for index, reason in result["problems"]:
            print(f"judge, entry {index}: {reason}")
        print(judge_summary(result))
    return 0


if __name__ == "__main__":
    run_script(main)
