"""The chapter 4 GPT model with a key/value (KV) cache for fast text generation.

Without a cache, every generation step runs the model over the whole context again, although
only the newest token is new. The keys and values of the earlier tokens do not change between
steps (each token only attends to itself and earlier tokens), so we can keep them ("cache" them)
and run the model over just the newest token.

Only what the cache changes is new here: the attention (it stores keys and values), the
transformer block and the model (they pass `use_cache` down and track the position of the next
token), and `generate_text_simple`. LayerNorm, FeedForward and the attention's parameters are the
chapter's own, so a state_dict of the chapter's GPTModel loads into this GPTModel unchanged.

What happens at the context length: the model has `context_length` absolute position embeddings.
Once the text is longer than the generation window (`context_size`), the plain generator feeds
only the last `context_size` tokens, so every token's position shifts by one at each step and all
cached keys and values become stale. To stay token-for-token identical to the plain generator,
`generate_text_simple(..., use_cache=True)` then rebuilds the cache from the last `context_size`
tokens at every step (no speed-up beyond that point, but exact results). Calling the model directly
with `use_cache=True` past the context length raises a ValueError naming both lengths.

Run as a script to generate from a prompt with the (random or loaded) 124M model:

    python ch04/gpt_with_kv_cache.py --prompt "Hello, I am" --max-new-tokens 20
    python ch04/gpt_with_kv_cache.py --no-cache --checkpoint model.pth
"""
import argparse
import time
from pathlib import Path

import torch

from previous_chapters import (GPT_CONFIG_124M, MAX_NEW_TOKENS, MultiHeadAttention, check_context_length, check_range,
                               load_weights, read_checkpoint, run_script)
from previous_chapters import GPTModel as ChapterGPTModel
from previous_chapters import TransformerBlock as ChapterTransformerBlock


class MultiHeadAttentionWithCache(MultiHeadAttention):
    """The chapter's MultiHeadAttention (same parameters and mask) plus a key/value cache."""

    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False):
        super().__init__(d_in, d_out, context_length, dropout, num_heads, qkv_bias)
        self.reset_cache()

    def reset_cache(self):
        self.cache_k, self.cache_v = None, None

    def forward(self, x, use_cache=False):
        b, num_tokens, d_in = x.shape
        context_length = self.mask.shape[0]
        past = self.cache_k.shape[2] if (use_cache and self.cache_k is not None) else 0
        if past and self.cache_k.shape[0] != b:
            raise ValueError(f"the cache holds a batch of {self.cache_k.shape[0]} sequences but the input has {b}; "
                             "call reset_kv_cache() before starting new sequences")
        check_context_length(past + num_tokens, context_length, hint=f" ({past} of them in the cache)")
        queries = self.W_query(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        keys = self.W_key(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        values = self.W_value(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        if use_cache:
            if self.cache_k is not None:
                keys = torch.cat([self.cache_k, keys], dim=2)      # (b, heads, past + new, head_dim)
                values = torch.cat([self.cache_v, values], dim=2)
            self.cache_k, self.cache_v = keys, values
        attn_scores = queries @ keys.transpose(2, 3)               # (b, heads, new, past + new)
        # query i sits at absolute position past + i and may see keys 0 .. past + i
        mask_bool = self.mask[past:past + num_tokens, :past + num_tokens].bool()
        attn_scores.masked_fill_(mask_bool, -torch.inf)
        attn_weights = torch.softmax(attn_scores / self.head_dim ** 0.5, dim=-1)
        attn_weights = self.dropout(attn_weights)
        context = (attn_weights @ values).transpose(1, 2).contiguous().view(b, num_tokens, self.d_out)
        return self.out_proj(context)


class TransformerBlock(ChapterTransformerBlock):
    """The chapter's transformer block with the cached attention; `use_cache` is passed on to it."""

    def __init__(self, cfg):
        super().__init__(cfg, attention_cls=MultiHeadAttentionWithCache)

    def forward(self, x, use_cache=False):
        x = x + self.drop_shortcut(self.att(self.norm1(x), use_cache=use_cache))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))


class GPTModel(ChapterGPTModel):
    """The chapter's GPTModel (same parameter names) with a KV cache.

    model(idx) behaves exactly like the chapter's model. model(idx, use_cache=True) appends the
    keys and values of idx to the cache and places idx at positions current_pos, current_pos + 1, ...
    Call reset_kv_cache() before starting a new sequence.
    """

    def __init__(self, cfg):
        super().__init__(cfg, block_cls=TransformerBlock)
        self.current_pos = 0  # number of tokens in the cache = position of the next token

    def reset_kv_cache(self):
        self.current_pos = 0
        for block in self.trf_blocks:
            block.att.reset_cache()

    def kv_cache_bytes(self):
        """Memory held by the cached keys and values, in bytes."""
        return sum(t.numel() * t.element_size() for block in self.trf_blocks
                   for t in (block.att.cache_k, block.att.cache_v) if t is not None)

    def forward(self, in_idx, use_cache=False):
        start = self.current_pos if use_cache else 0
        context_length = self.pos_emb.num_embeddings
        if use_cache and in_idx.dim() == 2 and start + in_idx.shape[1] > context_length:
            raise ValueError(f"the KV cache holds {start} tokens; {in_idx.shape[1]} more would make "
                             f"{start + in_idx.shape[1]}, beyond context_length {context_length}. "
                             "Call reset_kv_cache() and feed at most the last context_length tokens")
        self.check_input(in_idx)  # the chapter's checks: shape, length, token ids
        seq_len = in_idx.shape[1]
        pos = torch.arange(start, start + seq_len, device=in_idx.device)
        x = self.drop_emb(self.tok_emb(in_idx) + self.pos_emb(pos))
        for block in self.trf_blocks:
            x = block(x, use_cache=use_cache)
        if use_cache:
            self.current_pos += seq_len
        return self.out_head(self.final_norm(x))  # (batch, seq_len, vocab_size)


def generate_text_simple(model, idx, max_new_tokens, context_size, use_cache=True):
    """Greedy decoding, token for token the same as the chapter's generate_text_simple.

    With use_cache=True the prompt (its last context_size tokens) is processed once, then each
    step feeds only the newest token. When the text outgrows context_size, the window slides: every
    position shifts, so the cache is rebuilt from the last context_size tokens at each such step.
    """
    if idx.dim() != 2 or idx.shape[1] == 0:
        raise ValueError(f"idx must have shape (batch, n_tokens) with n_tokens >= 1, got {tuple(idx.shape)}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    context_length = model.pos_emb.num_embeddings
    if not 1 <= context_size <= context_length:
        raise ValueError(f"context_size must lie in [1, {context_length}] (the model's context_length), "
                         f"got {context_size}")
    if max_new_tokens == 0:
        return idx
    with torch.no_grad():
        if not use_cache:
            for _ in range(max_new_tokens):
                logits = model(idx[:, -context_size:])[:, -1, :]
                idx = torch.cat((idx, torch.argmax(logits, dim=-1, keepdim=True)), dim=1)
            return idx
        model.reset_kv_cache()
        logits = model(idx[:, -context_size:], use_cache=True)[:, -1, :]  # "prefill" the cache
        for step in range(max_new_tokens):
            idx_next = torch.argmax(logits, dim=-1, keepdim=True)
            idx = torch.cat((idx, idx_next), dim=1)
            if step == max_new_tokens - 1:
                break
            if model.current_pos < context_size:  # room left: feed only the new token
                logits = model(idx_next, use_cache=True)[:, -1, :]
            else:                                  # window slides: positions shift, rebuild
                model.reset_kv_cache()
                logits = model(idx[:, -context_size:], use_cache=True)[:, -1, :]
    model.reset_kv_cache()  # free the cache's memory
    return idx


CHECKPOINT_EXPECTED = "a state_dict of the chapter's GPTModel in the 124M configuration (torch.save(model.state_dict(), path))"


def checkpoint_hint():
    """What the script's --checkpoint must fit: GPT_CONFIG_124M's sizes."""
    cfg = GPT_CONFIG_124M
    return (f"--checkpoint needs the 124M configuration (GPT_CONFIG_124M: context_length {cfg['context_length']}, "
            f"emb_dim {cfg['emb_dim']}, {cfg['n_layers']} layers)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default="Hello, I am")
    parser.add_argument("--max-new-tokens", type=int, default=20,
                        help=f"tokens to generate, 0 to {MAX_NEW_TOKENS:,} (printed at the end)")
    parser.add_argument("--context-size", type=int, default=GPT_CONFIG_124M["context_length"])
    parser.add_argument("--no-cache", action="store_true", help="generate without the KV cache")
    parser.add_argument("--checkpoint", type=Path,
                        help="a state_dict of the chapter's GPTModel (124M config) to load: a bare state "
                             "dict, not a gpt_train.py checkpoint (checked before the model is built)")
    parser.add_argument("--seed", type=int, default=123, help="seed for the random weights")
    args = parser.parse_args(argv)
    check_range(parser, args, ["max_new_tokens"], 0, MAX_NEW_TOKENS)
    check_range(parser, args, ["context_size"], 1, GPT_CONFIG_124M["context_length"])
    if not args.prompt:
        parser.error("--prompt must not be empty")
    state_dict = None
    if args.checkpoint is not None:  # read and checked before the model is built
        state_dict = read_checkpoint(args.checkpoint, "--checkpoint", expected=CHECKPOINT_EXPECTED)
        with torch.device("meta"):  # shapes only: no memory, no time
            load_weights(GPTModel(GPT_CONFIG_124M), state_dict, "--checkpoint", args.checkpoint,
                         hint=checkpoint_hint(), load=lambda _: None)

    import tiktoken
    tokenizer = tiktoken.get_encoding("gpt2")
    ids = tokenizer.encode(args.prompt)
    torch.manual_seed(args.seed)
    model = GPTModel(GPT_CONFIG_124M)
    if state_dict is not None:
        model.load_state_dict(state_dict)  # names and shapes checked above
    model.eval()
    start = time.perf_counter()
    out = generate_text_simple(model, torch.tensor([ids]), args.max_new_tokens, args.context_size,
                               use_cache=not args.no_cache)
    seconds = time.perf_counter() - start
    print(tokenizer.decode(out[0].tolist()))
    print(f"{args.max_new_tokens} tokens {'without' if args.no_cache else 'with'} the KV cache "
          f"took {seconds:.2f} s ({args.max_new_tokens / seconds:.1f} tokens/s)")
    return 0


if __name__ == "__main__":
    run_script(main)
