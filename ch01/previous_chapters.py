# Generated from the cells tagged "export" in the notebooks below: only what this folder's
# notebooks and scripts use. Edit the notebooks, not this file; regenerate with:
#     python tests/generate_previous_chapters.py
#
# ch01/ch01.ipynb: pick_device
# ch01/download-helper.ipynb: RemoteFile, KNOWN_FILES, DownloadError, cache_dir, download_file
# ch01/how-the-scripts-are-built.ipynb (the scripts' tooling, not a lesson): TORCHRUN_VARS,
#     distributed_env, exit_without_teardown, MAX_NPROC, ScriptArgumentParser, nproc_count,
#     add_nproc_argument, free_port, launch_worker, stop_workers, launch, run_script, range_error,
#     read_text

import os
import torch
import hashlib
import http.client
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from tqdm import tqdm
import sys
import argparse
import multiprocessing
import multiprocessing.util
import signal
import socket
from multiprocessing.connection import wait
import math


# ---- from ch01/ch01.ipynb ----

def pick_device(name="auto", local_rank=0):
    """The torch.device to compute on.

    name="auto" picks the fastest device PyTorch can use here: CUDA, then Apple's MPS, then the
    CPU. Setting LLMS_DEVICE to cpu, cuda or mps overrides that choice; the test command sets
    LLMS_DEVICE=cpu so that every stored output means the same on every machine. Any other name
    ("cpu", "cuda", "cuda:1", "mps") is checked: a ValueError says when it is not available.
    A process started by torchrun passes its local_rank to get its own GPU of "cuda".
    """
    if name == "auto":
        name = os.environ.get("LLMS_DEVICE")
        if name and name not in ("cpu", "cuda", "mps"):
            raise ValueError(f"LLMS_DEVICE must be cpu, cuda or mps, got {name!r}")
        if not name:
            name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was requested (--device or LLMS_DEVICE), but CUDA is not available")
        index = local_rank if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} (GPU {index}) was requested, but only "
                             f"{torch.cuda.device_count()} CUDA GPU(s) are available")
        return device if index == 0 and device.index is None else torch.device("cuda", index)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} was requested (--device or LLMS_DEVICE), but MPS is not available")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


# ---- from ch01/download-helper.ipynb ----

@dataclass(frozen=True)
class RemoteFile:
    name: str                # file name in the cache and in a mirror folder
    urls: tuple              # primary URL first, then backups
    sha256: str = None       # of the content we use (for a zip: of `member`)
    size: int = None         # in bytes; checked when no sha256 is known
    member: str = None       # for a zip archive: the file inside it that we keep


_BOOK = "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/"
_BOOK_CDN = "https://cdn.jsdelivr.net/gh/rasbt/LLMs-from-scratch@main/"
_OPENAI = "https://openaipublic.blob.core.windows.net/gpt-2/"

KNOWN_FILES = {f.name: f for f in [
    RemoteFile("the-verdict.txt",
               (_BOOK + "ch02/01_main-chapter-code/the-verdict.txt",
                _BOOK_CDN + "ch02/01_main-chapter-code/the-verdict.txt"),
               sha256="b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f"),
    RemoteFile("sms+spam+collection.zip",
               ("https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
                "https://f001.backblazeb2.com/file/LLMs-from-scratch/sms%2Bspam%2Bcollection.zip"),
               sha256="7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d",
               member="SMSSpamCollection"),
    RemoteFile("instruction-data.json",
               (_BOOK + "ch07/01_main-chapter-code/instruction-data.json",
                _BOOK_CDN + "ch07/01_main-chapter-code/instruction-data.json"),
               sha256="7e09a9af353722ca15c18bc580f093f9c39d3178335a75177319cb1e1d163944"),
    RemoteFile("encoder.json", (_OPENAI + "models/124M/encoder.json", _OPENAI + "encodings/main/encoder.json"),
               sha256="196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
    RemoteFile("vocab.bpe", (_OPENAI + "models/124M/vocab.bpe", _OPENAI + "encodings/main/vocab.bpe"),
               sha256="1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
]}


class DownloadError(RuntimeError):
    """Every source of a file failed; the message says what was tried and what to do."""


def cache_dir():
    return Path(os.environ.get("LLMS_CACHE") or Path.home() / ".cache" / "llms-from-scratch")


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check(path, remote):
    """None if the file at `path` is what `remote` promises, else why it is not."""
    if remote.sha256 is not None:
        got = _sha256(path)
        return None if got == remote.sha256 else f"checksum mismatch (sha256 {got[:12]}…, expected {remote.sha256[:12]}…)"
    if remote.size is not None and path.stat().st_size != remote.size:
        return f"size mismatch ({path.stat().st_size} bytes, expected {remote.size})"
    return None


def _fetch(url, out, timeout, progress, label):
    """Stream `url` into the open binary file `out`."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        total = response.headers.get("Content-Length")
        total = int(total) if total else None
        received = 0
        with tqdm(total=total, unit="B", unit_scale=True, desc=label, disable=not progress) as bar:
            for chunk in iter(lambda: response.read(1 << 16), b""):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received != total:
        raise ConnectionError(f"truncated download: got {received} of {total} bytes")


def _install(candidate, remote, target):
    """Verify `candidate` (the downloaded file) and atomically move what we keep to `target`."""
    if remote.member is not None:
        try:
            with zipfile.ZipFile(candidate) as zf, zf.open(remote.member) as src:
                member = candidate.with_name(candidate.name + ".member")
                with open(member, "wb") as dst:
                    for chunk in iter(lambda: src.read(1 << 20), b""):
                        dst.write(chunk)
        except (zipfile.BadZipFile, KeyError) as exc:
            raise ValueError(f"not a zip holding {remote.member!r} ({exc})") from None
        os.replace(member, candidate)
    problem = _check(candidate, remote)
    if problem:
        raise ValueError(problem)
    os.replace(candidate, target)


def _attempt(source, remote, target, timeout, progress):
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{remote.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            if isinstance(source, Path):
                with open(source, "rb") as src:
                    shutil.copyfileobj(src, out)
            else:
                _fetch(source, out, timeout, progress, remote.name)
        _install(Path(tmp), remote, target)
    finally:
        for leftover in (Path(tmp), Path(tmp + ".member")):
            leftover.unlink(missing_ok=True)


def _is_transient(exc):
    """Worth retrying: server errors, dropped or refused connections, timeouts."""
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500
    return isinstance(exc, (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException))


def download_file(file, dest_dir=None, *, retries=3, backoff=1.0, timeout=30, progress=True):
    """Return the path of a verified local copy of `file` (a RemoteFile or a KNOWN_FILES name)."""
    if isinstance(file, str):
        if file not in KNOWN_FILES:
            raise ValueError(f"unknown file {file!r}; known files: {', '.join(KNOWN_FILES)}")
        file = KNOWN_FILES[file]
    target = (Path(dest_dir) if dest_dir is not None else cache_dir()) / (file.member or file.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and _check(target, file) is None:
        return target
    mirror = os.environ.get("LLMS_MIRROR")
    failures = []
    for source in ([Path(mirror) / file.name] if mirror else []) + list(file.urls):
        attempts = 1 if isinstance(source, Path) else max(1, retries)
        for attempt in range(1, attempts + 1):
            try:
                _attempt(source, file, target, timeout, progress)
                return target
            except (OSError, ValueError, http.client.HTTPException) as exc:
                if attempt == attempts or not _is_transient(exc):
                    failures.append(f"  - {'mirror ' if isinstance(source, Path) else ''}{source}: {exc} "
                                    f"(attempt {attempt} of {attempts})")
                    break
                time.sleep(backoff * 2 ** (attempt - 1))
    raise DownloadError(
        f"could not download {file.name!r}. Tried:\n" + "\n".join(failures)
        + f"\nDownload it by hand from one of the URLs above and save it as {target}"
        + (f" (the member {file.member!r} of the zip)" if file.member else "")
        + ",\nor set LLMS_MIRROR to a folder that holds it.")


# ---- from ch01/how-the-scripts-are-built.ipynb ----

TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


def distributed_env(env=None):
    """(rank, local_rank, world_size, launched_by_torchrun) from torchrun's environment variables."""
    env = os.environ if env is None else env
    present = [k for k in TORCHRUN_VARS if k in env]
    if not present:
        return 0, 0, 1, False
    if len(present) < len(TORCHRUN_VARS):
        missing = [k for k in TORCHRUN_VARS if k not in env]
        raise ValueError(f"found {', '.join(present)} but not {', '.join(missing)} in the environment; "
                         "launch with torchrun, or unset them to run as a single process")
    rank, local_rank, world_size = (int(env[k]) for k in TORCHRUN_VARS)
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is outside 0..{world_size - 1} (WORLD_SIZE={world_size})")
    return rank, local_rank, world_size, True


def exit_without_teardown(code=0):
    """Flush stdout and stderr, then end this process at once with `code`, skipping teardown."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


MAX_NPROC = 64  # a typo such as --nproc-per-node 200 would start 200 processes


class ScriptArgumentParser(argparse.ArgumentParser):
    """argparse's parser; in a process whose RANK is not 0, a bad argument exits with code 2 quietly
    (rank 0 sees the same command line and reports it)."""

    def error(self, message):
        if os.environ.get("RANK", "0") != "0":
            sys.exit(2)
        super().error(message)


def nproc_count(text):
    """argparse type of --nproc-per-node: an int from 1 to MAX_NPROC."""
    value = int(text)
    if not 1 <= value <= MAX_NPROC:
        raise argparse.ArgumentTypeError(f"must lie in [1, {MAX_NPROC}], got {value}")
    return value


def add_nproc_argument(parser, default=1):
    """Add --nproc-per-node: how many processes launch() starts on this machine."""
    parser.add_argument("--nproc-per-node", type=nproc_count, default=default, metavar="N",
                        help="processes to start on this machine, each training on its share of the "
                             "data with DistributedDataParallel (one per GPU with CUDA); ignored "
                             "under torchrun, which starts the processes itself")


def free_port():
    """A TCP port on this machine that is free now (where the processes will meet)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_worker(main, argv, rank, nproc, port, expected, error_pipe):
    """One process started by launch(): torchrun's environment, main(argv), then leave at once."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
                       "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it (a background job)
    try:
        code = main(argv)
        code = code if isinstance(code, int) else 0
    except expected as exc:
        error_pipe.send(str(exc))  # the parent prints one of them
        code = 2
    except KeyboardInterrupt:  # Ctrl+C reaches every process; the parent reports it
        code = 130
    except SystemExit as exc:  # argparse: rank 0 printed the error
        code = exc.code if isinstance(exc.code, int) else 1
    # what multiprocessing does when a process ends (frees its semaphores, e.g. tqdm's lock), then
    # leave without the interpreter teardown
    getattr(multiprocessing.util, "_exit_function", lambda: None)()
    exit_without_teardown(code)


def stop_workers(workers, grace):
    """Wait up to `grace` seconds for the workers to end, then stop those left (SIGTERM, then SIGKILL)."""
    deadline = time.monotonic() + grace
    for w in workers:
        w.join(max(0.0, deadline - time.monotonic()))
    for w in workers:
        if w.is_alive():
            w.terminate()
            w.join(5)
        if w.is_alive():
            w.kill()
            w.join()


def launch(main, argv=None, nproc=1, expected=(ValueError,), skip_teardown=None, grace=10.0):
    """Run main(argv) in `nproc` processes on this machine (as torchrun would start them), then exit:
    0, or 2 with one `error: ...` line for an expected error, or a failing process's code (130 after
    Ctrl+C, which stops them all)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if nproc == 1 or "RANK" in os.environ:  # one process, or torchrun started this one already
        run_script(lambda: main(argv), expected, skip_teardown)
    ctx = multiprocessing.get_context("spawn")
    pipes = [ctx.Pipe(duplex=False) for _ in range(nproc)]  # (read end, write end): a worker's error
    port = free_port()
    workers = [ctx.Process(target=launch_worker, args=(main, argv, rank, nproc, port, expected, pipes[rank][1]))
               for rank in range(nproc)]

    def on_sigterm(signum, frame):  # `kill` of this process: stop the workers as Ctrl+C would
        for w in workers:
            if w.is_alive():
                os.kill(w.pid, signal.SIGINT)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        for w in workers:
            w.start()
        pending = list(workers)
        while pending:  # until all have ended, or one failed and the others had `grace` seconds
            wait([w.sentinel for w in pending])
            pending = [w for w in pending if w.exitcode is None]
            if any(w.exitcode for w in workers if w.exitcode is not None):
                break
        stop_workers(pending, grace)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl+C must not leave workers behind
        stop_workers(workers, grace=5.0)
        print(f"interrupted: stopped all {nproc} processes", file=sys.stderr)
        sys.exit(130)
    reported = [read_end.recv() for read_end, _ in pipes if read_end.poll()]  # in rank order
    if reported:
        print(f"error: {reported[0]}", file=sys.stderr)
        sys.exit(2)
    failed = [w.exitcode for w in workers if w.exitcode]  # negative: stopped by a signal
    exited = [code for code in failed if code > 0]
    sys.exit(exited[0] if exited else 1 if failed else 0)


def run_script(main, expected=(ValueError,), skip_teardown=None):
    """Run a script's main() and exit: with its return value if that is an int, else with 0.

    An exception of the `expected` types becomes one line `error: <message>` on stderr and exit
    code 2. skip_teardown (default: when torchrun started several processes) leaves through
    exit_without_teardown.
    """
    try:
        code = main()
        code = code if isinstance(code, int) else 0
    except expected as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    if skip_teardown is None:
        skip_teardown = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if skip_teardown:
        exit_without_teardown(code)
    sys.exit(code)


def range_error(flag, value, low=None, high=None, *, low_open=False, high_open=False):
    """None if `value` is finite and inside the range, else the message '<flag> must ..., got <value>'."""
    if value is None:
        return None
    if not math.isfinite(value):
        return f"{flag} must be a finite number, got {value}"
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if not (below or above):
        return None
    if high is None:
        rule = "be positive" if low == 0 and low_open else f"be above {low}" if low_open else f"be at least {low}"
    elif low is None:
        rule = f"be below {high}" if high_open else f"be at most {high}"
    else:
        rule = f"lie in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    return f"{flag} must {rule}, got {value}"


def read_text(paths, flag="--text-files"):
    """The UTF-8 text files at `paths` joined with <|endoftext|>; a ValueError naming `flag` and
    the file if one is missing, a folder, unreadable, not UTF-8 or binary (a NUL byte)."""
    texts = []
    for path in paths:
        if not Path(path).is_file():
            what = f"{path} is a folder, not a text file" if Path(path).is_dir() else f"text file not found: {path}"
            raise ValueError(f"{flag}: {what}")
        try:
            data = Path(path).read_bytes()
            text = data.decode("utf-8")
        except OSError as exc:
            raise ValueError(f"{flag}: {path} cannot be read ({exc.strerror or exc})") from None
        except UnicodeDecodeError as exc:
            raise ValueError(f"{flag}: {path} is not UTF-8 text: byte 0x{data[exc.start]:02x} at offset "
                             f"{exc.start} cannot be decoded (save it as UTF-8)") from None
        if b"\0" in data:  # valid UTF-8, but no text file holds NUL bytes
            raise ValueError(f"{flag}: {path} looks binary, not text: a NUL byte at offset {data.index(0)}")
        texts.append(text)
    return " <|endoftext|> ".join(texts)
