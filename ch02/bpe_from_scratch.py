"""A byte-level byte pair encoding (BPE) tokenizer written from scratch.

It works like the tokenizer of GPT-2:

1. Pre-tokenization: GPT-2's regular expression cuts the text into pieces (words with their
   leading space, numbers, runs of punctuation, runs of whitespace). Merges never cross a
   piece boundary.
2. Each piece is turned into its UTF-8 bytes; every byte is a token of its own (ids 0-255),
   so no text is ever "unknown".
3. Merging: the two neighbouring tokens whose concatenation has the lowest rank (= id) in the
   vocabulary are merged, again and again, until no neighbouring pair forms a known token.
   Ties go to the leftmost pair. This is exactly the rule tiktoken uses, so with OpenAI's
   GPT-2 files (`BPETokenizer.from_gpt2_files`) the ids equal tiktoken's "gpt2" ids.

`train` learns merges from a text: it repeatedly merges the most frequent neighbouring pair
(ties: the pair with the smallest ids), keeping pair counts up to date incrementally so that
only the words containing the merged pair are revisited.

File format of `save`/`load` (UTF-8 JSON, one object):

    {"format": "bpe-from-scratch", "version": 1,
     "pattern": "<the pre-tokenization regex>",
     "vocab": ["!", "\\"", ..., "Ġthe", ...],   # token id -> token, written with GPT-2's
                                               #   byte-to-unicode map (like encoder.json)
     "merges": [[left_id, right_id, new_id], ...],   # in the order they were learned
     "special_tokens": {"<|endoftext|>": 50256}}

Only "vocab" and "special_tokens" are needed to encode (the rank of a token is its id); the
merges are kept to show how the vocabulary grew.

Run as a script to encode, train or inspect, e.g.:

    python ch02/bpe_from_scratch.py encode "Hello, world!"          # GPT-2's vocabulary
    python ch02/bpe_from_scratch.py train input.txt 1000 out.json  # learn a vocabulary

`train` checks the input file, vocab_size and the output path before it trains, refuses to replace
an existing output file unless --overwrite is given, and writes the file atomically (a temporary
file renamed into place).
"""
import argparse
import heapq
import json
from pathlib import Path

import regex

from previous_chapters import check_output, read_text, save_atomic  # chapter 1's script helpers

# GPT-2's pre-tokenization pattern: contractions, letters, numbers, other symbols (each with
# an optional leading space), then whitespace (a run of spaces keeps its last space for the
# next word).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ENDOFTEXT = "<|endoftext|>"
FORMAT = "bpe-from-scratch"
_LONG_PIECE = 64        # pieces with more bytes than this are merged with a heap
_NO_RANK = float("inf")  # rank of a pair that is not in the vocabulary
_CACHE_LIMIT = 200_000  # the per-piece cache is emptied when it grows past this many entries


def bytes_to_unicode():
    """GPT-2's map from each of the 256 byte values to a printable unicode character.

    Printable Latin-1 bytes map to themselves; the others (control bytes, space, ...) are
    shifted to characters from 256 upward, e.g. the space byte 32 becomes "Ġ". The order of
    the keys is also the order of GPT-2's first 256 token ids.
    """
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


BYTE_ENCODER = bytes_to_unicode()
BYTE_DECODER = {c: b for b, c in BYTE_ENCODER.items()}


def token_to_str(token_bytes):
    """A token's bytes written with GPT-2's printable characters (as in encoder.json)."""
    return "".join(BYTE_ENCODER[b] for b in token_bytes)


def str_to_token(text):
    """Inverse of `token_to_str`."""
    try:
        return bytes(BYTE_DECODER[c] for c in text)
    except KeyError as exc:
        raise ValueError(f"{text!r} is not a byte-level token: character {exc.args[0]!r} "
                         f"is not in GPT-2's byte-to-unicode map") from None


def _merge_short(piece, ranks):
    """Merge the bytes of `piece` (a bytes object): lowest-rank pair first, leftmost on ties."""
    parts = [piece[i:i + 1] for i in range(len(piece))]
    get = ranks.get
    none = _NO_RANK
    pair_ranks = [get(a + b, none) for a, b in zip(parts, parts[1:])]  # rank of each neighbour pair
    while pair_ranks:
        best = min(pair_ranks)
        if best == none:
            break
        i = pair_ranks.index(best)  # the leftmost pair with the lowest rank
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
        del pair_ranks[i]
        if i > 0:  # only the pairs next to the merged token changed
            pair_ranks[i - 1] = get(parts[i - 1] + parts[i], none)
        if i < len(parts) - 1:
            pair_ranks[i] = get(parts[i] + parts[i + 1], none)
    return parts


def _merge_long(piece, ranks):
    """Same result as `_merge_short`, in O(n log n): a heap of (rank, start) candidates.

    Tokens are kept as a linked list of spans [start, end) of `piece`. A token's start never
    changes (it only grows to the right), so (rank, start) orders candidates exactly like the
    leftmost-lowest rule. Stale heap entries are skipped when popped.
    """
    n = len(piece)
    nxt = list(range(1, n + 1))   # start of the next token (n = none)
    prv = list(range(-1, n - 1))  # start of the previous token (-1 = none)
    alive = [True] * n
    heap = []

    def push(left):
        right = nxt[left]
        if right < n:
            r = ranks.get(piece[left:nxt[right]])
            if r is not None:
                heapq.heappush(heap, (r, left, nxt[right]))

    for i in range(n - 1):
        push(i)
    while heap:
        r, left, end = heapq.heappop(heap)
        right = nxt[left] if alive[left] else n
        if right >= n or nxt[right] != end:
            continue  # stale: one of the two tokens changed since this entry was pushed
        alive[right] = False
        nxt[left] = end
        if end < n:
            prv[end] = left
        if prv[left] >= 0:
            push(prv[left])
        push(left)
    parts, i = [], 0
    while i < n:
        parts.append(piece[i:nxt[i]])
        i = nxt[i]
    return parts


def _check_vocab(vocab):
    """Raise ValueError unless `vocab` (a list of bytes) has unique tokens covering all 256 bytes."""
    if len(set(vocab)) != len(vocab):
        raise ValueError("the vocabulary holds the same byte string twice")
    missing = set(range(256)) - {t[0] for t in vocab if len(t) == 1}
    if missing:
        raise ValueError(f"the vocabulary lacks single-byte tokens for {len(missing)} byte values, "
                         f"e.g. {min(missing)}; every byte needs its own token")


class BPETokenizer:
    """Byte-level BPE tokenizer: `train` one, or load GPT-2's with `from_gpt2_files`."""

    def __init__(self, pattern=GPT2_PATTERN):
        self.pattern = pattern
        self._pat = regex.compile(pattern)
        # before training: just the 256 byte tokens, in GPT-2's order
        self._set_vocab([bytes([b]) for b in BYTE_ENCODER], merges=[], special_tokens={})

    # ------------------------------------------------------------------ vocabulary
    def _set_vocab(self, vocab, merges, special_tokens):
        """vocab: list of bytes (index = id); merges: [(a, b, new)]; special_tokens: str -> id."""
        _check_vocab(vocab)
        for name, i in special_tokens.items():
            if not len(vocab) <= i < len(vocab) + len(special_tokens):
                raise ValueError(f"special token {name!r} has id {i}; special ids must come after "
                                 f"the {len(vocab)} ordinary tokens and be below {len(vocab) + len(special_tokens)}")
        if len(set(special_tokens.values())) != len(special_tokens):
            raise ValueError("two special tokens share an id")
        self.vocab = list(vocab)                          # id -> bytes
        self.ranks = {t: i for i, t in enumerate(vocab)}  # bytes -> id (= merge priority)
        self.merges = [tuple(m) for m in merges]
        self.special_tokens = dict(special_tokens)
        self._decoder = self.vocab + [None] * len(special_tokens)
        for name, i in special_tokens.items():
            self._decoder[i] = name.encode("utf-8")
        self._cache = {}           # piece (str) -> tuple of ids
        self._special_patterns = {}  # frozenset of allowed special tokens -> compiled regex

    @property
    def n_vocab(self):
        """Number of token ids: ordinary tokens plus special tokens."""
        return len(self._decoder)

    @property
    def special_tokens_set(self):
        return set(self.special_tokens)

    # ------------------------------------------------------------------ encoding
    def _encode_piece(self, piece):
        """Token ids of one pre-tokenized piece (a str), cached."""
        data = piece.encode("utf-8")
        token = self.ranks.get(data)
        if token is not None:  # the whole piece is one token (tiktoken checks this first too)
            ids = (token,)
        else:
            merge = _merge_short if len(data) <= _LONG_PIECE else _merge_long
            ids = tuple(self.ranks[p] for p in merge(data, self.ranks))
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[piece] = ids
        return ids

    def encode_ordinary(self, text):
        """Encode `text` treating special-token strings as ordinary text."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: replace them, as tiktoken does
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        cache_get = self._cache.get
        out = []
        extend = out.extend
        for piece in self._pat.findall(text):
            ids = cache_get(piece)
            if ids is None:
                ids = self._encode_piece(piece)
            extend(ids)
        return out

    def encode(self, text, allowed_special=frozenset(), disallowed_special="all"):
        """Token ids of `text`, with tiktoken's rules for special tokens.

        A special token's text (e.g. "<|endoftext|>") becomes its id only if it is in
        `allowed_special` (a set, or "all"). If it is in `disallowed_special` (default: every
        special token not allowed) a ValueError is raised; pass disallowed_special=() to
        encode it as ordinary text instead.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        allowed = set(self.special_tokens) if allowed_special == "all" else set(allowed_special)
        unknown = allowed - set(self.special_tokens)
        if unknown:
            raise ValueError(f"allowed_special names {sorted(unknown)}, which this tokenizer does not "
                             f"have; its special tokens are {sorted(self.special_tokens)}")
        disallowed = (set(self.special_tokens) - allowed) if disallowed_special == "all" \
            else set(disallowed_special)
        for token in sorted(disallowed):
            if token in text:
                raise ValueError(
                    f"the text contains the special token {token!r}, which is not allowed. Pass "
                    f"allowed_special={{{token!r}}} to encode it as its special id, or "
                    f"disallowed_special=() to encode it as ordinary text.")
        if not allowed:
            return self.encode_ordinary(text)
        key = frozenset(allowed)
        pattern = self._special_patterns.get(key)
        if pattern is None:  # longest first, so a special token that contains another one wins
            alternatives = sorted(allowed, key=lambda s: (-len(s), s))
            pattern = self._special_patterns[key] = regex.compile("|".join(map(regex.escape, alternatives)))
        out, start = [], 0
        for match in pattern.finditer(text):
            out += self.encode_ordinary(text[start:match.start()])
            out.append(self.special_tokens[match.group()])
            start = match.end()
        out += self.encode_ordinary(text[start:])
        return out

    # ------------------------------------------------------------------ decoding
    def decode_bytes(self, ids):
        """The raw bytes of a sequence of token ids (a list, or a tensor's .tolist())."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        ids = list(ids)
        decoder = self._decoder
        for i in ids:
            if not isinstance(i, int):
                raise TypeError(f"token ids must be integers, got {i!r}")
        if ids and not (0 <= min(ids) and max(ids) < len(decoder)):
            bad = next(i for i in ids if not 0 <= i < len(decoder))
            raise ValueError(f"unknown token id {bad}: this tokenizer has ids 0 to {len(decoder) - 1}")
        return b"".join([decoder[i] for i in ids])

    def decode(self, ids):
        """The text of a sequence of token ids (invalid UTF-8 becomes U+FFFD, as in tiktoken)."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_str(self, token_id):
        """A readable form of one token, e.g. ' the' (bytes that are not UTF-8 are escaped)."""
        return self.decode_bytes([token_id]).decode("utf-8", errors="backslashreplace")

    # ------------------------------------------------------------------ training
    def train(self, text, vocab_size, allowed_special=frozenset({ENDOFTEXT}), verbose=False):
        """Learn a vocabulary of `vocab_size` ids from `text` (replaces the current one).

        Ids 0-255 are the bytes (in GPT-2's order), then one id per learned merge, then the
        special tokens in `allowed_special` (sorted). Occurrences of those special tokens in
        `text` separate documents: no merge crosses them. If the text runs out of pairs to
        merge, the vocabulary ends up smaller than asked for.
        """
        if not isinstance(text, str):
            raise TypeError(f"train expects a str, got {type(text).__name__}")
        specials = sorted(set(allowed_special))
        if vocab_size < 256 + len(specials):
            raise ValueError(f"vocab_size={vocab_size} is too small: the 256 byte tokens and "
                             f"{len(specials)} special token(s) need at least {256 + len(specials)}")
        chunks = regex.split("|".join(regex.escape(s) for s in specials), text) if specials else [text]
        word_freq = {}
        for chunk in chunks:
            for piece in self._pat.findall(chunk):
                word_freq[piece] = word_freq.get(piece, 0) + 1
        base = {bytes([b]): i for i, b in enumerate(BYTE_ENCODER)}
        vocab = list(base)
        ranks = dict(base)
        words = [[base[piece.encode("utf-8")[i:i + 1]] for i in range(len(piece.encode("utf-8")))]
                 for piece in word_freq]
        freqs = list(word_freq.values())

        # pair -> total count, pair -> indices of words that (may) contain it
        counts, where = {}, {}
        for wi, (word, f) in enumerate(zip(words, freqs)):
            for pair in zip(word, word[1:]):
                counts[pair] = counts.get(pair, 0) + f
                where.setdefault(pair, set()).add(wi)
        heap = [(-c, pair) for pair, c in counts.items()]
        heapq.heapify(heap)

        merges = []
        while len(vocab) < vocab_size - len(specials) and heap:
            neg, pair = heapq.heappop(heap)
            if counts.get(pair, 0) != -neg:
                continue  # stale entry: the count changed since it was pushed
            new_bytes = vocab[pair[0]] + vocab[pair[1]]
            new_id = ranks.get(new_bytes)
            if new_id is None:  # (the same bytes can rarely be reached by two different pairs)
                new_id = len(vocab)
                vocab.append(new_bytes)
                ranks[new_bytes] = new_id
            merges.append((pair[0], pair[1], new_id))
            if verbose and len(merges) % 100 == 0:
                print(f"merge {len(merges)}: {new_bytes!r} (count {-neg})")
            changed = set()
            for wi in sorted(where.pop(pair, ())):
                word, f = words[wi], freqs[wi]
                merged, i = [], 0
                while i < len(word):
                    if i + 1 < len(word) and word[i] == pair[0] and word[i + 1] == pair[1]:
                        merged.append(new_id)
                        i += 2
                    else:
                        merged.append(word[i])
                        i += 1
                if len(merged) == len(word):
                    continue
                for p in zip(word, word[1:]):
                    counts[p] -= f
                    changed.add(p)
                for p in zip(merged, merged[1:]):
                    counts[p] = counts.get(p, 0) + f
                    where.setdefault(p, set()).add(wi)
                    changed.add(p)
                words[wi] = merged
            for p in changed:
                c = counts.get(p, 0)
                if c > 0:
                    heapq.heappush(heap, (-c, p))
                else:
                    counts.pop(p, None)
                    where.pop(p, None)
        special_ids = {s: len(vocab) + k for k, s in enumerate(specials)}
        self._set_vocab(vocab, merges, special_ids)
        return self

    # ------------------------------------------------------------------ files
    def save(self, path):
        """Write the tokenizer to `path` as JSON (format described in the module docstring)."""
        data = {"format": FORMAT, "version": 1, "pattern": self.pattern,
                "vocab": [token_to_str(t) for t in self.vocab],
                "merges": [list(m) for m in self.merges],
                "special_tokens": self.special_tokens}
        Path(path).write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        return Path(path)

    def load(self, path):
        """Replace this tokenizer's vocabulary with the one saved at `path`; returns self."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{Path(path).name} is not a saved BPETokenizer (invalid JSON: {exc})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{Path(path).name} is not a saved BPETokenizer (no \"format\": \"{FORMAT}\")")
        if data.get("version") != 1:
            raise ValueError(f"{Path(path).name} has format version {data.get('version')}; this code reads version 1")
        vocab = [str_to_token(s) for s in data.get("vocab", [])]
        _check_vocab(vocab)
        merges = data.get("merges", [])
        for m in merges:
            if len(m) != 3 or not all(isinstance(i, int) and 0 <= i < len(vocab) for i in m):
                raise ValueError(f"bad merge {m!r}: expected [left_id, right_id, new_id] with ids below {len(vocab)}")
        if not isinstance(data.get("pattern"), str):
            raise ValueError(f"{Path(path).name} has no \"pattern\" string")
        compiled = regex.compile(data["pattern"])
        self._set_vocab(vocab, merges, data.get("special_tokens", {}))
        self.pattern, self._pat = data["pattern"], compiled
        return self

    @classmethod
    def from_gpt2_files(cls, encoder_json_path, vocab_bpe_path):
        """GPT-2's tokenizer from OpenAI's encoder.json (token -> id) and vocab.bpe (merges)."""
        encoder = json.loads(Path(encoder_json_path).read_text(encoding="utf-8"))
        lines = Path(vocab_bpe_path).read_text(encoding="utf-8").split("\n")
        if lines and lines[0].startswith("#version"):
            lines = lines[1:]
        pairs = []
        for n, line in enumerate(lines, start=2):
            if not line.strip():
                continue
            parts = line.split(" ")
            if len(parts) != 2:
                raise ValueError(f"{Path(vocab_bpe_path).name} line {n}: expected two tokens, got {line!r}")
            pairs.append(parts)
        vocab = [None] * (256 + len(pairs))
        for b, c in BYTE_ENCODER.items():
            vocab[encoder[c]] = bytes([b])
        merges = []
        for left, right in pairs:
            ids = [encoder.get(left), encoder.get(right), encoder.get(left + right)]
            if None in ids:
                raise ValueError(f"merge {left!r} + {right!r} uses a token missing from "
                                 f"{Path(encoder_json_path).name}")
            if ids[2] >= len(vocab) or vocab[ids[2]] is not None:
                raise ValueError(f"merge {left!r} + {right!r} -> id {ids[2]} does not fit the ids of "
                                 f"{Path(encoder_json_path).name}")
            vocab[ids[2]] = str_to_token(left + right)
            merges.append(tuple(ids))
        if None in vocab:
            raise ValueError(f"{Path(encoder_json_path).name} and {Path(vocab_bpe_path).name} do not "
                             f"define ids 0 to {len(vocab) - 1} without gaps")
        # whatever is neither a byte nor a merge result is a special token (<|endoftext|>)
        special = {tok: i for tok, i in encoder.items() if i >= len(vocab)}
        tokenizer = cls()
        tokenizer._set_vocab(vocab, merges, special)
        return tokenizer

    def __repr__(self):
        return (f"BPETokenizer(n_vocab={self.n_vocab}, merges={len(self.merges)}, "
                f"special_tokens={sorted(self.special_tokens)})")


def _gpt2_tokenizer():
    from previous_chapters import download_file
    return BPETokenizer.from_gpt2_files(download_file("encoder.json", progress=False),
                                        download_file("vocab.bpe", progress=False))


MAX_VOCAB_SIZE = 1_000_000  # GPT-2 has 50,257 ids, the largest common vocabularies about 256,000


def load_tokenizer_file(path):
    """BPETokenizer().load(path), with every problem a ValueError naming --tokenizer."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--tokenizer {path}: " + ("a folder, not a tokenizer file" if path.is_dir()
                                                    else "no such file"))
    try:
        return BPETokenizer().load(path)
    except UnicodeDecodeError as exc:
        raise ValueError(f"--tokenizer {path} is not a saved BPETokenizer (not UTF-8 text: byte "
                         f"offset {exc.start})") from None
    except (ValueError, regex.error) as exc:
        raise ValueError(f"--tokenizer {path}: {exc}") from None
    except (TypeError, AttributeError, KeyError) as exc:  # JSON with the format tag but wrong types inside
        raise ValueError(f"--tokenizer {path} is not a saved BPETokenizer (malformed: {type(exc).__name__}: "
                         f"{exc})") from None
    except OSError as exc:
        raise ValueError(f"--tokenizer {path} cannot be read ({exc.strerror or exc})") from None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    enc = sub.add_parser("encode", help="print the token ids of a text")
    enc.add_argument("text")
    enc.add_argument("--tokenizer", help="a file written by save (default: GPT-2's vocabulary)")
    tr = sub.add_parser("train", help="learn a vocabulary from a UTF-8 text file and save it")
    tr.add_argument("input", help="a UTF-8 text file")
    tr.add_argument("vocab_size", type=int,
                    help=f"ids in all: 256 bytes + merges + 1 special token, so 257 to {MAX_VOCAB_SIZE:,}")
    tr.add_argument("output", type=Path, help="the JSON file to write (checked before training)")
    tr.add_argument("--overwrite", action="store_true",
                    help="replace an existing output file (without it, an existing file is refused)")
    args = parser.parse_args(argv)
    if args.command == "encode":
        tok = load_tokenizer_file(args.tokenizer) if args.tokenizer else _gpt2_tokenizer()
        ids = tok.encode(args.text, allowed_special="all")
        print("ids:", ids)
        print("tokens:", [tok.token_str(i) for i in ids])
        return 0
    path = Path(args.input)
    if not path.is_file():
        tr.error(f"input {args.input}: " + ("a folder, not a text file" if path.is_dir() else "no such file"))
    low = 256 + 1  # the byte tokens and <|endoftext|>
    if not low <= args.vocab_size <= MAX_VOCAB_SIZE:
        tr.error(f"vocab_size must lie in [{low}, {MAX_VOCAB_SIZE}] (256 byte tokens + merges + "
                 f"<|endoftext|>), got {args.vocab_size}")
    if not args.output.parent.exists():  # save_atomic writes beside the file: the folder must exist
        tr.error(f"output {args.output}: the folder {args.output.parent} does not exist")
    check_output(tr, "output", args.output, overwrite=args.overwrite)  # a folder, unwritable, or existing
    if path.resolve() == args.output.resolve():
        tr.error(f"output {args.output} is the input file; choose another name")
    text = read_text([path], flag="input")  # a ValueError naming the file if it is not UTF-8 text
    if not text.strip():
        tr.error(f"input {args.input} holds no text to learn from")
    tok = BPETokenizer().train(text, args.vocab_size)
    save_atomic(args.output, tok.save)  # an interruption leaves no half-written file
    print(f"trained {tok!r}; saved to {args.output}")
    if tok.n_vocab < args.vocab_size:
        print(f"note: the text ran out of pairs to merge at {tok.n_vocab} ids (vocab_size asked for "
              f"{args.vocab_size}); a longer text gives more")
    return 0


if __name__ == "__main__":
    from previous_chapters import DownloadError, run_script  # bad input: `error: ...`, exit code 2
    run_script(main, expected=(ValueError, OSError, DownloadError))
