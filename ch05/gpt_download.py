"""Download OpenAI's GPT-2 checkpoint (124M, 355M, 774M or 1558M) and read it into a parameter dict.

    python ch05/gpt_download.py --model-size 124M                 # into the download cache
    python ch05/gpt_download.py --model-size 355M --models-dir gpt2

As a module, as in the book:

    from gpt_download import download_and_load_gpt2
    settings, params = download_and_load_gpt2(model_size="124M", models_dir="gpt2")

The seven files of a size (checkpoint, encoder.json, hparams.json, model.ckpt.data-00000-of-00001,
model.ckpt.index, model.ckpt.meta, vocab.bpe) come from OpenAI's server, with a backup mirror,
through chapter 1's download helper: cached, retried, length-checked, and for encoder.json and
vocab.bpe checked against their known SHA-256. TensorFlow reads the checkpoint (and verifies its
per-tensor checksums). The code itself lives in chapter 5's notebook, section 5.5 (cells tagged
"export"), and reaches this script through the generated previous_chapters.py.
"""
import argparse

from previous_chapters import (DownloadError, GPT2_FILES, GPT2_SIZES, GPT2_URLS, check_model_size,  # noqa: F401
                               check_output, check_range, download_and_load_gpt2, gpt2_models_dir,
                               gpt2_remote_file, load_gpt2_from_dir, load_gpt2_params_from_tf_ckpt, run_script)


def count_arrays(params):
    """(number of arrays, number of values) in a nested params dict."""
    if isinstance(params, dict):
        params = list(params.values())
    if isinstance(params, list):
        counts = [count_arrays(p) for p in params]
        return sum(c[0] for c in counts), sum(c[1] for c in counts)
    return 1, params.size


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-size", default="124M", help=f"one of: {', '.join(GPT2_SIZES)}")
    p.add_argument("--models-dir", default=None,
                   help="folder that receives one subfolder per size (default: the download cache)")
    p.add_argument("--retries", type=int, default=3, help="attempts per URL, 1 to 100")
    args = p.parse_args(argv)
    try:
        check_model_size(args.model_size)
    except ValueError as exc:
        p.error(f"--model-size: {exc}")
    check_range(p, args, ("retries",), 1, 100)
    if args.models_dir is not None and not args.models_dir.strip():
        p.error(f"--models-dir must name a folder, got {args.models_dir!r}")
    target = gpt2_models_dir(args.models_dir) / args.model_size
    where = "--models-dir" if args.models_dir is not None else "the download cache"
    check_output(p, where, target, names=())  # a file in the way, or not writable: before downloading
    created = [d for d in (target, *target.parents) if not d.exists()]  # folders this run will make
    try:
        settings, params = download_and_load_gpt2(args.model_size, args.models_dir, retries=args.retries)
    except DownloadError:
        for folder in created:  # innermost first: leave no empty folders behind a failed download
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    except ValueError as exc:  # files there, but not a readable GPT-2 checkpoint
        named = where if args.models_dir is None else f"{where} {args.models_dir}"
        raise ValueError(f"{named}: {exc}") from None
    n_arrays, n_values = count_arrays(params)
    print(f"GPT-2 {args.model_size}: {settings}")
    print(f"read {n_arrays} arrays holding {n_values:,} values "
          f"into {gpt2_models_dir(args.models_dir).name}/{args.model_size}")
    return 0


if __name__ == "__main__":
    run_script(main, expected=(ValueError, DownloadError))
