# Generated from the cells tagged "export" in the notebooks below: only what this folder's
# notebooks and scripts use. Edit the notebooks, not this file; regenerate with:
#     python tests/generate_previous_chapters.py
#
# ch01/ch01.ipynb: pick_device
# ch01/download-helper.ipynb: RemoteFile, KNOWN_FILES, DownloadError, cache_dir, download_file
# ch03/ch03.ipynb: check_context_length, check_attention_sizes, check_attention_input,
#     MultiHeadAttention
# ch04/ch04.ipynb: LayerNorm, GELU, FeedForward, SDPAMultiHeadAttention, TransformerBlock,
#     GPT_CONFIG_KEYS, check_gpt_config, GPTModel
# ch05/ch05.ipynb: GPT2_SIZES, GPT2_FILES, GPT2_URLS, check_model_size, gpt2_remote_file,
#     gpt2_models_dir, download_and_load_gpt2, load_gpt2_from_dir, load_gpt2_params_from_tf_ckpt,
#     assign, load_weights_into_gpt, STANDIN_SETTINGS, standin_gpt2_params,
#     load_gpt2_params_or_standin, gpt2_config, load_pretrained_gpt2
# ch06/ch06.ipynb: SPAM_LABELS, load_sms_spam_collection, create_balanced_dataset, random_split,
#     SPLIT_NAMES, prepare_spam_csvs, SpamDataset, TRAINABLE_CHOICES, prepare_classifier,
#     last_token_positions, classification_logits, calc_accuracy_loader, calc_class_loss_batch,
#     calc_class_loss_loader, evaluate_classifier, train_classifier_simple, plot_values
# appendix-E/appendix-E.ipynb: check_rank_alpha, LoRALayer, LinearWithLoRA, replace_linear_with_lora
# ch01/how-the-scripts-are-built.ipynb (the scripts' tooling, not a lesson): check_finite_loss,
#     ZIP_MAGIC, load_torch_file

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
import math
import pickle
from torch.utils.data import Dataset
import torch.nn as nn
import torch.nn.functional as F
import json
import numpy as np
import csv
import pandas as pd


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


# ---- from ch05/ch05.ipynb ----

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


# ---- from ch06/ch06.ipynb ----

SPAM_LABELS = {"ham": 0, "spam": 1}  # class index of each label


def load_sms_spam_collection():
    """The UCI SMS Spam Collection as a DataFrame with columns Label ("ham"/"spam") and Text."""
    path = download_file("sms+spam+collection.zip")  # the verified member SMSSpamCollection
    return pd.read_csv(path, sep="\t", header=None, names=["Label", "Text"],
                       quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False)


def create_balanced_dataset(df, seed=123):
    """All spam rows plus as many randomly drawn ham rows (the draw is fixed by `seed`)."""
    spam = df[df["Label"] == "spam"]
    ham = df[df["Label"] == "ham"]
    if len(spam) == 0 or len(ham) < len(spam):
        raise ValueError(f"cannot balance {len(ham)} ham and {len(spam)} spam messages: "
                         "need at least one spam message and at least as many ham as spam")
    ham_subset = ham.sample(n=len(spam), random_state=seed)
    return pd.concat([ham_subset, spam]).reset_index(drop=True)


def random_split(df, train_frac=0.7, validation_frac=0.1, seed=123):
    """Shuffle the rows (fixed by `seed`) and cut them into train, validation and test parts."""
    if not (0 < train_frac < 1 and 0 <= validation_frac < 1 and train_frac + validation_frac < 1):
        raise ValueError(f"need 0 < train_frac, 0 <= validation_frac and a sum below 1, "
                         f"got {train_frac} and {validation_frac}")
    df = df.sample(frac=1, random_state=seed).reset_index(drop=True)
    train_end = int(len(df) * train_frac)
    validation_end = train_end + int(len(df) * validation_frac)
    return df[:train_end], df[train_end:validation_end], df[validation_end:]


SPLIT_NAMES = ("train", "validation", "test")


def prepare_spam_csvs(dest_dir=None, seed=123, df=None):
    """Balance and split the collection; return {"train": path, "validation": path, "test": path}.

    dest_dir defaults to the download cache's sms-spam folder; df defaults to the downloaded
    collection (a DataFrame with Label "ham"/"spam" and Text columns).
    """
    df = load_sms_spam_collection() if df is None else df
    balanced = create_balanced_dataset(df, seed)
    balanced["Label"] = balanced["Label"].map(SPAM_LABELS)
    dest_dir = Path(dest_dir) if dest_dir is not None else cache_dir() / "sms-spam"
    dest_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, part in zip(SPLIT_NAMES, random_split(balanced, seed=seed)):
        fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=f".{name}.", suffix=".csv")
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            part.to_csv(f, index=False)
        paths[name] = dest_dir / f"{name}.csv"
        os.replace(tmp, paths[name])
    return paths


class SpamDataset(Dataset):
    """Messages from a CSV file (or DataFrame) with Text and Label columns, as padded token ids."""

    def __init__(self, csv_file, tokenizer, max_length=None, pad_token_id=50256):
        from_frame = isinstance(csv_file, pd.DataFrame)
        self.data = csv_file if from_frame else pd.read_csv(csv_file, keep_default_na=False)
        source = "the DataFrame" if from_frame else str(csv_file)
        missing = {"Text", "Label"} - set(self.data.columns)
        if missing:
            raise ValueError(f"{source}: missing column(s) {sorted(missing)}")
        encoded = [tokenizer.encode(str(t), disallowed_special=()) for t in self.data["Text"]]
        empty = [i for i, ids in enumerate(encoded) if not ids]
        if empty:
            raise ValueError(f"{source}: row {empty[0]} holds an empty message")
        if max_length is None:
            max_length = max((len(ids) for ids in encoded), default=1)
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {max_length}")
        self.max_length = max_length
        self.encoded_texts = [ids[:max_length] + [pad_token_id] * (max_length - len(ids))
                              for ids in encoded]                       # truncate, then pad
        self.labels = [int(label) for label in self.data["Label"]]

    def __getitem__(self, index):
        return (torch.tensor(self.encoded_texts[index], dtype=torch.long),
                torch.tensor(self.labels[index], dtype=torch.long))

    def __len__(self):
        return len(self.labels)


TRAINABLE_CHOICES = ("head", "last-block", "last-two-blocks", "all")


def prepare_classifier(model, num_classes=2, trainable="last-block"):
    """Replace model.out_head by a fresh Linear(emb_dim, num_classes) and choose what trains.

    trainable: "head" (only the new head), "last-block" (plus the last transformer block and
    the final LayerNorm, as in the book), "last-two-blocks", or "all". Returns the model.
    """
    if trainable not in TRAINABLE_CHOICES:
        raise ValueError(f"unknown trainable choice {trainable!r}; valid: {', '.join(TRAINABLE_CHOICES)}")
    for param in model.parameters():
        param.requires_grad = trainable == "all"
    model.out_head = torch.nn.Linear(model.out_head.in_features, num_classes)  # trainable when new
    n_blocks = {"head": 0, "last-block": 1, "last-two-blocks": 2, "all": 0}[trainable]
    unfrozen = list(model.trf_blocks)[len(model.trf_blocks) - n_blocks:] if n_blocks else []
    if n_blocks:
        unfrozen.append(model.final_norm)
    for module in unfrozen:
        for param in module.parameters():
            param.requires_grad = True
    return model


def last_token_positions(input_batch, pad_token_id=50256):
    """Index of each row's last token that is not padding (right padding assumed; 0 if none)."""
    positions = torch.arange(input_batch.shape[1], device=input_batch.device).expand_as(input_batch)
    real = torch.where(input_batch != pad_token_id, positions, torch.zeros_like(positions))
    return real.max(dim=1).values                                    # (batch,)


def classification_logits(model, input_batch, pad_token_id=50256, position="last"):
    """The model's class scores of each message: at its last real token (or its first token)."""
    logits = model(input_batch)                                      # (batch, n_tokens, num_classes)
    if position == "first":
        return logits[:, 0, :]
    if position != "last":
        raise ValueError(f"position must be 'last' or 'first', got {position!r}")
    rows = torch.arange(input_batch.shape[0], device=input_batch.device)
    return logits[rows, last_token_positions(input_batch, pad_token_id)]  # (batch, num_classes)


def calc_accuracy_loader(data_loader, model, device, num_batches=None, pad_token_id=50256, position="last"):
    """Share of correctly classified messages in the first `num_batches` batches (all if None)."""
    if len(data_loader) == 0:
        raise ValueError("the data loader yields no batches: the split has fewer messages than one batch")
    num_batches = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    model.eval()
    correct, seen = 0, 0
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i >= num_batches:
            break
        input_batch, target_batch = input_batch.to(device), target_batch.to(device)
        with torch.no_grad():
            predicted = classification_logits(model, input_batch, pad_token_id, position).argmax(dim=-1)
        seen += target_batch.shape[0]
        correct += (predicted == target_batch).sum().item()
    return correct / seen


def calc_class_loss_batch(input_batch, target_batch, model, device, pad_token_id=50256, position="last"):
    """Cross-entropy of the class scores at each message's last real token (or first token)."""
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    logits = classification_logits(model, input_batch, pad_token_id, position)  # (batch, num_classes)
    return torch.nn.functional.cross_entropy(logits, target_batch)


def calc_class_loss_loader(data_loader, model, device, num_batches=None, pad_token_id=50256, position="last"):
    """Average classification loss over the first `num_batches` batches (all if None)."""
    if len(data_loader) == 0:
        raise ValueError("the data loader yields no batches: the split has fewer messages than one batch")
    num_batches = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    total = 0.0
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i >= num_batches:
            break
        total += calc_class_loss_batch(input_batch, target_batch, model, device, pad_token_id, position).item()
    return total / num_batches


def evaluate_classifier(model, train_loader, val_loader, device, eval_iter, pad_token_id=50256, position="last"):
    """Training and validation loss on the first `eval_iter` batches, without dropout or gradients."""
    model.eval()
    with torch.no_grad():
        train_loss = calc_class_loss_loader(train_loader, model, device, eval_iter, pad_token_id, position)
        val_loss = calc_class_loss_loader(val_loader, model, device, eval_iter, pad_token_id, position)
    model.train()
    return train_loss, val_loss


def train_classifier_simple(model, train_loader, val_loader, optimizer, device, num_epochs, eval_freq,
                            eval_iter, pad_token_id=50256, position="last", progress=True):
    """Train; return (train_losses, val_losses, train_accs, val_accs, examples_seen).

    Losses are recorded every `eval_freq` steps, accuracies after every epoch.
    """
    if eval_freq < 1 or eval_iter < 1:
        raise ValueError(f"eval_freq and eval_iter must be at least 1, got {eval_freq} and {eval_iter}")
    if len(train_loader) == 0:
        raise ValueError("the training loader yields no batches: fewer training messages than one batch")
    train_losses, val_losses, train_accs, val_accs = [], [], [], []
    examples_seen, global_step = 0, -1
    for epoch in range(num_epochs):
        model.train()
        for input_batch, target_batch in tqdm(train_loader, desc=f"epoch {epoch + 1}/{num_epochs}",
                                              disable=not progress):
            optimizer.zero_grad()
            loss = calc_class_loss_batch(input_batch, target_batch, model, device, pad_token_id, position)
            check_finite_loss(loss, f"at step {global_step + 1}", optimizer.param_groups[0]["lr"])
            loss.backward()
            optimizer.step()
            examples_seen += input_batch.shape[0]
            global_step += 1
            if global_step % eval_freq == 0:
                train_loss, val_loss = evaluate_classifier(model, train_loader, val_loader, device,
                                                           eval_iter, pad_token_id, position)
                train_losses.append(train_loss)
                val_losses.append(val_loss)
                print(f"Ep {epoch + 1} (step {global_step:06d}): train loss {train_loss:.3f}, val loss {val_loss:.3f}")
        train_accs.append(calc_accuracy_loader(train_loader, model, device, eval_iter, pad_token_id, position))
        val_accs.append(calc_accuracy_loader(val_loader, model, device, eval_iter, pad_token_id, position))
        print(f"epoch {epoch + 1}: training accuracy {train_accs[-1] * 100:.1f}% | "
              f"validation accuracy {val_accs[-1] * 100:.1f}%")
    return train_losses, val_losses, train_accs, val_accs, examples_seen


def plot_values(epochs_seen, examples_seen, train_values, val_values, label="loss"):
    """Training and validation curves against epochs, with the examples seen on a second x axis."""
    import matplotlib.pyplot as plt

    fig, ax1 = plt.subplots(figsize=(5, 3))
    ax1.plot(epochs_seen, train_values, marker="o", markersize=3, label=f"training {label}")
    ax1.plot(epochs_seen, val_values, marker="o", markersize=3, linestyle="-.", label=f"validation {label}")
    ax1.set_xlabel("epochs")
    ax1.set_ylabel(label)
    ax1.legend()
    ax2 = ax1.twiny()  # the same curves against the number of examples seen
    ax2.plot(examples_seen, train_values, alpha=0)
    ax2.set_xlabel("examples seen")
    fig.tight_layout()
    return fig


# ---- from appendix-E/appendix-E.ipynb ----

def check_rank_alpha(rank, alpha):
    """Raise ValueError unless rank is a positive integer and alpha a finite positive number."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a finite positive number, got {alpha!r}")


class LoRALayer(nn.Module):
    """The low-rank update alpha / rank * (x @ A @ B), A of shape (in_dim, rank), B (rank, out_dim)."""

    def __init__(self, in_dim, out_dim, rank, alpha):
        super().__init__()
        check_rank_alpha(rank, alpha)
        self.rank = rank
        self.alpha = alpha
        self.scaling = alpha / rank
        self.A = nn.Parameter(torch.empty(in_dim, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))   # nn.Linear's rule for its weight
        self.B = nn.Parameter(torch.zeros(rank, out_dim))  # zero: the update starts at nothing

    def delta_weight(self):
        """The update in nn.Linear's weight layout (out_dim, in_dim), scaling included."""
        return self.scaling * (self.A @ self.B).T

    def forward(self, x):
        return self.scaling * (x @ self.A @ self.B)  # (..., out_dim)


class LinearWithLoRA(nn.Module):
    """An nn.Linear (kept as .linear) plus a LoRALayer (.lora) whose output is added to it."""

    def __init__(self, linear, rank, alpha):
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"LinearWithLoRA wraps an nn.Linear, got {type(linear).__name__}")
        self.linear = linear
        self.lora = LoRALayer(linear.in_features, linear.out_features, rank, alpha)
        self.lora.to(device=linear.weight.device, dtype=linear.weight.dtype)
        self.merged = False  # True while the update sits inside linear.weight

    def forward(self, x):
        if self.merged:
            return self.linear(x)
        return self.linear(x) + self.lora(x)


def replace_linear_with_lora(model, rank, alpha):
    """Wrap every nn.Linear inside `model` (recursively) in a LinearWithLoRA; return the model."""
    check_rank_alpha(rank, alpha)
    for name, module in model.named_children():
        if isinstance(module, nn.Linear):
            setattr(model, name, LinearWithLoRA(module, rank, alpha))
        elif not isinstance(module, LinearWithLoRA):
            replace_linear_with_lora(module, rank, alpha)
    return model


# ---- from ch01/how-the-scripts-are-built.ipynb ----

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
