# Generated from the cells tagged "export" in the notebooks below: only what this folder's
# notebooks and scripts use. Edit the notebooks, not this file; regenerate with:
#     python tests/generate_previous_chapters.py
#
# ch01/download-helper.ipynb: RemoteFile, KNOWN_FILES, DownloadError, cache_dir, download_file
# ch02/ch02.ipynb: GPTDatasetV1, create_dataloader_v1
# ch01/how-the-scripts-are-built.ipynb (the scripts' tooling, not a lesson): exit_without_teardown,
#     run_script, range_error, check_range, device_memory, memory_error, read_text, save_atomic,
#     output_problem, check_output

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
import math
import tiktoken
from torch.utils.data import DataLoader, Dataset


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


# ---- from ch02/ch02.ipynb ----

class GPTDatasetV1(Dataset):
    """Input/target pairs cut from one long text with a sliding window.

    Each input is `max_length` token ids; its target is the same window shifted one token
    to the right. Consecutive windows start `stride` tokens apart.
    """

    def __init__(self, txt, tokenizer, max_length, stride):
        if not isinstance(txt, str):
            raise TypeError(f"txt must be one string (the whole text), got a {type(txt).__name__}")
        if max_length < 1 or stride < 1:
            raise ValueError(f"max_length and stride must be at least 1, "
                             f"got max_length={max_length}, stride={stride}")
        token_ids = tokenizer.encode(txt, allowed_special={"<|endoftext|>"})
        if len(token_ids) < max_length + 1:
            raise ValueError(f"the text has {len(token_ids)} tokens, but one input/target pair needs "
                             f"max_length + 1 = {max_length + 1}; use a longer text or a smaller max_length")
        self.input_ids, self.target_ids = [], []
        for i in range(0, len(token_ids) - max_length, stride):
            self.input_ids.append(torch.tensor(token_ids[i:i + max_length]))
            self.target_ids.append(torch.tensor(token_ids[i + 1:i + max_length + 1]))

    def __len__(self):
        return len(self.input_ids)

    def __getitem__(self, idx):
        return self.input_ids[idx], self.target_ids[idx]


def create_dataloader_v1(txt, batch_size=4, max_length=256, stride=128,
                         shuffle=True, drop_last=True, num_workers=0):
    """A DataLoader of GPT-2-tokenized (input, target) batches over `txt`."""
    tokenizer = tiktoken.get_encoding("gpt2")
    dataset = GPTDatasetV1(txt, tokenizer, max_length, stride)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                      drop_last=drop_last, num_workers=num_workers)


# ---- from ch01/how-the-scripts-are-built.ipynb ----

def exit_without_teardown(code=0):
    """Flush stdout and stderr, then end this process at once with `code`, skipping teardown."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


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


def check_range(parser, args, names, low=None, high=None, *, low_open=False, high_open=False):
    """parser.error for the first of `names` (attributes of args) whose value is out of range."""
    for name in names:
        flag = "--" + name.replace("_", "-")
        message = range_error(flag, getattr(args, name), low, high, low_open=low_open, high_open=high_open)
        if message:
            parser.error(message)


def device_memory(device="cpu"):
    """Bytes of memory of `device`: the GPU's total for CUDA, else the machine's (None where unknown)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def memory_error(what, need, device="cpu"):
    """None if `need` bytes fit in `device`'s memory (or it is unknown), else a message naming `what`."""
    have = device_memory(device)
    if have is None or need <= have:
        return None
    where = "this GPU's" if torch.device(device).type == "cuda" else "this machine's"
    return f"{what} needs about {need / 2**30:.1f} GiB, more than {where} {have / 2**30:.1f} GiB of memory"


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


def save_atomic(path, write):
    """Call write(tmp_path) for a temporary file beside `path`, then move it into place in one step."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)  # only left over if write failed


def output_problem(flag, path, names=None, *, overwrite=False, resume=None):
    """None if a run may write its outputs at `path`, else the one message saying why not.

    `path` is a folder receiving the files `names` (made later if missing) or, with names=None,
    the output file itself. Earlier outputs there are refused unless `overwrite`; `resume`, if
    given, is the checkpoint that would continue them (named in the message). Creates nothing.
    """
    path = Path(path)
    folder, names = (path.parent, [path.name]) if names is None else (path, list(names))
    if path.is_dir() and folder != path:
        return f"{flag} {path} is a folder, not a file"
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{flag} {path} is a file, not a folder" if existing == path else f"{flag} {path}: {existing} is a file, not a folder"
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return f"{flag} {path} cannot be created or written: {exc.strerror or exc}"
    earlier = [name for name in names if (folder / name).exists()]
    if earlier and not overwrite:
        if folder != path:
            return f"{flag} {path} already exists; use --overwrite or another file name"
        again = f"continue it with --resume {resume}, or " if resume is not None else ""
        return (f"{flag} {path} already holds an earlier run's outputs ({', '.join(earlier)}); "
                f"{again}use --overwrite or another folder")
    return None


def check_output(parser, flag, path, names=None, *, overwrite=False, resume=None):
    """parser.error with output_problem's message, if there is one."""
    message = output_problem(flag, path, names, overwrite=overwrite, resume=resume)
    if message:
        parser.error(message)
