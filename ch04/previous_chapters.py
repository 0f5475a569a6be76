# Generated from the cells tagged "export" in the notebooks below: only what this folder's
# notebooks and scripts use. Edit the notebooks, not this file; regenerate with:
#     python tests/generate_previous_chapters.py
#
# ch03/ch03.ipynb: check_context_length, check_attention_sizes, check_attention_input,
#     MultiHeadAttention
# ch04/ch04.ipynb: GPT_CONFIG_124M, LayerNorm, GELU, FeedForward, SDPAMultiHeadAttention,
#     TransformerBlock, GPT_CONFIG_KEYS, check_gpt_config, GPTModel, check_generation_args,
#     generate_text_simple
# ch01/how-the-scripts-are-built.ipynb (the scripts' tooling, not a lesson): exit_without_teardown,
#     run_script, MAX_NEW_TOKENS, range_error, check_range, device_memory, memory_error, ZIP_MAGIC,
#     load_torch_file, is_state_dict, describe_entries, describe_object, read_checkpoint, name_few,
#     load_weights

import os
import torch
from pathlib import Path
import sys
import math
import pickle
import torch.nn as nn
import torch.nn.functional as F


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
