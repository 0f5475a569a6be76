# Generated from the cells tagged "export" in the notebooks below: only what this folder's
# notebooks and scripts use. Edit the notebooks, not this file; regenerate with:
#     python tests/generate_previous_chapters.py
#
# ch01/ch01.ipynb: pick_device
# ch03/ch03.ipynb: check_context_length, check_attention_sizes, check_attention_input,
#     MultiHeadAttention
# ch04/ch04.ipynb: LayerNorm, GELU, FeedForward, SDPAMultiHeadAttention, TransformerBlock,
#     GPT_CONFIG_KEYS, check_gpt_config, GPTModel
# appendix-F/appendix-F.ipynb: make_problems, prompt_text, answer_only_text, chain_of_thought_text,
#     TARGETS, completion_length, CharTokenizer, tokenizer, ANSWER_AT_END, WELL_FORMED_COT,
#     extract_answer, verify, is_well_formed, reasoner_config, sft_batch, forward_with_cache,
#     sample_completions, encode_prompts, until_end, completion_mask, greedy_accuracy, train_sft,
#     rewards_for, group_advantages, token_logprobs, grpo_loss, grpo_step, train_grpo, sample_traces
# ch01/how-the-scripts-are-built.ipynb (the scripts' tooling, not a lesson): range_error,
#     check_values, check_range, check_finite_loss, save_atomic, ZIP_MAGIC, load_torch_file,
#     is_state_dict, describe_entries, describe_object, read_checkpoint, name_few, load_weights,
#     model_from_checkpoint, output_problem, check_output, add_overwrite_argument

import os
import torch
import tempfile
from pathlib import Path
import math
import pickle
import re
import torch.nn as nn
import torch.nn.functional as F
import random
import copy


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


# ---- from appendix-F/appendix-F.ipynb ----

def make_problems(n_train, n_test, digits=5, seed=123):
    """Seeded addition problems (a, b) with `digits`-digit operands; train and test share none."""
    check_values(range_error("n_train", n_train, 0), range_error("n_test", n_test, 0),
                 range_error("digits", digits, 1))
    lo, hi = 10 ** (digits - 1), 10 ** digits - 1
    if n_train + n_test > (hi - lo + 1) ** 2 // 2:
        raise ValueError(f"cannot draw {n_train + n_test} distinct {digits}-digit problems")
    rng = random.Random(seed)
    seen, problems = set(), []
    while len(problems) < n_train + n_test:
        p = (rng.randint(lo, hi), rng.randint(lo, hi))
        if p not in seen:  # every problem at most once, so the split below is disjoint
            seen.add(p)
            problems.append(p)
    return problems[:n_train], problems[n_train:]


def prompt_text(problem, digits=5):
    """The question the model sees: both operands zero-padded to `digits` characters."""
    a, b = problem
    return f"{a:0{digits}d}+{b:0{digits}d}="


def answer_only_text(problem, digits=5):
    """Target (a): only the final answer, between '>' and the end mark '.'."""
    return f">{sum(problem)}."


def chain_of_thought_text(problem, digits=5):
    """Target (b): one step per digit, right to left, 'a+b+carry=two-digit sum', then the answer."""
    a, b = problem
    steps, carry = [], 0
    for i in range(digits):
        da, db = a // 10 ** i % 10, b // 10 ** i % 10
        total = da + db + carry
        steps.append(f"{da}+{db}+{carry}={total:02d}")
        carry = total // 10  # the tens digit of this step is the next step's carry
    return " ".join(steps) + answer_only_text(problem, digits)


TARGETS = {"answer-only": answer_only_text, "cot": chain_of_thought_text}


def completion_length(method, digits=5):
    """Longest completion a method produces (the answer can have digits + 1 digits)."""
    largest = (10 ** digits - 1, 10 ** digits - 1)
    return len(TARGETS[method](largest, digits))


class CharTokenizer:
    """One token per character; id 0 is padding (used only after a completion's end)."""

    def __init__(self, chars="0123456789+= >."):
        self.itos = ["_"] + list(chars)
        self.stoi = {ch: i for i, ch in enumerate(self.itos)}
        self.pad_id, self.end_id = 0, self.stoi["."]

    def encode(self, text):
        unknown = sorted(set(text) - set(self.stoi))
        if unknown:
            raise ValueError(f"characters not in the vocabulary: {unknown}")
        return [self.stoi[ch] for ch in text]

    def decode(self, ids):
        return "".join(self.itos[i] for i in ids)

    def __len__(self):
        return len(self.itos)


tokenizer = CharTokenizer()


ANSWER_AT_END = re.compile(r">(\d+)\.$")
WELL_FORMED_COT = re.compile(r"^(\d\+\d\+\d=\d\d )*\d\+\d\+\d=\d\d>\d+\.$")


def extract_answer(completion):
    """The integer between the last '>' and the first end mark '.', or None when malformed."""
    end = completion.find(".")
    if end < 0:
        return None  # never finished
    match = ANSWER_AT_END.search(completion[: end + 1])
    return int(match.group(1)) if match else None


def verify(problem, completion):
    """True only when the completion's final answer equals a + b exactly."""
    return extract_answer(completion) == sum(problem)


def is_well_formed(completion):
    """Scratchpad steps followed by an answer, up to the end mark (the format reward's test)."""
    end = completion.find(".")
    return end >= 0 and WELL_FORMED_COT.match(completion[: end + 1]) is not None


def reasoner_config(digits=5, emb_dim=64, n_layers=2, n_heads=4):
    """A tiny GPTModel configuration for the addition task (no dropout: the data never repeats)."""
    context = len(prompt_text((0, 0), digits)) + completion_length("cot", digits)
    return {"vocab_size": len(tokenizer), "context_length": context, "emb_dim": emb_dim,
            "n_heads": n_heads, "n_layers": n_layers, "drop_rate": 0.0, "qkv_bias": False,
            "use_sdpa": True}


def sft_batch(problems, target, digits=5):
    """Inputs and next-token targets; the loss ignores (-100) the prompt and the padding.

    target: a method name from TARGETS, or a function problem -> completion text.
    """
    make = TARGETS[target] if isinstance(target, str) else (lambda p, d: target(p))
    seqs = [tokenizer.encode(prompt_text(p, digits) + make(p, digits)) for p in problems]
    n_prompt = len(prompt_text(problems[0], digits))
    width = max(len(s) for s in seqs) - 1
    inputs = torch.full((len(seqs), width), tokenizer.pad_id)
    targets = torch.full((len(seqs), width), -100)
    for i, s in enumerate(seqs):
        ids = torch.tensor(s)
        inputs[i, : len(s) - 1] = ids[:-1]
        targets[i, : len(s) - 1] = ids[1:]
    targets[:, : n_prompt - 1] = -100  # do not learn to predict the question itself
    return inputs, targets  # (batch, width) each


def forward_with_cache(model, idx, cache):
    """GPTModel's forward pass for new tokens `idx`, reusing the keys/values of earlier ones.

    cache: a list with one (keys, values) pair per block, or None entries before the first call.
    """
    start = 0 if cache[0] is None else cache[0][0].shape[2]
    b, n = idx.shape
    x = model.tok_emb(idx) + model.pos_emb(torch.arange(start, start + n, device=idx.device))
    for i, block in enumerate(model.trf_blocks):
        att = block.att
        h = block.norm1(x)
        q, k, v = (w(h).view(b, n, att.num_heads, att.head_dim).transpose(1, 2)
                   for w in (att.W_query, att.W_key, att.W_value))  # (b, heads, n, head_dim)
        if cache[i] is not None:
            k, v = torch.cat([cache[i][0], k], dim=2), torch.cat([cache[i][1], v], dim=2)
        cache[i] = (k, v)
        # new token j sees every cached token and the new tokens up to itself
        mask = torch.ones(n, start + n, dtype=torch.bool, device=idx.device).tril(start)
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=None if n == 1 else mask)
        x = x + att.out_proj(ctx.transpose(1, 2).reshape(b, n, att.d_out))
        x = x + block.ff(block.norm2(x))
    return model.out_head(model.final_norm(x))  # (b, n, vocab_size)


@torch.no_grad()
def sample_completions(model, prompts, n_new, temperature=0.0, generator=None):
    """Complete a batch of equal-length prompts (batch, n_prompt) by exactly n_new tokens.

    Returns the new tokens (batch, n_new) and each one's log-probability under the model at
    temperature 1 (batch, n_new). temperature 0 is greedy decoding.
    """
    model.eval()
    cache = [None] * len(model.trf_blocks)
    logits = forward_with_cache(model, prompts, cache)[:, -1]
    tokens, logps = [], []
    for _ in range(n_new):
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator)  # (batch, 1)
        else:
            nxt = logits.argmax(dim=-1, keepdim=True)
        logps.append(torch.log_softmax(logits, dim=-1).gather(1, nxt))
        tokens.append(nxt)
        logits = forward_with_cache(model, nxt, cache)[:, -1]
    return torch.cat(tokens, dim=1), torch.cat(logps, dim=1)


def encode_prompts(problems, digits=5, device="cpu"):
    """The prompts as a (len(problems), 2 * digits + 2) tensor of token ids."""
    return torch.tensor([tokenizer.encode(prompt_text(p, digits)) for p in problems], device=device)


def until_end(ids):
    """A completion's text up to and including its first end mark (or all of it)."""
    text = tokenizer.decode(ids)
    end = text.find(".")
    return text if end < 0 else text[: end + 1]


def completion_mask(completions):
    """1 for the tokens up to and including each completion's first end mark, else 0."""
    is_end = (completions == tokenizer.end_id).int()
    before_end = (is_end.cumsum(dim=1) - is_end) == 0  # no end mark strictly before this token
    return before_end.float()  # (n, n_new)


def greedy_accuracy(model, problems, method="cot", digits=5, batch_size=500):
    """Fraction of problems whose greedy completion the verifier accepts."""
    correct = 0
    for i in range(0, len(problems), batch_size):
        chunk = problems[i: i + batch_size]
        prompts = encode_prompts(chunk, digits, next(model.parameters()).device)
        out, _ = sample_completions(model, prompts, completion_length(method, digits))
        correct += sum(verify(p, until_end(o.tolist())) for p, o in zip(chunk, out.cpu()))
    return correct / len(problems)


def train_sft(model, train_problems, target, steps, batch_size=64, lr=3e-3, digits=5, seed=123,
              eval_problems=None, eval_every=100, snapshots=None, log=None):
    """Supervised fine-tuning on `target` (see sft_batch); returns [(step, held-out greedy accuracy)].

    A warm-up of 50 steps, then a cosine decay of the learning rate to 10% at `steps`.
    snapshots: an optional dict {step: None}; its values are filled with copies of the weights.
    """
    check_values(range_error("steps", steps, 1), range_error("batch_size", batch_size, 1),
                 range_error("lr", lr, 0, low_open=True), range_error("eval_every", eval_every, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 50) * (
        0.55 + 0.45 * math.cos(math.pi * min(s, steps) / steps)))
    rng = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    method = "answer-only" if target == "answer-only" else "cot"  # how long completions can be
    history = []
    for step in range(1, steps + 1):
        model.train()
        picks = torch.randint(len(train_problems), (batch_size,), generator=rng).tolist()
        inputs, targets = sft_batch([train_problems[i] for i in picks], target, digits)
        inputs, targets = inputs.to(device), targets.to(device)
        loss = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        check_finite_loss(loss, f"at step {step}", schedule.get_last_lr()[0])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if snapshots is not None and step in snapshots:
            snapshots[step] = copy.deepcopy(model.state_dict())
        if eval_problems is not None and (step % eval_every == 0 or step == steps):
            history.append((step, greedy_accuracy(model, eval_problems, method, digits)))
            if log is not None:
                log(f"step {step}: loss {loss.item():.3f}, held-out greedy accuracy {history[-1][1]:.1%}")
    return history


def rewards_for(problems, completions, format_weight=0.1):
    """Verifier reward (1 if the answer is exactly right) plus a small reward for the format."""
    return torch.tensor([float(verify(p, c)) + format_weight * float(is_well_formed(c))
                         for p, c in zip(problems, completions)])  # (n,)


def group_advantages(rewards, eps=1e-4):
    """GRPO's advantages: each reward minus its group's mean, over the group's std. (groups, G)"""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, unbiased=False, keepdim=True)
    return (rewards - mean) / (std + eps)  # all zeros for a group whose samples tie


def token_logprobs(model, prompts, completions):
    """Log-probability of each completion token under `model`, in one forward pass. (n, n_new)"""
    seq = torch.cat([prompts, completions], dim=1)
    logits = model(seq[:, :-1])[:, prompts.shape[1] - 1:]  # the positions that predict completions
    return torch.log_softmax(logits.float(), dim=-1).gather(2, completions.unsqueeze(-1)).squeeze(-1)


def grpo_loss(logps, old_logps, advantages, mask, ref_logps=None, clip_eps=0.2, kl_coef=0.0):
    """Clipped policy-gradient loss on the sampled tokens, plus an optional KL penalty.

    logps, old_logps, ref_logps, mask: (n, n_new); advantages: (n,), one per completion.
    """
    ratio = torch.exp(logps - old_logps)  # 1 on the first update after sampling
    adv = advantages.unsqueeze(1)
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    per_token = -surrogate
    if kl_coef > 0:  # the "k3" estimate of KL(policy || reference), always >= 0
        log_r = ref_logps - logps
        per_token = per_token + kl_coef * (torch.exp(log_r) - log_r - 1)
    return ((per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()


def grpo_step(policy, optimizer, prompts, completions, rewards, group_size, reference=None,
              clip_eps=0.2, kl_coef=0.0, inner_updates=2):
    """One GRPO update from sampled completions; rewards (n,) with n = groups * group_size."""
    advantages = group_advantages(rewards.view(-1, group_size)).flatten()
    mask = completion_mask(completions)
    with torch.no_grad():
        old_logps = token_logprobs(policy, prompts, completions)
        ref_logps = token_logprobs(reference, prompts, completions) if kl_coef > 0 else None
    policy.train()
    for _ in range(inner_updates):  # later updates see ratios != 1, which the clip bounds
        loss = grpo_loss(token_logprobs(policy, prompts, completions), old_logps, advantages, mask,
                         ref_logps, clip_eps, kl_coef)
        check_finite_loss(loss, "in a GRPO update", optimizer.param_groups[0]["lr"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


def train_grpo(policy, train_problems, steps, problems_per_step=16, group_size=8, lr=1e-4,
               clip_eps=0.2, kl_coef=0.0, format_weight=0.1, temperature=1.0, digits=5, seed=123,
               eval_problems=None, eval_every=10, log=None):
    """GRPO from `policy`'s current weights.

    Returns [(step, mean reward, fraction well formed, held-out greedy accuracy)].
    """
    check_values(range_error("steps", steps, 1), range_error("problems_per_step", problems_per_step, 1),
                 range_error("group_size", group_size, 2), range_error("lr", lr, 0, low_open=True),
                 range_error("temperature", temperature, 0, low_open=True), range_error("eval_every", eval_every, 1))
    reference = copy.deepcopy(policy).eval() if kl_coef > 0 else None  # frozen starting point
    optimizer = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    rng = torch.Generator().manual_seed(seed)  # which problems
    device = next(policy.parameters()).device
    sampler = torch.Generator(device).manual_seed(seed)  # which samples
    n_new = completion_length("cot", digits)
    history = []
    for step in range(1, steps + 1):
        picks = torch.randint(len(train_problems), (problems_per_step,), generator=rng).tolist()
        problems = [train_problems[i] for i in picks for _ in range(group_size)]  # G copies each
        prompts = encode_prompts(problems, digits, device)
        completions, _ = sample_completions(policy, prompts, n_new, temperature, sampler)
        texts = [until_end(c.tolist()) for c in completions.cpu()]
        rewards = rewards_for(problems, texts, format_weight).to(device)
        grpo_step(policy, optimizer, prompts, completions, rewards, group_size, reference,
                  clip_eps, kl_coef)
        if eval_problems is not None and (step % eval_every == 0 or step == steps):
            well_formed = sum(map(is_well_formed, texts)) / len(texts)
            accuracy = greedy_accuracy(policy, eval_problems, "cot", digits)
            history.append((step, rewards.mean().item(), well_formed, accuracy))
            if log is not None:
                log(f"step {step}: mean reward {history[-1][1]:.3f}, held-out greedy accuracy {accuracy:.1%}")
    return history


def sample_traces(teacher, problems, digits=5, temperature=0.7, seed=123, batch_size=1000):
    """Rejection sampling: one completion per problem, kept only if well formed and verified.

    Returns {problem: completion text} for the kept problems.
    """
    device = next(teacher.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    n_new = completion_length("cot", digits)
    traces = {}
    for i in range(0, len(problems), batch_size):
        chunk = problems[i: i + batch_size]
        out, _ = sample_completions(teacher, encode_prompts(chunk, digits, device), n_new, temperature, generator)
        for p, o in zip(chunk, out.cpu()):
            text = until_end(o.tolist())
            if is_well_formed(text) and verify(p, text):
                traces[p] = text
    return traces


# ---- from ch01/how-the-scripts-are-built.ipynb ----

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


def check_values(*messages):
    """Raise a ValueError with the first message that is not None: for functions, not parsers."""
    for message in messages:
        if message:
            raise ValueError(message)


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


def model_from_checkpoint(model_cls, ckpt, flag, path, weights="model"):
    """model_cls(ckpt["config"]) with ckpt[weights] loaded through load_weights; a config entry that
    cannot build the model is a ValueError naming `flag` and `path`, not a traceback."""
    try:
        model = model_cls(ckpt["config"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # a damaged or edited config entry
        raise ValueError(f"{flag} {path}: its config cannot build a {model_cls.__name__} "
                         f"({type(exc).__name__}: {str(exc)[:120]})") from None
    return load_weights(model, ckpt[weights], flag, path, hint="its weights do not fit its own config entry")


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
