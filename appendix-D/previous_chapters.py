# Generated from the cells tagged "export" in the notebooks below: only what this folder's
# notebooks and scripts use. Edit the notebooks, not this file; regenerate with:
#     python tests/generate_previous_chapters.py
#
# ch01/ch01.ipynb: pick_device
# ch01/download-helper.ipynb: RemoteFile, KNOWN_FILES, DownloadError, cache_dir, download_file
# ch02/ch02.ipynb: GPTDatasetV1, create_dataloader_v1
# ch03/ch03.ipynb: check_context_length, check_attention_sizes, check_attention_input,
#     MultiHeadAttention
# ch04/ch04.ipynb: LayerNorm, GELU, FeedForward, SDPAMultiHeadAttention, TransformerBlock,
#     GPT_CONFIG_KEYS, check_gpt_config, GPTModel, check_generation_args, generate_text_simple
# ch05/ch05.ipynb: text_to_token_ids, token_ids_to_text, calc_loss_batch, calc_loss_loader,
#     evaluate_model, generate_sample, generate_and_print_sample, train_model_simple, plot_losses,
#     GPT2_SIZES
# appendix-D/appendix-D.ipynb: CompactTokenizer, check_schedule, warmup_lr, cosine_lr, lr_at_step,
#     lr_schedule, plot_lr_schedule, clipping_active, check_grad_clip, train_model,
#     warmup_cosine_scheduler
# ch01/how-the-scripts-are-built.ipynb (the scripts' tooling, not a lesson): exit_without_teardown,
#     run_script, range_error, check_range, check_finite_loss, read_text, save_atomic, save_figure,
#     add_pretraining_arguments, check_pretraining_arguments, pretraining_config, output_problem,
#     check_output, add_overwrite_argument

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
import torch.nn as nn
import torch.nn.functional as F


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


# ---- from ch03/ch03.ipynb ----

def check_context_length(num_tokens, context_length, hint=""):
    """Raise a ValueError if an input of num_tokens tokens is longer than context_length."""
    if num_tokens > context_length:
        raise ValueError(f"input has {num_tokens} tokens but context_length is {context_length}{hint}")


def check_attention_sizes(d_in, d_out, context_length, num_heads=1):
    """Raise a ValueError unless the sizes are positive and num_heads divides d_out."""
    if min(d_in, d_out, context_length, num_heads) < 1:
        raise ValueError(f"d_in ({d_in}), d_out ({d_out}), context_length ({context_length}) and "
                         f"num_heads ({num_heads}) must all be at least 1")
    if d_out % num_heads != 0:
        raise ValueError(f"d_out ({d_out}) must be divisible by num_heads ({num_heads})")


def check_attention_input(x, d_in, context_length):
    """Raise a ValueError unless x is a (batch, num_tokens, d_in) tensor that fits the context."""
    if x.dim() != 3:
        raise ValueError(f"expected input of shape (batch, num_tokens, d_in), got {x.dim()} "
                         f"dimensions {tuple(x.shape)}")
    if x.shape[-1] != d_in:
        raise ValueError(f"input has {x.shape[-1]} features per token but d_in is {d_in}")
    check_context_length(x.shape[1], context_length)


class MultiHeadAttention(nn.Module):
    """Causal multi-head self-attention; the heads are slices of shared projections."""

    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False):
        super().__init__()
        check_attention_sizes(d_in, d_out, context_length, num_heads)
        self.d_in, self.d_out, self.num_heads, self.head_dim = d_in, d_out, num_heads, d_out // num_heads
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)  # mixes the heads' outputs
        self.dropout = nn.Dropout(dropout)
        # 1 above the diagonal = "this key lies in the future of this query"
        self.register_buffer("mask", torch.triu(torch.ones(context_length, context_length), diagonal=1))

    def forward(self, x):
        check_attention_input(x, self.d_in, self.mask.shape[0])
        b, num_tokens, d_in = x.shape
        # (b, num_tokens, d_out) -> (b, num_heads, num_tokens, head_dim)
        queries = self.W_query(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        keys = self.W_key(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        values = self.W_value(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        attn_scores = queries @ keys.transpose(2, 3)  # (b, num_heads, num_tokens, num_tokens)
        mask_bool = self.mask.bool()[:num_tokens, :num_tokens]
        attn_scores.masked_fill_(mask_bool, -torch.inf)
        attn_weights = torch.softmax(attn_scores / self.head_dim ** 0.5, dim=-1)
        attn_weights = self.dropout(attn_weights)
        context = (attn_weights @ values).transpose(1, 2)  # (b, num_tokens, num_heads, head_dim)
        context = context.contiguous().view(b, num_tokens, self.d_out)
        return self.out_proj(context)


# ---- from ch04/ch04.ipynb ----

class LayerNorm(nn.Module):
    """Normalize the last dimension to mean 0 and variance 1, then scale and shift."""

    def __init__(self, emb_dim):
        super().__init__()
        self.eps = 1e-5
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x):
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True, unbiased=False)
        return self.scale * (x - mean) / torch.sqrt(var + self.eps) + self.shift


class GELU(nn.Module):
    """GELU activation, tanh approximation (as in the original GPT-2)."""

    def forward(self, x):
        return 0.5 * x * (1 + torch.tanh(torch.sqrt(torch.tensor(2.0 / torch.pi)) * (x + 0.044715 * x ** 3)))


class FeedForward(nn.Module):
    """Position-wise MLP: emb_dim -> 4 * emb_dim -> GELU -> emb_dim."""

    def __init__(self, cfg):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(cfg["emb_dim"], 4 * cfg["emb_dim"]),
            GELU(),
            nn.Linear(4 * cfg["emb_dim"], cfg["emb_dim"]),
        )

    def forward(self, x):
        return self.layers(x)


class SDPAMultiHeadAttention(MultiHeadAttention):
    """Same parameters as MultiHeadAttention; the attention itself uses F.scaled_dot_product_attention."""

    def forward(self, x):
        check_attention_input(x, self.d_in, self.mask.shape[0])
        b, num_tokens, d_in = x.shape
        queries = self.W_query(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        keys = self.W_key(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        values = self.W_value(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        dropout_p = self.dropout.p if self.training else 0.0
        context = F.scaled_dot_product_attention(queries, keys, values, dropout_p=dropout_p, is_causal=True)
        context = context.transpose(1, 2).contiguous().view(b, num_tokens, self.d_out)
        return self.out_proj(context)


class TransformerBlock(nn.Module):
    """Pre-LayerNorm transformer block: attention and feed-forward, each with a shortcut."""

    def __init__(self, cfg, attention_cls=None):
        super().__init__()
        if attention_cls is None:
            attention_cls = SDPAMultiHeadAttention if cfg.get("use_sdpa", False) else MultiHeadAttention
        self.att = attention_cls(
            d_in=cfg["emb_dim"], d_out=cfg["emb_dim"], context_length=cfg["context_length"],
            dropout=cfg["drop_rate"], num_heads=cfg["n_heads"], qkv_bias=cfg["qkv_bias"])
        self.ff = FeedForward(cfg)
        self.norm1 = LayerNorm(cfg["emb_dim"])
        self.norm2 = LayerNorm(cfg["emb_dim"])
        self.drop_shortcut = nn.Dropout(cfg["drop_rate"])

    def forward(self, x):
        x = x + self.drop_shortcut(self.att(self.norm1(x)))   # attention sub-layer + shortcut
        x = x + self.drop_shortcut(self.ff(self.norm2(x)))    # feed-forward sub-layer + shortcut
        return x


GPT_CONFIG_KEYS = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "drop_rate", "qkv_bias")


def check_gpt_config(cfg):
    """Raise a ValueError naming what is missing or out of range in a GPT configuration dict."""
    missing = [k for k in GPT_CONFIG_KEYS if k not in cfg]
    if missing:
        raise ValueError(f"the configuration lacks {', '.join(missing)}; it needs {', '.join(GPT_CONFIG_KEYS)}")
    bad = [f"{k}={cfg[k]!r}" for k in GPT_CONFIG_KEYS[:5] if not (isinstance(cfg[k], int) and cfg[k] >= 1)]
    if bad:
        raise ValueError(f"{', '.join(bad)}: sizes must be whole numbers of at least 1")
    if cfg["emb_dim"] % cfg["n_heads"] != 0:
        raise ValueError(f"emb_dim ({cfg['emb_dim']}) must be divisible by n_heads ({cfg['n_heads']})")
    if not 0 <= cfg["drop_rate"] < 1:
        raise ValueError(f"drop_rate must lie in [0, 1), got {cfg['drop_rate']!r}")


class GPTModel(nn.Module):
    """GPT-2 style model: embeddings -> transformer blocks -> final norm -> output head."""

    def __init__(self, cfg, block_cls=TransformerBlock):
        super().__init__()
        check_gpt_config(cfg)
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = nn.Dropout(cfg["drop_rate"])
        self.trf_blocks = nn.Sequential(*[block_cls(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = LayerNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)

    def check_input(self, in_idx):
        """Raise a ValueError unless in_idx is a (batch, seq_len) tensor of ids the model can take."""
        if in_idx.dim() != 2:
            raise ValueError(f"expected token ids of shape (batch, seq_len), got shape {tuple(in_idx.shape)}")
        if in_idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"token ids must be integers (torch.long), got {in_idx.dtype}")
        vocab_size, context_length = self.tok_emb.num_embeddings, self.pos_emb.num_embeddings
        check_context_length(in_idx.shape[1], context_length, hint=f"; keep only the last {context_length} "
                             "tokens (generate_text_simple does this)")
        if in_idx.numel() > 0:
            lo, hi = in_idx.min().item(), in_idx.max().item()
            if lo < 0 or hi >= vocab_size:
                raise ValueError(f"token ids must lie in [0, {vocab_size}), got values from {lo} to {hi}")

    def forward(self, in_idx):
        self.check_input(in_idx)
        seq_len = in_idx.shape[1]
        x = self.tok_emb(in_idx) + self.pos_emb(torch.arange(seq_len, device=in_idx.device))
        x = self.final_norm(self.trf_blocks(self.drop_emb(x)))
        return self.out_head(x)  # (batch, seq_len, vocab_size)


def check_generation_args(idx, max_new_tokens, context_size):
    """Raise a ValueError unless idx is a non-empty (batch, n_tokens) prompt and the counts are valid."""
    if idx.dim() != 2 or idx.shape[1] == 0:
        raise ValueError(f"idx must be a non-empty prompt of shape (batch, n_tokens), got shape {tuple(idx.shape)}")
    if max_new_tokens < 0 or context_size < 1:
        raise ValueError(f"max_new_tokens must be >= 0 and context_size >= 1, got {max_new_tokens} and {context_size}")


def generate_text_simple(model, idx, max_new_tokens, context_size):
    """Greedy decoding: append the most likely next token `max_new_tokens` times.

    idx: (batch, n_tokens) tensor of token ids. Only the last `context_size` tokens are fed to
    the model at each step. Returns idx with the new ids appended.
    """
    check_generation_args(idx, max_new_tokens, context_size)
    for _ in range(max_new_tokens):
        idx_cond = idx[:, -context_size:]          # crop to the supported context
        with torch.no_grad():
            logits = model(idx_cond)[:, -1, :]     # (batch, vocab_size): last position only
        idx_next = torch.argmax(logits, dim=-1, keepdim=True)  # (batch, 1)
        idx = torch.cat((idx, idx_next), dim=1)
    return idx


# ---- from ch05/ch05.ipynb ----

def text_to_token_ids(text, tokenizer):
    """Encode `text` into a (1, n_tokens) tensor of token ids."""
    encoded = tokenizer.encode(text, allowed_special={"<|endoftext|>"})
    return torch.tensor(encoded).unsqueeze(0)


def token_ids_to_text(token_ids, tokenizer):
    """Decode a (1, n_tokens) or (n_tokens,) tensor of token ids back into text."""
    if token_ids.dim() > 2 or (token_ids.dim() == 2 and token_ids.shape[0] != 1):
        raise ValueError(f"expected one sequence, shape (1, n_tokens) or (n_tokens,), got {tuple(token_ids.shape)}; "
                         "decode a batch row by row")
    return tokenizer.decode(token_ids.squeeze(0).tolist())


def calc_loss_batch(input_batch, target_batch, model, device):
    """Cross-entropy of the model's next-token predictions for one batch."""
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    logits = model(input_batch)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), target_batch.flatten())


def calc_loss_loader(data_loader, model, device, num_batches=None):
    """Average loss over the first `num_batches` batches of `data_loader` (all if None)."""
    if len(data_loader) == 0:
        raise ValueError("the data loader yields no batches: its text is shorter than one batch "
                         "(batch_size windows of max_length + 1 tokens); use a longer text or a "
                         "smaller batch size or context length")
    num_batches = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    if num_batches < 1:
        raise ValueError(f"num_batches must be at least 1, got {num_batches}")
    total = 0.0
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i >= num_batches:
            break
        total += calc_loss_batch(input_batch, target_batch, model, device).item()
    return total / num_batches


def evaluate_model(model, train_loader, val_loader, device, eval_iter):
    """Training and validation loss on the first `eval_iter` batches, without dropout."""
    model.eval()
    with torch.no_grad():
        train_loss = calc_loss_loader(train_loader, model, device, num_batches=eval_iter)
        val_loss = calc_loss_loader(val_loader, model, device, num_batches=eval_iter)
    model.train()
    return train_loss, val_loss


def generate_sample(model, tokenizer, device, start_context, max_new_tokens=50):
    """A greedy continuation of `start_context`, on one line."""
    model.eval()
    context_size = model.pos_emb.weight.shape[0]
    encoded = text_to_token_ids(start_context, tokenizer).to(device)
    with torch.no_grad():
        token_ids = generate_text_simple(model, encoded, max_new_tokens, context_size)
    model.train()
    return token_ids_to_text(token_ids.cpu(), tokenizer).replace("\n", " ")


def generate_and_print_sample(model, tokenizer, device, start_context, max_new_tokens=50):
    print(generate_sample(model, tokenizer, device, start_context, max_new_tokens))


def train_model_simple(model, train_loader, val_loader, optimizer, device, num_epochs,
                       eval_freq, eval_iter, start_context, tokenizer, *, state=None,
                       evaluate=evaluate_model, on_epoch_end=None, world_size=1, log=print, progress=True):
    """Train for `num_epochs`; return (train_losses, val_losses, tokens_seen) at each evaluation.

    The keyword-only hooks serve the headless script ch05/gpt_train.py; their defaults give the
    plain loop. state: the progress (epoch, step, tokens, losses) to continue from, updated in
    place as training goes. evaluate: the loss estimate. on_epoch_end(epochs_done): replaces the
    printed sample. world_size: processes training in step (DDP); tokens count them all.
    log: prints the evaluations. progress: True (a tqdm bar per epoch), "run" (one bar for the
    whole run) or False. A non-finite training loss stops the run with a ValueError naming the
    step and the learning rate, before that step updates the weights; with world_size > 1 in a
    process group, the processes first add up their losses (an all-reduce), so all of them stop
    with the same error.
    """
    if progress not in (True, False, "run"):
        raise ValueError(f"progress must be True, False or 'run', got {progress!r}")
    if eval_freq < 1 or eval_iter < 1:
        raise ValueError(f"eval_freq and eval_iter must be at least 1, got {eval_freq} and {eval_iter}")
    if len(train_loader) == 0:
        raise ValueError("the training loader yields no batches; use a longer text or a smaller "
                         "batch size or context length")
    state = {} if state is None else state
    for key, start in [("epoch", 0), ("global_step", -1), ("tokens_seen", 0), ("train_losses", []),
                       ("val_losses", []), ("track_tokens_seen", [])]:
        state.setdefault(key, start)
    steps_left = (num_epochs - state["epoch"]) * len(train_loader)
    run_bar = tqdm(total=steps_left, desc="training") if progress == "run" else None
    for epoch in range(state["epoch"], num_epochs):
        model.train()
        if hasattr(train_loader.sampler, "set_epoch"):  # a DistributedSampler: new shuffle per epoch
            train_loader.sampler.set_epoch(epoch)
        for input_batch, target_batch in tqdm(train_loader, desc=f"epoch {epoch + 1}/{num_epochs}",
                                              disable=progress is not True):
            optimizer.zero_grad()
            loss = calc_loss_batch(input_batch, target_batch, model, device)
            check_finite_loss(loss, f"at step {state['global_step'] + 1}", optimizer.param_groups[0]["lr"],
                              world_size, "nothing after the last good checkpoint was saved; lower the "
                              "learning rate (--lr)")  # before a NaN/inf step spoils the weights
            loss.backward()
            optimizer.step()
            state["tokens_seen"] += input_batch.numel() * world_size
            state["global_step"] += 1
            if run_bar is not None:
                run_bar.update(1)
            if state["global_step"] % eval_freq == 0:
                train_loss, val_loss = evaluate(model, train_loader, val_loader, device, eval_iter)
                state["train_losses"].append(train_loss)
                state["val_losses"].append(val_loss)
                state["track_tokens_seen"].append(state["tokens_seen"])
                log(f"Ep {epoch + 1} (step {state['global_step']:06d}): "
                    f"train loss {train_loss:.3f}, val loss {val_loss:.3f}")
        state["epoch"] = epoch + 1
        if on_epoch_end is None:
            generate_and_print_sample(model, tokenizer, device, start_context)
        else:
            on_epoch_end(epoch + 1)
    if run_bar is not None:
        run_bar.close()
    return state["train_losses"], state["val_losses"], state["track_tokens_seen"]


def plot_losses(epochs_seen, tokens_seen, train_losses, val_losses, label="loss"):
    """Plot training and validation values against epochs, with tokens seen on a second axis."""
    import matplotlib.pyplot as plt  # imported here: scripts that never plot need not load it
    from matplotlib.ticker import MaxNLocator

    fig, ax1 = plt.subplots(figsize=(5, 3))
    ax1.plot(epochs_seen, train_losses, label=f"training {label}")
    ax1.plot(epochs_seen, val_losses, linestyle="-.", label=f"validation {label}")
    ax1.set_xlabel("epochs")
    ax1.set_ylabel(label)
    ax1.legend(loc="upper right")
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2 = ax1.twiny()  # same y axis, a second x axis for the tokens seen
    ax2.plot(tokens_seen, train_losses, alpha=0)
    ax2.set_xlabel("tokens seen")
    fig.tight_layout()
    return fig


GPT2_SIZES = {  # OpenAI's four GPT-2 checkpoints
    "124M": {"emb_dim": 768, "n_layers": 12, "n_heads": 12},
    "355M": {"emb_dim": 1024, "n_layers": 24, "n_heads": 16},
    "774M": {"emb_dim": 1280, "n_layers": 36, "n_heads": 20},
    "1558M": {"emb_dim": 1600, "n_layers": 48, "n_heads": 25},
}


# ---- from appendix-D/appendix-D.ipynb ----

class CompactTokenizer:
    """GPT-2's tokenizer with the ids renumbered 0..n-1 over the tokens that occur in `texts`."""

    def __init__(self, texts):
        self.gpt2 = tiktoken.get_encoding("gpt2")
        used = {t for text in texts for t in self.gpt2.encode(text, allowed_special={"<|endoftext|>"})}
        self.gpt2_ids = sorted(used)  # compact id -> GPT-2 id
        self.compact_ids = {t: i for i, t in enumerate(self.gpt2_ids)}  # GPT-2 id -> compact id
        self.n_vocab = len(self.gpt2_ids)

    def encode(self, text, allowed_special=frozenset()):
        ids = self.gpt2.encode(text, allowed_special=allowed_special)
        unknown = [t for t in ids if t not in self.compact_ids]
        if unknown:
            raise ValueError(f"{text!r} has tokens outside the compact vocabulary: {unknown[:5]}")
        return [self.compact_ids[t] for t in ids]

    def decode(self, ids):
        return self.gpt2.decode([self.gpt2_ids[i] for i in ids])


def check_schedule(total_steps, warmup_steps, initial_lr, peak_lr, min_lr):
    """Raise ValueError unless the arguments describe a warmup + cosine-decay schedule."""
    for name, value in (("initial_lr", initial_lr), ("peak_lr", peak_lr), ("min_lr", min_lr)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if peak_lr <= 0:
        raise ValueError(f"peak_lr must be positive, got {peak_lr}")
    if initial_lr > peak_lr:
        raise ValueError(f"initial_lr ({initial_lr}) must not exceed peak_lr ({peak_lr})")
    if min_lr > peak_lr:
        raise ValueError(f"min_lr ({min_lr}) must not exceed peak_lr ({peak_lr})")
    for name, value in (("total_steps", total_steps), ("warmup_steps", warmup_steps)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if total_steps < 2:
        raise ValueError(f"total_steps must be at least 2, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps - 2:
        raise ValueError(f"warmup_steps must lie between 0 and total_steps - 2 = {total_steps - 2}, "
                         f"got {warmup_steps}: the warmup must end before the run's last step "
                         f"so that the cosine decay has at least two steps")


def warmup_lr(step, warmup_steps, initial_lr, peak_lr):
    """Linear warmup: initial_lr at step 0, peak_lr at step warmup_steps."""
    if not 0 <= step <= warmup_steps or warmup_steps < 1:
        raise ValueError(f"warmup_lr needs 0 <= step <= warmup_steps and warmup_steps >= 1, "
                         f"got step {step}, warmup_steps {warmup_steps}")
    return initial_lr + (peak_lr - initial_lr) * step / warmup_steps


def cosine_lr(step, warmup_steps, total_steps, peak_lr, min_lr):
    """Cosine decay: peak_lr at step warmup_steps, min_lr at the last step (total_steps - 1)."""
    if not warmup_steps <= step <= total_steps - 1 or total_steps - 1 <= warmup_steps:
        raise ValueError(f"cosine_lr needs warmup_steps <= step <= total_steps - 1 and a decay of at "
                         f"least two steps, got step {step}, warmup_steps {warmup_steps}, total_steps {total_steps}")
    progress = (step - warmup_steps) / (total_steps - 1 - warmup_steps)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def lr_at_step(step, total_steps, warmup_steps, initial_lr, peak_lr, min_lr):
    """The learning rate at 0-based `step`: linear warmup, then cosine decay."""
    check_schedule(total_steps, warmup_steps, initial_lr, peak_lr, min_lr)
    if not 0 <= step < total_steps:
        raise ValueError(f"step must lie in [0, {total_steps}), got {step}")
    if step < warmup_steps:
        return warmup_lr(step, warmup_steps, initial_lr, peak_lr)
    return cosine_lr(step, warmup_steps, total_steps, peak_lr, min_lr)


def lr_schedule(total_steps, warmup_steps, initial_lr, peak_lr, min_lr):
    """The learning rate of every step, as a list."""
    return [lr_at_step(s, total_steps, warmup_steps, initial_lr, peak_lr, min_lr) for s in range(total_steps)]


def plot_lr_schedule(lrs, warmup_steps, ax=None):
    """Plot the learning rate of every step and mark the end of the warmup; return the figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3))
    ax.plot(range(len(lrs)), lrs, label="learning rate")
    ax.axvline(warmup_steps, color="gray", linestyle="--", label=f"end of warmup (step {warmup_steps})")
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.legend(loc="upper right")
    ax.figure.tight_layout()
    return ax.figure


def clipping_active(step, warmup_steps):
    """Clip from the end of the warmup (the step that reaches the peak) on."""
    return step >= warmup_steps


def check_grad_clip(grad_clip):
    """None switches clipping off; anything else must be a positive, finite max_norm."""
    if grad_clip is None:
        return
    if isinstance(grad_clip, bool) or not isinstance(grad_clip, (int, float)) or not math.isfinite(grad_clip) \
            or grad_clip <= 0:
        raise ValueError(f"grad_clip must be a positive, finite max_norm (or None for no clipping), got {grad_clip!r}")


def train_model(model, train_loader, val_loader, optimizer, device, num_epochs, eval_freq, eval_iter,
                start_context, tokenizer, warmup_steps, initial_lr=3e-5, min_lr=1e-6, grad_clip=1.0,
                progress=True):
    """Chapter 5's loop with warmup, cosine decay and gradient clipping.

    Returns train_losses, val_losses and tokens_seen (at each evaluation), and lrs and
    grad_norms (the learning rate and the gradient norm before clipping, at every step).
    """
    if eval_freq < 1 or eval_iter < 1:
        raise ValueError(f"eval_freq and eval_iter must be at least 1, got {eval_freq} and {eval_iter}")
    if len(train_loader) == 0:
        raise ValueError("the training loader yields no batches; use a longer text or a smaller "
                         "batch size or context length")
    check_grad_clip(grad_clip)  # new
    peak_lr = optimizer.defaults["lr"]  # new: the peak is the lr the optimizer was built with
    total_steps = num_epochs * len(train_loader)  # new
    check_schedule(total_steps, warmup_steps, initial_lr, peak_lr, min_lr)  # new
    train_losses, val_losses, track_tokens_seen, track_lrs, track_grad_norms = [], [], [], [], []
    tokens_seen, global_step = 0, -1
    for epoch in range(num_epochs):
        model.train()
        for input_batch, target_batch in tqdm(train_loader, desc=f"epoch {epoch + 1}/{num_epochs}",
                                              disable=not progress):
            global_step += 1
            lr = lr_at_step(global_step, total_steps, warmup_steps, initial_lr, peak_lr, min_lr)  # new
            for group in optimizer.param_groups:  # new
                group["lr"] = lr
            track_lrs.append(lr)  # new
            optimizer.zero_grad()
            loss = calc_loss_batch(input_batch, target_batch, model, device)
            check_finite_loss(loss, f"at step {global_step}", lr)
            loss.backward()
            if grad_clip is not None and clipping_active(global_step, warmup_steps):  # new
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=grad_clip)
            else:  # new: only measure
                grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
            track_grad_norms.append(grad_norm.item())  # new
            optimizer.step()
            tokens_seen += input_batch.numel()
            if global_step % eval_freq == 0:
                train_loss, val_loss = evaluate_model(model, train_loader, val_loader, device, eval_iter)
                train_losses.append(train_loss)
                val_losses.append(val_loss)
                track_tokens_seen.append(tokens_seen)
                print(f"Ep {epoch + 1} (step {global_step:06d}): "
                      f"train loss {train_loss:.3f}, val loss {val_loss:.3f}")
        if start_context is not None:
            generate_and_print_sample(model, tokenizer, device, start_context)
    return train_losses, val_losses, track_tokens_seen, track_lrs, track_grad_norms


def warmup_cosine_scheduler(optimizer, total_steps, warmup_steps, initial_lr, min_lr):
    """lr_at_step's schedule built from torch.optim.lr_scheduler; the peak is the optimizer's lr."""
    peak_lr = optimizer.defaults["lr"]
    check_schedule(total_steps, warmup_steps, initial_lr, peak_lr, min_lr)
    if warmup_steps == 0:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps - 1, eta_min=min_lr)
    if initial_lr <= 0:
        raise ValueError(f"LinearLR cannot start from 0: initial_lr must be positive, got {initial_lr}")
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=initial_lr / peak_lr, end_factor=1.0,
                                               total_iters=warmup_steps)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps - 1 - warmup_steps,
                                                       eta_min=min_lr)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, decay], milestones=[warmup_steps])


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


def check_finite_loss(loss, where, lr, world_size=1, advice="lower the learning rate"):
    """Raise a ValueError if `loss` is NaN or infinite (on any process when world_size > 1 in a
    process group): 'the training loss became nan <where> (learning rate <lr>); <advice>'."""
    check = loss.detach()
    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        check = check.clone()
        torch.distributed.all_reduce(check)  # the sum: non-finite on every process if on any one
        check /= world_size
    if not torch.isfinite(check):
        mean = f", mean over {world_size} processes" if world_size > 1 else ""
        raise ValueError(f"the training loss became {check.item()} {where} (learning rate {lr:g}{mean}); {advice}")


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


def save_figure(fig, path, dpi=120):
    """Save a matplotlib figure as a PNG with save_atomic, then close it (scripts may draw many)."""
    import matplotlib.pyplot as plt

    try:
        save_atomic(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    finally:
        plt.close(fig)
    return path


def add_pretraining_arguments(parser, model_sizes, output_dir):
    """Add the options shared by the pretraining scripts to an argparse parser."""
    p = parser.add_argument
    p("--text-files", nargs="+", type=Path, default=None,
      help="plain-text training files (default: the-verdict.txt via the download helper)")
    p("--model-size", default="124M", help=f"model configuration, one of: {', '.join(model_sizes)}")
    p("--context-length", type=int, default=256, help="tokens per training window")
    p("--epochs", type=int, default=10, help="passes over the training text (in all, counting a resumed run's)")
    p("--batch-size", type=int, default=2, help="windows per batch and process")
    p("--lr", type=float, default=4e-4, help="AdamW's learning rate (with a schedule: its peak)")
    p("--weight-decay", type=float, default=0.1)
    p("--drop-rate", type=float, default=0.1)
    p("--val-ratio", type=float, default=0.1, help="share of the text kept for validation")
    p("--eval-freq", type=int, default=5, help="evaluate every this many steps")
    p("--eval-iter", type=int, default=5, help="batches per loss estimate")
    p("--start-context", default="Every effort moves you", help="prompt of the samples")
    p("--output-dir", type=Path, default=Path(output_dir))
    p("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p("--seed", type=int, default=123)
    p("--no-progress", action="store_true", help="hide the tqdm progress bars")


def check_pretraining_arguments(parser, args, model_sizes):
    """parser.error for the first shared option that is out of range."""
    if args.model_size not in model_sizes:
        parser.error(f"unknown --model-size {args.model_size!r}; valid sizes: {', '.join(model_sizes)}")
    check_range(parser, args, ("context_length", "epochs", "batch_size", "eval_freq", "eval_iter"), 1)
    check_range(parser, args, ("lr",), 0, low_open=True)
    check_range(parser, args, ("weight_decay",))
    check_range(parser, args, ("val_ratio",), 0, 1, low_open=True, high_open=True)
    check_range(parser, args, ("drop_rate",), 0, 1, high_open=True)


def pretraining_config(args, model_sizes):
    """The GPTModel configuration of these options (GPT-2's vocabulary, no query/key/value bias)."""
    return {"vocab_size": 50257, "context_length": args.context_length, **model_sizes[args.model_size],
            "drop_rate": args.drop_rate, "qkv_bias": False}


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


def add_overwrite_argument(parser, what="the output folder"):
    """--overwrite: replace an earlier run's outputs in `what` (refused without it)."""
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace an earlier run's outputs in {what} (without it they are refused "
                             "before any work)")
