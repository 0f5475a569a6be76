"""Encode throughput of bpe_from_scratch.BPETokenizer against tiktoken's "gpt2" (MB/s and ratio).

Both tokenizers encode the same text: the-verdict.txt (or --file) repeated to about --mb megabytes.
Ours starts with an empty per-piece cache on every repeat, so each timing includes filling it.
Each tokenizer runs --repeats times; the best time counts (least disturbed by other work on
the machine). The ids of the two are checked to be equal before anything is timed.

    python ch02/bench_bpe.py            # about 4 MB, 3 repeats
    python ch02/bench_bpe.py --mb 1 --repeats 5
    python ch02/bench_bpe.py --file some.txt   # a less repetitive text: fewer cache hits

Before any work, --mb is checked against the machine's memory (about 20 bytes per byte of text,
see BYTES_PER_TEXT_BYTE) and --file must be a UTF-8 text file.
"""
import argparse
import time

import tiktoken

from bpe_from_scratch import BPETokenizer
from previous_chapters import DownloadError, check_range, download_file, memory_error, read_text, run_script

# measured peak memory: about 0.3 GB for the two tokenizers plus about 11 bytes per byte of text
# (the text, its pieces and two lists of ids); the check allows 20 per byte to leave a margin
BASE_BYTES, BYTES_PER_TEXT_BYTE = 0.3e9, 20


def best_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=4.0, help="size of the benchmark text in MB (default 4)")
    parser.add_argument("--file", help="a UTF-8 text file to use instead of the-verdict.txt")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per tokenizer (default 3)")
    args = parser.parse_args(argv)
    check_range(parser, args, ("mb",), 0, low_open=True)  # also NaN and inf
    check_range(parser, args, ("repeats",), 1)
    problem = memory_error(f"--mb {args.mb:g}", BASE_BYTES + BYTES_PER_TEXT_BYTE * args.mb * 1e6)
    if problem:
        parser.error(f"{problem} (about {BYTES_PER_TEXT_BYTE} bytes per byte of text); lower --mb")

    if args.file:
        try:
            base = read_text([args.file], flag="--file")  # missing, a folder, not UTF-8, binary
        except ValueError as exc:
            parser.error(str(exc))
        if not base:
            parser.error(f"--file {args.file} is empty")
        name = args.file
    else:
        base = download_file("the-verdict.txt", progress=False).read_text(encoding="utf-8")
        name = "the-verdict.txt"
    copies = max(1, round(args.mb * 1e6 / len(base.encode("utf-8"))))
    text = base * copies
    size_mb = len(text.encode("utf-8")) / 1e6

    ours = BPETokenizer.from_gpt2_files(download_file("encoder.json", progress=False),
                                        download_file("vocab.bpe", progress=False))
    ref = tiktoken.get_encoding("gpt2")
    if ours.encode(base, disallowed_special=()) != ref.encode(base, disallowed_special=()):
        raise SystemExit(f"the two tokenizers disagree on {name}; not benchmarking")

    def run_ours():
        ours._cache.clear()  # count filling the cache in every run
        return ours.encode(text, disallowed_special=())

    t_ours = best_time(run_ours, args.repeats)
    t_ref = best_time(lambda: ref.encode(text, disallowed_special=()), args.repeats)
    print(f"text: {name} x {copies} = {size_mb:.2f} MB, best of {args.repeats} runs")
    print(f"bpe_from_scratch: {size_mb / t_ours:8.2f} MB/s  ({t_ours:.3f} s)")
    print(f"tiktoken gpt2:    {size_mb / t_ref:8.2f} MB/s  ({t_ref:.3f} s)")
    print(f"tiktoken is {t_ours / t_ref:.1f}x faster than bpe_from_scratch")


if __name__ == "__main__":
    run_script(main, expected=(ValueError, DownloadError))  # bad input: `error: ...`, exit code 2
