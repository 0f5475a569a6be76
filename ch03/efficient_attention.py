"""Faster implementations of the chapter's causal multi-head attention, all interchangeable.

Every class here has the constructor signature of the chapter's `MultiHeadAttention`
(d_in, d_out, context_length, dropout, num_heads, qkv_bias=False), computes the same function
of its input, and can be built from a chapter module with the same weights:

    from efficient_attention import IMPLEMENTATIONS, from_chapter
    fast = from_chapter(IMPLEMENTATIONS["sdpa"], chapter_mha)   # same weights, same output

The implementations:

    chapter      MultiHeadAttention from ch03.ipynb (separate Q/K/V layers, explicit mask)
    fused_qkv    one Linear(d_in, 3 * d_out) for queries, keys and values
    einsum       projections and attention written as torch.einsum contractions
    sdpa         fused QKV + F.scaled_dot_product_attention(is_causal=True)
    sdpa_mask    fused QKV + F.scaled_dot_product_attention with an explicit boolean mask
    torch_mha    torch.nn.MultiheadAttention with a causal attn_mask (needs d_in == d_out)

Bad input raises ValueError naming the numbers involved.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from previous_chapters import MultiHeadAttention, check_attention_input, check_attention_sizes


def _causal_mask(context_length):
    """Boolean (context_length, context_length) matrix, True above the diagonal (= masked)."""
    return torch.triu(torch.ones(context_length, context_length, dtype=torch.bool), diagonal=1)


class MHAFusedQKV(nn.Module):
    """One matrix multiplication produces queries, keys and values together."""

    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False):
        super().__init__()
        check_attention_sizes(d_in, d_out, context_length, num_heads)
        self.d_in, self.d_out, self.context_length = d_in, d_out, context_length
        self.num_heads, self.head_dim = num_heads, d_out // num_heads
        self.qkv = nn.Linear(d_in, 3 * d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mask", _causal_mask(context_length), persistent=False)

    def forward(self, x):
        check_attention_input(x, self.d_in, self.context_length)
        b, t, _ = x.shape
        # (b, t, 3 * d_out) -> (3, b, num_heads, t, head_dim)
        qkv = self.qkv(x).view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        queries, keys, values = qkv.unbind(0)
        scores = queries @ keys.transpose(-2, -1) / self.head_dim**0.5
        scores = scores.masked_fill(self.mask[:t, :t], -torch.inf)
        weights = self.dropout(torch.softmax(scores, dim=-1))
        context = (weights @ values).transpose(1, 2).reshape(b, t, self.d_out)
        return self.out_proj(context)


class MHAEinsum(nn.Module):
    """Projections and attention as einsum contractions, with weights kept as plain Parameters."""

    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False):
        super().__init__()
        check_attention_sizes(d_in, d_out, context_length, num_heads)
        self.d_in, self.d_out, self.context_length = d_in, d_out, context_length
        self.num_heads, self.head_dim = num_heads, d_out // num_heads
        # stored like nn.Linear weights: (d_out, d_in)
        self.W_query = nn.Parameter(torch.empty(d_out, d_in))
        self.W_key = nn.Parameter(torch.empty(d_out, d_in))
        self.W_value = nn.Parameter(torch.empty(d_out, d_in))
        if qkv_bias:
            self.b_query = nn.Parameter(torch.zeros(d_out))
            self.b_key = nn.Parameter(torch.zeros(d_out))
            self.b_value = nn.Parameter(torch.zeros(d_out))
        else:
            self.register_parameter("b_query", None)
            self.register_parameter("b_key", None)
            self.register_parameter("b_value", None)
        for w in (self.W_query, self.W_key, self.W_value):
            nn.init.kaiming_uniform_(w, a=5**0.5)  # nn.Linear's default initialisation
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mask", _causal_mask(context_length), persistent=False)

    def _project(self, x, weight, bias):
        # (b, t, d_in) x (num_heads, head_dim, d_in) -> (b, num_heads, t, head_dim)
        out = torch.einsum("btd,hed->bhte", x, weight.view(self.num_heads, self.head_dim, self.d_in))
        if bias is not None:
            out = out + bias.view(1, self.num_heads, 1, self.head_dim)
        return out

    def forward(self, x):
        check_attention_input(x, self.d_in, self.context_length)
        b, t, _ = x.shape
        queries = self._project(x, self.W_query, self.b_query)
        keys = self._project(x, self.W_key, self.b_key)
        values = self._project(x, self.W_value, self.b_value)
        scores = torch.einsum("bhqe,bhke->bhqk", queries, keys) / self.head_dim**0.5
        scores = scores.masked_fill(self.mask[:t, :t], -torch.inf)
        weights = self.dropout(torch.softmax(scores, dim=-1))
        context = torch.einsum("bhqk,bhke->bqhe", weights, values).reshape(b, t, self.d_out)
        return self.out_proj(context)


class MHASDPA(MHAFusedQKV):
    """Fused QKV plus PyTorch's fused scaled_dot_product_attention kernel with is_causal=True.

    With use_mask=True the causal mask is passed explicitly as attn_mask instead, which shows
    what the is_causal shortcut saves.
    """

    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False, use_mask=False):
        super().__init__(d_in, d_out, context_length, dropout, num_heads, qkv_bias)
        self.use_mask = use_mask

    def forward(self, x):
        check_attention_input(x, self.d_in, self.context_length)
        b, t, _ = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        queries, keys, values = qkv.unbind(0)
        dropout_p = self.dropout.p if self.training else 0.0
        if self.use_mask:  # SDPA's boolean masks mean True = "may attend"
            context = F.scaled_dot_product_attention(queries, keys, values, attn_mask=~self.mask[:t, :t],
                                                     dropout_p=dropout_p)
        else:
            context = F.scaled_dot_product_attention(queries, keys, values, dropout_p=dropout_p, is_causal=True)
        return self.out_proj(context.transpose(1, 2).reshape(b, t, self.d_out))


class MHASDPAExplicitMask(MHASDPA):
    """MHASDPA with the causal mask passed as a tensor (attn_mask) instead of is_causal=True."""

    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False):
        super().__init__(d_in, d_out, context_length, dropout, num_heads, qkv_bias, use_mask=True)


class MHATorchMultiheadAttention(nn.Module):
    """torch.nn.MultiheadAttention with a causal attn_mask.

    nn.MultiheadAttention projects queries from its embed_dim, so it needs d_in == d_out. Its
    `bias` switch covers the QKV and the output projection together, while the chapter's module
    always has an output bias; without qkv_bias we therefore add that bias separately.
    """

    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False):
        super().__init__()
        check_attention_sizes(d_in, d_out, context_length, num_heads)
        if d_in != d_out:
            raise ValueError(f"torch.nn.MultiheadAttention needs d_in == d_out, got d_in={d_in}, d_out={d_out}")
        self.d_in, self.d_out, self.context_length = d_in, d_out, context_length
        self.mha = nn.MultiheadAttention(d_out, num_heads, dropout=dropout, bias=qkv_bias, batch_first=True)
        self.out_bias = None if qkv_bias else nn.Parameter(torch.zeros(d_out))
        self.register_buffer("mask", _causal_mask(context_length), persistent=False)

    def forward(self, x):
        check_attention_input(x, self.d_in, self.context_length)
        t = x.shape[1]
        out, _ = self.mha(x, x, x, attn_mask=self.mask[:t, :t], need_weights=False)
        return out if self.out_bias is None else out + self.out_bias


IMPLEMENTATIONS = {
    "chapter": MultiHeadAttention,
    "fused_qkv": MHAFusedQKV,
    "einsum": MHAEinsum,
    "sdpa": MHASDPA,
    "sdpa_mask": MHASDPAExplicitMask,
    "torch_mha": MHATorchMultiheadAttention,
}


def chapter_config(mha):
    """The constructor arguments of a chapter MultiHeadAttention, read back from the module."""
    return {
        "d_in": mha.W_query.in_features,
        "d_out": mha.d_out,
        "context_length": mha.mask.shape[0],
        "dropout": mha.dropout.p,
        "num_heads": mha.num_heads,
        "qkv_bias": mha.W_query.bias is not None,
    }


@torch.no_grad()
def from_chapter(cls, mha):
    """Build a `cls` module holding exactly the weights of the chapter module `mha`."""
    if not isinstance(mha, MultiHeadAttention):
        raise TypeError(f"expected the chapter's MultiHeadAttention, got {type(mha).__name__}")
    cfg = chapter_config(mha)
    new = cls(**cfg)
    new.train(mha.training)
    q, k, v = mha.W_query, mha.W_key, mha.W_value
    if cls is MultiHeadAttention:
        new.load_state_dict(mha.state_dict())
    elif isinstance(new, MHAFusedQKV):  # also MHASDPA and MHASDPAExplicitMask
        new.qkv.weight.copy_(torch.cat([q.weight, k.weight, v.weight]))
        if cfg["qkv_bias"]:
            new.qkv.bias.copy_(torch.cat([q.bias, k.bias, v.bias]))
        new.out_proj.load_state_dict(mha.out_proj.state_dict())
    elif isinstance(new, MHAEinsum):
        for name in ("query", "key", "value"):
            src = getattr(mha, f"W_{name}")
            getattr(new, f"W_{name}").copy_(src.weight)
            if cfg["qkv_bias"]:
                getattr(new, f"b_{name}").copy_(src.bias)
        new.out_proj.load_state_dict(mha.out_proj.state_dict())
    elif isinstance(new, MHATorchMultiheadAttention):
        new.mha.in_proj_weight.copy_(torch.cat([q.weight, k.weight, v.weight]))
        new.mha.out_proj.weight.copy_(mha.out_proj.weight)
        if cfg["qkv_bias"]:
            new.mha.in_proj_bias.copy_(torch.cat([q.bias, k.bias, v.bias]))
            new.mha.out_proj.bias.copy_(mha.out_proj.bias)
        else:
            new.out_bias.copy_(mha.out_proj.bias)
    else:
        raise TypeError(f"do not know how to copy weights into {cls.__name__}")
    return new
