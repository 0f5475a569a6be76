# Generated from the cells tagged "export" in the notebooks below: only what this folder's
# notebooks and scripts use. Edit the notebooks, not this file; regenerate with:
#     python tests/generate_previous_chapters.py
#
# ch01/ch01.ipynb: pick_device
# ch01/download-helper.ipynb: RemoteFile, KNOWN_FILES, DownloadError, cache_dir, download_file
# ch02/ch02.ipynb: GPTDatasetV1, create_dataloader_v1
# ch03/ch03.ipynb: check_context_length, check_attention_sizes, check_attention_input,
#     MultiHeadAttention
# ch04/ch04.ipynb: GPT_CONFIG_124M, LayerNorm, GELU, FeedForward, SDPAMultiHeadAttention,
#     TransformerBlock, GPT_CONFIG_KEYS, check_gpt_config, GPTModel, check_generation_args,
#     generate_text_simple
# ch05/ch05.ipynb: text_to_token_ids, token_ids_to_text, calc_loss_batch, calc_loss_loader,
#     evaluate_model, generate_sample, generate_and_print_sample, train_model_simple, plot_losses,
#     check_sampling_args, generate, GPT2_SIZES, GPT2_FILES, GPT2_URLS, check_model_size,
#     gpt2_remote_file, gpt2_models_dir, download_and_load_gpt2, load_gpt2_from_dir,
#     load_gpt2_params_from_tf_ckpt, assign, load_weights_into_gpt, hf_gpt2_params,
#     load_hf_safetensors_into_gpt, STANDIN_SETTINGS, standin_gpt2_params,
#     load_gpt2_params_or_standin, gpt2_config, load_pretrained_gpt2
# ch05/fast-path.ipynb: FastLayerNorm, FastGELU, KVCache, CachedSDPAAttention,
#     FastTransformerBlock, FastGPTModel, load_chapter_weights, fast_from_chapter, autocast_dtype,
#     autocast, maybe_compile, fast_adamw, AutocastModel, training_view, add_fast_path_arguments,
#     check_fast_path_arguments, report_bf16, generate_fast
# ch01/how-the-scripts-are-built.ipynb (the scripts' tooling, not a lesson): TORCHRUN_VARS,
#     distributed_env, exit_without_teardown, MAX_NPROC, ScriptArgumentParser, nproc_count,
#     add_nproc_argument, free_port, launch_worker, stop_workers, launch, run_script,
#     MAX_NEW_TOKENS, range_error, check_range, device_memory, memory_error, check_finite_loss,
#     read_text, save_atomic, save_figure, ZIP_MAGIC, load_torch_file, is_state_dict,
#     describe_entries, describe_object, read_checkpoint, name_few, load_weights,
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
import argparse
import multiprocessing
import multiprocessing.util
import signal
import socket
from multiprocessing.connection import wait
import math
import pickle
import tiktoken
from torch.utils.data import DataLoader, Dataset
import torch.nn as nn
import torch.nn.functional as F
import json
import numpy as np
import contextlib


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

GPT_CONFIG_124M = {
    "vocab_size": 50257,     # tokens known to the GPT-2 BPE tokenizer
    "context_length": 1024,  # longest input sequence (number of position embeddings)
    "emb_dim": 768,          # width of every token vector
    "n_heads": 12,           # attention heads per transformer block
    "n_layers": 12,          # transformer blocks
    "drop_rate": 0.1,        # dropout probability
    "qkv_bias": False,       # bias in the query/key/value projections
}


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


def check_sampling_args(temperature, top_k):
    """Raise a ValueError unless temperature is finite and >= 0 and top_k is None or >= 1."""
    if not 0 <= temperature < float("inf"):  # also refuses NaN
        raise ValueError(f"temperature must be a finite number >= 0 (0 means greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be a positive integer or None, got {top_k}")


def generate(model, idx, max_new_tokens, context_size, temperature=0.0, top_k=None, eos_id=None):
    """Append up to `max_new_tokens` tokens to idx (batch, n_tokens) and return it.

    temperature 0 means greedy decoding; top_k keeps only the k most likely tokens.
    """
    check_generation_args(idx, max_new_tokens, context_size)
    check_sampling_args(temperature, top_k)
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(idx[:, -context_size:])[:, -1, :]
        if top_k is not None:
            top_logits, _ = torch.topk(logits, min(top_k, logits.shape[-1]))
            logits = torch.where(logits < top_logits[:, -1:], torch.tensor(float("-inf")).to(logits.device),
                                 logits)
        if temperature > 0.0:
            probs = torch.softmax(logits / temperature, dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1)
        else:
            idx_next = torch.argmax(logits, dim=-1, keepdim=True)
        if eos_id is not None and bool((idx_next == eos_id).all()):
            break
        idx = torch.cat((idx, idx_next), dim=1)
    return idx


GPT2_SIZES = {  # OpenAI's four GPT-2 checkpoints
    "124M": {"emb_dim": 768, "n_layers": 12, "n_heads": 12},
    "355M": {"emb_dim": 1024, "n_layers": 24, "n_heads": 16},
    "774M": {"emb_dim": 1280, "n_layers": 36, "n_heads": 20},
    "1558M": {"emb_dim": 1600, "n_layers": 48, "n_heads": 25},
}
GPT2_FILES = ("checkpoint", "hparams.json", "model.ckpt.index", "model.ckpt.meta",
              "model.ckpt.data-00000-of-00001", "encoder.json", "vocab.bpe")
GPT2_URLS = ("https://openaipublic.blob.core.windows.net/gpt-2/models/{size}/{file}",
             "https://f001.backblazeb2.com/file/LLMs-from-scratch/gpt2/{size}/{file}")


def check_model_size(model_size):
    """Raise a ValueError listing the valid sizes unless `model_size` is one of them."""
    if model_size not in GPT2_SIZES:
        raise ValueError(f"unknown GPT-2 model size {model_size!r}; valid sizes: {', '.join(GPT2_SIZES)}")


def gpt2_remote_file(model_size, name):
    """The RemoteFile for one of a GPT-2 size's files (tokenizer files carry their checksums)."""
    check_model_size(model_size)
    sha256 = KNOWN_FILES[name].sha256 if name in ("encoder.json", "vocab.bpe") else None
    return RemoteFile(name, tuple(url.format(size=model_size, file=name) for url in GPT2_URLS),
                      sha256=sha256)


def gpt2_models_dir(models_dir=None):
    """Folder holding one subfolder per downloaded GPT-2 size (default: the download cache)."""
    return Path(models_dir) if models_dir is not None else cache_dir() / "gpt2"


def download_and_load_gpt2(model_size="124M", models_dir=None, retries=3, progress=True):
    """Download (once) and read OpenAI's GPT-2 checkpoint; return (settings, params)."""
    check_model_size(model_size)
    model_dir = gpt2_models_dir(models_dir) / model_size
    for name in GPT2_FILES:
        download_file(gpt2_remote_file(model_size, name), model_dir, retries=retries, progress=progress)
    return load_gpt2_from_dir(model_dir)


def load_gpt2_from_dir(model_dir):
    """Read hparams.json and the TensorFlow checkpoint in `model_dir`; return (settings, params)."""
    hparams = Path(model_dir) / "hparams.json"
    try:
        settings = json.loads(hparams.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {hparams.name} in the GPT-2 folder {Path(model_dir).name}: {exc}") from None
    params = load_gpt2_params_from_tf_ckpt(Path(model_dir) / "model.ckpt", settings)
    return settings, params


def load_gpt2_params_from_tf_ckpt(ckpt_path, settings):
    """Read OpenAI's TensorFlow checkpoint at `ckpt_path` (".../model.ckpt") into a nested dict."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # silence TensorFlow's start-up messages
    import tensorflow as tf

    ckpt_path = str(ckpt_path)
    name = Path(ckpt_path).name
    try:
        variables = tf.train.list_variables(ckpt_path)
    except Exception as exc:  # a missing, truncated or corrupt index file
        raise ValueError(f"cannot read the TensorFlow checkpoint index {name}.index: "
                         f"{getattr(exc, 'message', exc)}; delete the file and download it again") from None
    params = {"blocks": [{} for _ in range(settings["n_layer"])]}
    for var_name, _ in variables:
        try:
            array = tf.train.load_variable(ckpt_path, var_name)
        except Exception as exc:  # truncated or corrupt data file
            raise ValueError(f"cannot read variable {var_name} from the TensorFlow checkpoint data file "
                             f"{name}.data-00000-of-00001 (truncated or corrupt?): "
                             f"{getattr(exc, 'message', exc)}; delete it and download it again") from None
        parts = var_name.split("/")[1:]  # drop the leading "model"
        target = params
        if parts[0].startswith("h") and parts[0][1:].isdigit():
            layer = int(parts[0][1:])
            if layer >= settings["n_layer"]:
                raise ValueError(f"checkpoint variable {var_name} is beyond n_layer={settings['n_layer']} "
                                 "of hparams.json")
            target = params["blocks"][layer]
        for key in parts[1:-1]:
            target = target.setdefault(key, {})
        if array.ndim == 3 and array.shape[0] == 1:
            array = array[0]  # [1, in, out] -> [in, out]
        target[parts[-1]] = array
    return params


def assign(left, right, name="parameter"):
    """A new Parameter holding `right`, after checking it has the shape of `left`."""
    right = torch.as_tensor(np.asarray(right))
    if tuple(left.shape) != tuple(right.shape):
        raise ValueError(f"shape mismatch for {name}: the model has {tuple(left.shape)}, "
                         f"the checkpoint has {tuple(right.shape)}")
    return torch.nn.Parameter(right.detach().clone().to(dtype=left.dtype, device=left.device))


def load_weights_into_gpt(gpt, params):
    """Copy GPT-2 parameters (OpenAI's layout, see load_gpt2_params_from_tf_ckpt) into a GPTModel."""
    blocks = params["blocks"]
    if len(blocks) != len(gpt.trf_blocks):
        raise ValueError(f"the checkpoint has {len(blocks)} transformer blocks, the model has {len(gpt.trf_blocks)}")
    if gpt.trf_blocks[0].att.W_query.bias is None:
        raise ValueError("GPT-2 has query/key/value biases: build the model with qkv_bias=True")
    gpt.pos_emb.weight = assign(gpt.pos_emb.weight, params["wpe"], "pos_emb.weight")
    gpt.tok_emb.weight = assign(gpt.tok_emb.weight, params["wte"], "tok_emb.weight")
    for b, (block, p) in enumerate(zip(gpt.trf_blocks, blocks)):
        att, ff, pre = block.att, block.ff, f"trf_blocks.{b}."
        q_w, k_w, v_w = np.split(p["attn"]["c_attn"]["w"], 3, axis=-1)
        q_b, k_b, v_b = np.split(p["attn"]["c_attn"]["b"], 3, axis=-1)
        for lin, w, bias, nm in ((att.W_query, q_w, q_b, "att.W_query"), (att.W_key, k_w, k_b, "att.W_key"),
                                 (att.W_value, v_w, v_b, "att.W_value"),
                                 (att.out_proj, p["attn"]["c_proj"]["w"], p["attn"]["c_proj"]["b"], "att.out_proj"),
                                 (ff.layers[0], p["mlp"]["c_fc"]["w"], p["mlp"]["c_fc"]["b"], "ff.layers.0"),
                                 (ff.layers[2], p["mlp"]["c_proj"]["w"], p["mlp"]["c_proj"]["b"], "ff.layers.2")):
            lin.weight = assign(lin.weight, np.asarray(w).T, pre + nm + ".weight")
            lin.bias = assign(lin.bias, bias, pre + nm + ".bias")
        for norm, ln, nm in ((block.norm1, p["ln_1"], "norm1"), (block.norm2, p["ln_2"], "norm2")):
            norm.scale = assign(norm.scale, ln["g"], pre + nm + ".scale")
            norm.shift = assign(norm.shift, ln["b"], pre + nm + ".shift")
    gpt.final_norm.scale = assign(gpt.final_norm.scale, params["g"], "final_norm.scale")
    gpt.final_norm.shift = assign(gpt.final_norm.shift, params["b"], "final_norm.shift")
    gpt.out_head.weight = assign(gpt.out_head.weight, params["wte"], "out_head.weight")  # tied to wte


_HF_IGNORED = (".attn.bias", ".attn.masked_bias", "lm_head.weight")


def hf_gpt2_params(state_dict, source="the state dict"):
    """Rename Hugging Face GPT-2 tensors (name -> array) into load_weights_into_gpt's layout."""
    sd = {(k[len("transformer."):] if k.startswith("transformer.") else k): v for k, v in state_dict.items()}
    used = set()

    def get(key):
        if key not in sd:
            raise ValueError(f"{source} has no tensor {key!r}; is it a GPT-2 checkpoint?")
        used.add(key)
        return np.asarray(sd[key])

    n_layers = 1 + max((int(k.split(".")[1]) for k in sd if k.startswith("h.")), default=-1)
    blocks = []
    for i in range(n_layers):
        h = f"h.{i}."
        blocks.append({
            "attn": {"c_attn": {"w": get(h + "attn.c_attn.weight"), "b": get(h + "attn.c_attn.bias")},
                     "c_proj": {"w": get(h + "attn.c_proj.weight"), "b": get(h + "attn.c_proj.bias")}},
            "mlp": {"c_fc": {"w": get(h + "mlp.c_fc.weight"), "b": get(h + "mlp.c_fc.bias")},
                    "c_proj": {"w": get(h + "mlp.c_proj.weight"), "b": get(h + "mlp.c_proj.bias")}},
            "ln_1": {"g": get(h + "ln_1.weight"), "b": get(h + "ln_1.bias")},
            "ln_2": {"g": get(h + "ln_2.weight"), "b": get(h + "ln_2.bias")}})
    params = {"wte": get("wte.weight"), "wpe": get("wpe.weight"), "blocks": blocks,
              "g": get("ln_f.weight"), "b": get("ln_f.bias")}
    unknown = sorted(k for k in sd if k not in used and not k.endswith(_HF_IGNORED))
    if unknown:
        raise ValueError(f"{source} has tensors a GPT-2 model does not use: {', '.join(unknown[:5])}")
    return params


def load_hf_safetensors_into_gpt(gpt, path):
    """Load a Hugging Face GPT-2 `model.safetensors` file into a GPTModel (qkv_bias=True)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    try:
        state_dict = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"cannot read the safetensors file {path.name} (truncated or corrupt?): {exc}") from None
    load_weights_into_gpt(gpt, hf_gpt2_params(state_dict, source=path.name))


STANDIN_SETTINGS = {"n_vocab": 50257, "n_ctx": 256, "n_embd": 64, "n_head": 2, "n_layer": 2}


def standin_gpt2_params(settings=STANDIN_SETTINGS, seed=123):
    """Random parameters in OpenAI's GPT-2 layout. NOT GPT-2's weights: a labelled placeholder."""
    rng = np.random.default_rng(seed)
    d, ctx, vocab = settings["n_embd"], settings["n_ctx"], settings["n_vocab"]

    def normal(*shape):
        return (0.02 * rng.standard_normal(shape)).astype(np.float32)

    def zeros(n):
        return np.zeros(n, dtype=np.float32)

    def norm():
        return {"g": np.ones(d, dtype=np.float32), "b": zeros(d)}

    blocks = [{"attn": {"c_attn": {"w": normal(d, 3 * d), "b": zeros(3 * d)},
                        "c_proj": {"w": normal(d, d), "b": zeros(d)}},
               "mlp": {"c_fc": {"w": normal(d, 4 * d), "b": zeros(4 * d)},
                       "c_proj": {"w": normal(4 * d, d), "b": zeros(d)}},
               "ln_1": norm(), "ln_2": norm()} for _ in range(settings["n_layer"])]
    final = norm()
    return {"wte": normal(vocab, d), "wpe": normal(ctx, d), "blocks": blocks, "g": final["g"], "b": final["b"]}


def load_gpt2_params_or_standin(model_size="124M", models_dir=None):
    """(settings, params, is_standin): OpenAI's GPT-2 weights, or the labelled stand-in where allowed.

    LLMS_STANDIN_WEIGHTS=1 allows the stand-in when the download fails; =force (set by the test
    command) uses it without trying to download, so tests mean the same on every machine.
    Unset, a failed download raises the DownloadError. A corrupt local checkpoint always raises.
    """
    check_model_size(model_size)
    mode = os.environ.get("LLMS_STANDIN_WEIGHTS", "")
    if mode not in ("", "0", "1", "force"):
        raise ValueError(f"LLMS_STANDIN_WEIGHTS must be 1, force or unset, got {mode!r}")
    if mode == "force":
        reason = "LLMS_STANDIN_WEIGHTS=force (set by the test command) skips the download"
    else:
        try:
            settings, params = download_and_load_gpt2(model_size, models_dir, retries=1 if mode == "1" else 3)
            return settings, params, False
        except DownloadError as exc:
            if mode != "1":
                raise
            reason = (str(exc).splitlines()[0].removesuffix(" Tried:").rstrip(".")
                      + ", and LLMS_STANDIN_WEIGHTS=1 allows a substitute")
    s = STANDIN_SETTINGS
    print("!" * 78 + "\n"
          f"!! STAND-IN WEIGHTS: these are NOT OpenAI's GPT-2 {model_size} weights.\n"
          f"!! Reason: {reason}.\n"
          f"!! Using a small randomly initialised GPT ({s['n_layer']} layers, {s['n_head']} heads, "
          f"width {s['n_embd']}, context {s['n_ctx']}, seed 123)\n"
          "!! with GPT-2's 50,257-token vocabulary. Its text is gibberish and its numbers\n"
          "!! will not match the book. Download the weights (or unset the variable) for the real model.\n"
          + "!" * 78)
    return dict(STANDIN_SETTINGS), standin_gpt2_params(), True


def gpt2_config(settings, drop_rate=0.0):
    """The GPTModel configuration matching GPT-2 hparams (n_vocab, n_ctx, n_embd, n_head, n_layer)."""
    return {"vocab_size": settings["n_vocab"], "context_length": settings["n_ctx"],
            "emb_dim": settings["n_embd"], "n_heads": settings["n_head"], "n_layers": settings["n_layer"],
            "drop_rate": drop_rate, "qkv_bias": True}


def load_pretrained_gpt2(model_size="124M", models_dir=None, drop_rate=0.0):
    """(model, config, is_standin): a GPTModel in eval mode with GPT-2's weights (or the stand-in)."""
    settings, params, is_standin = load_gpt2_params_or_standin(model_size, models_dir)
    config = gpt2_config(settings, drop_rate)
    model = GPTModel(config)
    load_weights_into_gpt(model, params)
    model.eval()
    return model, config, is_standin


# ---- from ch05/fast-path.ipynb ----

class FastLayerNorm(LayerNorm):
    """Chapter 4's LayerNorm (same `scale` and `shift`), computed by PyTorch's fused kernel."""

    def forward(self, x):
        return F.layer_norm(x, self.scale.shape, self.scale, self.shift, self.eps)


class FastGELU(GELU):
    """Chapter 4's tanh-approximated GELU as one fused PyTorch call."""

    def forward(self, x):
        return F.gelu(x, approximate="tanh")


class KVCache:
    """Keys and values of every layer in buffers allocated once, then written in place.

    The buffers hold `max_len` positions; they are created at the first write, with the
    batch size, heads and dtype of the keys written (so they follow autocast's bf16).
    """

    def __init__(self, max_len):
        self.max_len = max_len
        self.keys = {}
        self.values = {}
        self.pos = 0  # tokens stored so far = position of the next token

    def reset(self):
        self.pos = 0  # the buffers stay; the next writes overwrite them

    def update(self, layer, k, v):
        """Store k, v of shape (b, heads, n_new, head_dim) at self.pos; return all keys and values so far."""
        end = self.pos + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"the KV cache holds {self.max_len} positions; {self.pos} + {k.shape[2]} do not fit")
        if layer not in self.keys:
            shape = (k.shape[0], k.shape[1], self.max_len, k.shape[3])
            self.keys[layer] = k.new_empty(shape)
            self.values[layer] = v.new_empty(shape)
        self.keys[layer][:, :, self.pos:end] = k
        self.values[layer][:, :, self.pos:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class CachedSDPAAttention(SDPAMultiHeadAttention):
    """Chapter 4's SDPA attention (same parameters and mask buffer) that can also use a KVCache."""

    def forward(self, x, kv_cache=None):
        if kv_cache is None:
            return super().forward(x)  # training and plain inference: causal SDPA
        b, n, _ = x.shape
        q = self.W_query(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.W_key(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.W_value(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        start = kv_cache.pos
        keys, values = kv_cache.update(self.layer_idx, k, v)  # (b, heads, start + n, head_dim)
        if start == 0:    # prefill: the usual causal mask
            ctx = F.scaled_dot_product_attention(q, keys, values, is_causal=True)
        elif n == 1:      # one new token sees every cached key
            ctx = F.scaled_dot_product_attention(q, keys, values)
        else:             # several new tokens after a prefix: rows start..start+n of the mask
            allowed = self.mask[start:start + n, :start + n] == 0
            ctx = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed)
        return self.out_proj(ctx.transpose(1, 2).reshape(b, n, self.d_out))


class FastTransformerBlock(TransformerBlock):
    """Chapter 4's block with fused LayerNorm and GELU and the SDPA attention (same parameter names)."""

    def __init__(self, cfg, layer_idx):
        super().__init__(cfg)
        self.att = CachedSDPAAttention(
            d_in=cfg["emb_dim"], d_out=cfg["emb_dim"], context_length=cfg["context_length"],
            dropout=cfg["drop_rate"], num_heads=cfg["n_heads"], qkv_bias=cfg["qkv_bias"])
        self.att.layer_idx = layer_idx
        self.norm1 = FastLayerNorm(cfg["emb_dim"])
        self.norm2 = FastLayerNorm(cfg["emb_dim"])
        self.ff.layers[1] = FastGELU()

    def forward(self, x, kv_cache=None):
        x = x + self.drop_shortcut(self.att(self.norm1(x), kv_cache))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))


class FastGPTModel(GPTModel):
    """Chapter 4's GPTModel with the fast blocks, no host synchronisation in forward, an optional
    KV cache and, with tie_weights=True, GPT-2's own layout: the output head shares the token embedding.

    The parameter names are the chapter model's, so a chapter state_dict loads (see load_chapter_weights).
    """

    def __init__(self, cfg, tie_weights=False):
        super().__init__(cfg)
        self.trf_blocks = nn.Sequential(*[FastTransformerBlock(cfg, i) for i in range(cfg["n_layers"])])
        self.final_norm = FastLayerNorm(cfg["emb_dim"])
        self.tie_weights = tie_weights
        if tie_weights:
            self.out_head.weight = self.tok_emb.weight  # one (vocab, emb) matrix for both

    def forward(self, in_idx, kv_cache=None):
        # Shape checks only: no .item() or other look at the values (that would wait for the GPU).
        # Ids outside the vocabulary still fail inside the embedding.
        if in_idx.dim() != 2:
            raise ValueError(f"expected token ids of shape (batch, seq_len), got shape {tuple(in_idx.shape)}")
        start = 0 if kv_cache is None else kv_cache.pos
        seq_len = in_idx.shape[1]
        check_context_length(start + seq_len, self.pos_emb.num_embeddings,
                             f" ({start} cached + {seq_len} new)")
        pos = torch.arange(start, start + seq_len, device=in_idx.device)
        x = self.drop_emb(self.tok_emb(in_idx) + self.pos_emb(pos))
        for block in self.trf_blocks:
            x = block(x, kv_cache)
        if kv_cache is not None:
            kv_cache.pos += seq_len
        return self.out_head(self.final_norm(x))  # (batch, seq_len, vocab_size)


def load_chapter_weights(fast_model, state_dict):
    """Copy a chapter GPTModel's state_dict (same names) into a FastGPTModel; returns the model.

    A tied fast model has one matrix for the embedding and the output head, so the chapter
    model's two must be equal (as in OpenAI's GPT-2 weights); otherwise this raises ValueError.
    """
    if getattr(fast_model, "tie_weights", False) and not torch.equal(state_dict["out_head.weight"], state_dict["tok_emb.weight"]):
        raise ValueError("the chapter model's out_head.weight differs from its tok_emb.weight; a tied "
                         "FastGPTModel holds only one of them: use tie_weights=False")
    fast_model.load_state_dict(state_dict)
    return fast_model


def fast_from_chapter(chapter_model, cfg, tie_weights=False):
    """A FastGPTModel with a chapter GPTModel's weights, on the same device and in the same mode."""
    device = chapter_model.tok_emb.weight.device
    fast = FastGPTModel(cfg, tie_weights=tie_weights).to(device)
    load_chapter_weights(fast, chapter_model.state_dict())
    return fast.train(chapter_model.training)


def autocast_dtype(device):
    """(dtype, reason): torch.bfloat16 where `device` computes in bf16 natively, else (None, why not)."""
    device = torch.device(device)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "CUDA GPU with bf16"
        return None, "this CUDA GPU has no bf16: fp32"
    if device.type == "cpu":
        try:
            native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        except (AttributeError, RuntimeError):
            native = False
        if native:
            return torch.bfloat16, "CPU with bf16 instructions (oneDNN)"
        return None, "this CPU has no native bf16 (it would be emulated, slower): fp32"
    return None, f"no bf16 autocast on {device.type}: fp32"


def autocast(device, enabled=True):
    """A context manager: bf16 autocast where autocast_dtype chooses it, else nothing (fp32)."""
    dtype = autocast_dtype(device)[0] if enabled else None
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def maybe_compile(model, enabled=True, **compile_kwargs):
    """torch.compile(model) when enabled (the first calls are slow while it compiles), else model."""
    return torch.compile(model, **compile_kwargs) if enabled else model


def fast_adamw(model, lr, weight_decay, fused=None):
    """AdamW over the model's parameters; the fused kernel (CPU and CUDA) unless fused=False."""
    device = next(model.parameters()).device
    if fused is None:
        fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=fused)


class AutocastModel(nn.Module):
    """`model` with its forward under autocast(device); returns float32 outputs, ready for the loss."""

    def __init__(self, model, device):
        super().__init__()
        self.model = model
        self.device = torch.device(device)

    def forward(self, *args, **kwargs):
        with autocast(self.device):
            return self.model(*args, **kwargs).float()


def training_view(model, device, bf16=False, compile=False):
    """The module to train with: `model` under bf16 autocast and/or torch.compile, as asked."""
    if bf16:
        model = AutocastModel(model, device)
    return maybe_compile(model, enabled=compile)


def add_fast_path_arguments(parser, tie_weights=True):
    """The fast path's flags (--fast, --tie-weights, --bf16, --compile) for a training script."""
    group = parser.add_argument_group("fast path (ch05/fast-path.ipynb; same results, faster)")
    group.add_argument("--fast", action="store_true",
                       help="FastGPTModel: SDPA attention, fused layer norm and GELU, no host sync in forward")
    if tie_weights:
        group.add_argument("--tie-weights", action="store_true",
                           help="with --fast: the output head shares the token embedding (GPT-2's layout)")
    group.add_argument("--bf16", action="store_true",
                       help="bf16 autocast while training where the device supports it (otherwise fp32, said at the start)")
    group.add_argument("--compile", action="store_true", help="torch.compile the training model (the first steps are slow)")


def check_fast_path_arguments(parser, args):
    """parser.error for fast-path flags that do not go together (--tie-weights without --fast)."""
    if getattr(args, "tie_weights", False) and not args.fast:
        parser.error("--tie-weights needs --fast")


def report_bf16(args, device, log=print):
    """With --bf16, say whether `device` trains in bf16 or falls back to fp32 (and why)."""
    if args.bf16:
        log(f"--bf16: {autocast_dtype(device)[1]}")


def _next_token(logits, temperature, top_k):
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if temperature > 0.0:
        return torch.multinomial(torch.softmax(logits / temperature, dim=-1), num_samples=1)
    return torch.argmax(logits, dim=-1, keepdim=True)


def generate_fast(model, idx, max_new_tokens, context_size, temperature=0.0, top_k=None, eos_id=None):
    """Chapter 5's generate (same arguments, same tokens) with a preallocated KV cache.

    The prompt (its last context_size tokens) runs once; then each step feeds one token. Once the
    text outgrows context_size the window slides and every position shifts, so the cache is rebuilt
    from the last context_size tokens at each step (exact, but no faster than without a cache).
    eos_id costs one host synchronisation per step (to decide whether to stop).
    """
    check_generation_args(idx, max_new_tokens, context_size)
    check_sampling_args(temperature, top_k)
    if not 1 <= context_size <= model.pos_emb.num_embeddings:
        raise ValueError(f"context_size must lie in [1, {model.pos_emb.num_embeddings}], got {context_size}")
    n = idx.shape[1]
    out = idx.new_empty(idx.shape[0], n + max_new_tokens)  # every token lands here, no torch.cat
    out[:, :n] = idx
    cache = KVCache(context_size)
    with torch.no_grad():
        for step in range(max_new_tokens):
            if step == 0 or cache.pos == context_size:  # prefill, or rebuild after the window slid
                cache.reset()
                logits = model(out[:, max(0, n - context_size):n], kv_cache=cache)[:, -1, :]
            else:
                logits = model(out[:, n - 1:n], kv_cache=cache)[:, -1, :]
            idx_next = _next_token(logits, temperature, top_k)
            if eos_id is not None and bool((idx_next == eos_id).all()):
                break
            out[:, n] = idx_next[:, 0]
            n += 1
    return out[:, :n]


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


MAX_NEW_TOKENS = 10_000  # scripts that print a generated text only at the end cap --max-new-tokens here


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


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format is a zip archive


def load_torch_file(path, flag, map_location="cpu"):
    """What torch.save wrote to `path`, loaded with weights_only=True only; else a ValueError
    naming `flag` and saying what the file is: missing, empty, not torch.save's, unsafe, or damaged."""
    path = Path(path)
    where = f"{flag} {path}"
    if not path.is_file():
        raise ValueError(f"{where}: checkpoint not found" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise ValueError(f"{where} cannot be read: {exc.strerror or exc}") from None
    if not head:
        raise ValueError(f"{where} is an empty file, not a checkpoint")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # objects a weights-only load refuses: never unpickle those
        if head != ZIP_MAGIC:
            raise ValueError(f"{where} is not a checkpoint (not a file written by torch.save)") from None
        raise ValueError(f"{where} is not a checkpoint of this script: it holds Python objects that a "
                         f"safe (weights-only) load refuses, so it was not loaded") from None
    except Exception:  # torch's own errors for a damaged archive or another format
        if head == ZIP_MAGIC:
            raise ValueError(f"{where} is truncated or corrupt: it cannot be loaded, use an intact "
                             f"copy") from None
        raise ValueError(f"{where} is not a checkpoint (not a file written by torch.save)") from None


def is_state_dict(obj):
    """True for a non-empty dict of names to tensors (what model.state_dict() returns)."""
    return (isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) for k in obj)
            and all(isinstance(v, torch.Tensor) for v in obj.values()))


def describe_entries(obj, limit=4):
    """'a, b, c, d and 3 more': the first few keys of a dict, for messages."""
    names = [str(k) for k in obj]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def describe_object(obj):
    """'a Tensor', 'an empty dict' or 'a dict whose entries are not all tensors: a, b': for messages."""
    if not isinstance(obj, dict):
        return f"a {type(obj).__name__}"
    return f"a dict whose entries are not all tensors: {describe_entries(obj)}" if obj else "an empty dict"


def read_checkpoint(path, flag, keys=None, map_location="cpu", expected="the file this script saves"):
    """The checkpoint in `path` (loaded with weights_only=True only), or a ValueError naming `flag`.

    keys=None: a bare state dict is expected (a full checkpoint with a "model" entry is named as
    such). A tuple of keys: a full checkpoint dict holding at least those entries is expected.
    """
    obj = load_torch_file(path, flag, map_location)
    where, needs = f"{flag} {path}", f"{flag} needs {expected}"
    if keys is None:
        if is_state_dict(obj):
            return obj
        if isinstance(obj, dict) and is_state_dict(obj.get("model")):
            raise ValueError(f"{where} is a full checkpoint ({describe_entries(obj)}) where a state dict "
                             f"(model weights only) was expected; {needs}")
        raise ValueError(f"{where} is not a state dict ({describe_object(obj)}); {needs}")
    if is_state_dict(obj):
        raise ValueError(f"{where} is a state dict (model weights only) where a full checkpoint was "
                         f"expected: {needs}")
    if not isinstance(obj, dict):
        raise ValueError(f"{where} is not a checkpoint of this script (a {type(obj).__name__}); {needs}")
    missing = [k for k in keys if k not in obj]
    if missing:
        held = f"; it holds {describe_entries(obj)}" if obj else ""
        raise ValueError(f"{where} is not a checkpoint of this script (a dict without "
                         f"{', '.join(missing)}{held}); {needs}")
    return obj


def name_few(names, limit=3):
    """'3 (a, b, c)' or '5 (a, b, c, ...)': a count and the first few names."""
    return f"{len(names)} ({', '.join(names[:limit])}{', ...' if len(names) > limit else ''})"


def load_weights(model, state_dict, flag, path, hint="", load=None):
    """Load `state_dict` into `model` once its names and shapes match; else a ValueError that names
    `flag` and `path`, says "another configuration" and counts what differs. Returns the model."""
    if not is_state_dict(state_dict):
        raise ValueError(f"{flag} {path}: its weights are not a state dict ({describe_object(state_dict)})")
    ours = model.state_dict()
    missing = [k for k in ours if k not in state_dict]
    unexpected = [k for k in state_dict if k not in ours]
    reshaped = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in ours.items()
                if k in state_dict and state_dict[k].shape != v.shape]
    parts = [f"{label} {name_few(names)}" for label, names in
             (("missing from the file", missing), ("unexpected", unexpected),
              ("of another shape (file vs model)", reshaped)) if names]
    if parts:
        raise ValueError(f"{flag} {path} holds weights of another configuration: {'; '.join(parts)}"
                         + (f"; {hint}" if hint else ""))
    (load or model.load_state_dict)(state_dict)
    return model


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
