"""Tests of ch02/bpe_from_scratch.py, with tiktoken's "gpt2" encoding as the oracle."""
import dataclasses
import json
import random
from collections import Counter

import pytest
import tiktoken

from conftest import exports, import_path

bpe = import_path("ch02/bpe_from_scratch.py")
pc = exports("ch02")


def local_file(name):
    """A known file from the cache or the local mirror only (never the network); else skip."""
    offline = dataclasses.replace(pc.KNOWN_FILES[name], urls=())
    try:
        return pc.download_file(offline, progress=False)
    except pc.DownloadError:
        pytest.skip(f"{name} is neither cached nor in LLMS_MIRROR")


@pytest.fixture(scope="module")
def gpt2():
    return bpe.BPETokenizer.from_gpt2_files(local_file("encoder.json"), local_file("vocab.bpe"))


@pytest.fixture(scope="module")
def ref():
    return tiktoken.get_encoding("gpt2")


@pytest.fixture(scope="module")
def verdict():
    return local_file("the-verdict.txt").read_text(encoding="utf-8")


HARD_CASES = [
    "",
    "Hello, world!",
    "naïve café crème brûlée Ærøskøbing Ångström",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "emoji 🤖🎉 family 👩‍👩‍👧 flag 🇩🇪 skin 👍🏽",
    "   leading spaces and trailing spaces   ",
    "runs    of     spaces\n\n\nand\n \n newlines\r\n",
    "\ttabs\t\tand\t \tmixed\t",
    "it's isn't we're you've I'm we'll he'd IT'S 'S 'tis o'clock ''",
    "1234567890 3.14159 1,000,000 ½ ² ٣ 四",
    "?!?!... --- ***!!! ((([[]])))",
    "a" * 1000,
    " " * 200 + "x",
    "é" * 300,
    "\u00a0non-breaking\u2003em-space\u3000ideographic",
    "mixed\u200bzero\u200cwidth\ufeffchars",
    "math: ∀x∈ℝ, x²≥0; arrows → ⇒",
    "\x00\x01\x7f control bytes",
]


def test_byte_map_is_a_bijection_onto_printable_characters():
    m = bpe.bytes_to_unicode()
    assert sorted(m) == list(range(256))
    assert len(set(m.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in m.values())
    assert bpe.str_to_token(bpe.token_to_str(bytes(range(256)))) == bytes(range(256))


def test_first_256_ids_are_gpt2_byte_order(gpt2):
    encoder = json.loads(local_file("encoder.json").read_text(encoding="utf-8"))
    for b, c in bpe.BYTE_ENCODER.items():
        assert gpt2.vocab[encoder[c]] == bytes([b])
    # the untrained tokenizer uses the same order
    assert bpe.BPETokenizer().vocab == gpt2.vocab[:256]


def test_gpt2_files_load_the_full_vocabulary(gpt2, ref):
    assert gpt2.n_vocab == ref.n_vocab == 50257
    assert gpt2.special_tokens == {"<|endoftext|>": 50256}
    assert len(gpt2.merges) == 50000
    for i in (0, 255, 256, 1000, 30000, 50255):
        assert gpt2.decode_bytes([i]) == ref.decode_single_token_bytes(i)


def test_the_verdict_matches_tiktoken_and_round_trips(gpt2, ref, verdict):
    ids = gpt2.encode(verdict)
    assert ids == ref.encode(verdict)
    assert len(ids) == 5145
    assert gpt2.decode(ids) == verdict


@pytest.mark.parametrize("text", HARD_CASES, ids=range(len(HARD_CASES)))
def test_hard_cases_match_tiktoken_and_round_trip(gpt2, ref, text):
    ids = gpt2.encode(text)
    assert ids == ref.encode(text)
    assert gpt2.decode(ids) == text


def test_gpt2_pattern_pieces_match_tiktoken_pattern(ref):
    # tiktoken stores an equivalent (possessive-quantifier) version of GPT-2's pattern
    import regex
    ours, theirs = regex.compile(bpe.GPT2_PATTERN), regex.compile(ref._pat_str)
    for text in HARD_CASES:
        assert ours.findall(text) == theirs.findall(text)


def random_text(rnd, max_len=60):
    """Random strings biased towards the characters that make tokenization tricky."""
    chars = []
    for _ in range(rnd.randint(0, max_len)):
        r = rnd.random()
        if r < 0.3:
            c = rnd.randrange(32, 127)
        elif r < 0.4:
            c = rnd.choice([9, 10, 13, 32, 32, 32, 0xA0, 0x2003, 0x3000, ord("'")])
        elif r < 0.7:
            c = rnd.randrange(0x80, 0x3000)
        elif r < 0.9:
            c = rnd.randrange(0x3000, 0x10000)
        else:
            c = rnd.randrange(0x10000, 0x110000)
        if 0xD800 <= c < 0xE000:  # lone surrogates cannot be UTF-8 encoded (tested separately)
            c = ord("?")
        chars.append(chr(c))
    return "".join(chars)


def test_random_unicode_matches_tiktoken_and_round_trips(gpt2, ref):
    rnd = random.Random(1234)
    for _ in range(400):
        text = random_text(rnd)
        ids = gpt2.encode(text, disallowed_special=())
        assert ids == ref.encode(text, disallowed_special=()), repr(text)
        assert gpt2.decode(ids) == text, repr(text)


def test_lone_surrogates_are_replaced_like_tiktoken(gpt2, ref):
    text = "a\ud800b\udfffc"
    assert gpt2.encode(text) == ref.encode(text)


def test_long_piece_heap_merge_equals_simple_merge(gpt2):
    rnd = random.Random(7)
    alphabet = "aabbbcdeé xy9"
    for _ in range(300):
        data = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 150))).encode("utf-8")
        assert bpe._merge_long(data, gpt2.ranks) == bpe._merge_short(data, gpt2.ranks), data


def test_long_pieces_match_tiktoken(gpt2, ref):
    rnd = random.Random(3)
    word = "".join(rnd.choice("abcdefghijklmnopqrstuvwxyzäö") for _ in range(5000))
    for text in [word, " " + word, "9" * 3000, "!?" * 2000, "\n" * 3000]:
        assert gpt2.encode(text) == ref.encode(text)


def test_special_token_allowed_disallowed_and_as_text(gpt2, ref):
    text = "one<|endoftext|>two <|endoftext|>"
    allowed = gpt2.encode(text, allowed_special={"<|endoftext|>"})
    assert allowed == ref.encode(text, allowed_special={"<|endoftext|>"})
    assert allowed.count(50256) == 2
    assert gpt2.encode(text, allowed_special="all") == allowed
    as_text = gpt2.encode(text, disallowed_special=())
    assert as_text == ref.encode(text, disallowed_special=())
    assert 50256 not in as_text
    assert gpt2.decode(allowed) == gpt2.decode(as_text) == text
    with pytest.raises(ValueError, match=r"<\|endoftext\|>"):
        gpt2.encode(text)
    with pytest.raises(ValueError):  # tiktoken agrees that this is an error
        ref.encode(text)
    with pytest.raises(ValueError, match="<|unknown|>"):
        gpt2.encode("x", allowed_special={"<|unknown|>"})


def test_decode_rejects_unknown_and_non_integer_ids(gpt2):
    with pytest.raises(ValueError, match="50257"):
        gpt2.decode([1, 50257])
    with pytest.raises(ValueError, match="-1"):
        gpt2.decode([-1])
    with pytest.raises(TypeError):
        gpt2.decode([1.5])
    with pytest.raises(TypeError):
        gpt2.encode(b"bytes")


def test_decode_accepts_a_tensor(gpt2):
    torch = pytest.importorskip("torch")
    ids = gpt2.encode("Hello tensor")
    assert gpt2.decode(torch.tensor(ids)) == "Hello tensor"


def test_partial_utf8_decodes_with_replacement_like_tiktoken(gpt2, ref):
    ids = gpt2.encode("🤖")
    assert len(ids) > 1
    assert gpt2.decode(ids[:1]) == ref.decode(ids[:1])


# ---------------------------------------------------------------- training

TRAIN_TEXT = ("the cat sat on the mat. the dog sat on the log. "
              "the cat and the dog are friends; they nap in the sun. ") * 20 + "Ünïcödé wörds, ünïque."


def naive_train(text, n_merges, pattern):
    """Oracle: recount every pair from scratch after each merge (slow but obviously right)."""
    import regex
    base = {bytes([b]): i for i, b in enumerate(bpe.BYTE_ENCODER)}
    vocab = list(base)
    words = Counter(regex.findall(pattern, text))
    seqs = {w: [base[bytes([b])] for b in w.encode("utf-8")] for w in words}
    merges = []
    for _ in range(n_merges):
        counts = Counter()
        for w, f in words.items():
            for pair in zip(seqs[w], seqs[w][1:]):
                counts[pair] += f
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        new_bytes = vocab[best[0]] + vocab[best[1]]
        if new_bytes in vocab:
            new_id = vocab.index(new_bytes)
        else:
            new_id = len(vocab)
            vocab.append(new_bytes)
        merges.append((best[0], best[1], new_id))
        for w in seqs:
            s, out, i = seqs[w], [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
    return vocab, merges


def test_train_matches_naive_recounting_oracle():
    tok = bpe.BPETokenizer().train(TRAIN_TEXT, vocab_size=256 + 60 + 1)
    vocab, merges = naive_train(TRAIN_TEXT, len(tok.merges), bpe.GPT2_PATTERN)
    assert tok.merges == merges
    assert tok.vocab == vocab


def test_train_vocab_size_specials_and_round_trip():
    tok = bpe.BPETokenizer().train(TRAIN_TEXT, vocab_size=300)
    assert tok.n_vocab == 300
    assert tok.special_tokens == {"<|endoftext|>": 299}
    assert len(tok.vocab) == 299
    assert tok.encode("<|endoftext|>", allowed_special="all") == [299]
    first = tok.merges[0]
    assert (tok.token_str(first[0]), tok.token_str(first[1])) in {(" ", "t"), ("t", "h"), ("h", "e")}
    ids = tok.encode(TRAIN_TEXT)
    assert len(ids) < len(TRAIN_TEXT.encode("utf-8")) / 2  # merges compress the training text
    assert tok.decode(ids) == TRAIN_TEXT
    rnd = random.Random(99)
    for _ in range(100):
        text = random_text(rnd)
        assert tok.decode(tok.encode(text, disallowed_special=())) == text


def test_train_is_deterministic_and_respects_document_borders():
    text = "abab<|endoftext|>abab" * 10
    a = bpe.BPETokenizer().train(text, vocab_size=270)
    b = bpe.BPETokenizer().train(text, vocab_size=270)
    assert a.merges == b.merges
    assert all(b"<|" not in t and b"|>" not in t for t in a.vocab[256:])  # nothing learned across "<|endoftext|>"


def test_train_stops_when_nothing_is_left_to_merge():
    tok = bpe.BPETokenizer().train("ab ab", vocab_size=1000)
    assert tok.n_vocab < 1000
    assert tok.decode(tok.encode("ab ab")) == "ab ab"
    assert tok.encode("ab") == [tok.ranks[b"ab"]]


def test_train_rejects_too_small_vocab():
    with pytest.raises(ValueError, match="257"):
        bpe.BPETokenizer().train("text", vocab_size=200)


def test_train_1000_on_the_verdict(verdict):
    tok = bpe.BPETokenizer().train(verdict, vocab_size=1000)
    assert tok.n_vocab == 1000
    assert tok.decode(tok.encode(verdict)) == verdict
    assert tok.token_str(tok.merges[0][2]) == " t"


# ---------------------------------------------------------------- files

def test_save_load_round_trip(tmp_path):
    tok = bpe.BPETokenizer().train(TRAIN_TEXT, vocab_size=320)
    path = tok.save(tmp_path / "tok.json")
    loaded = bpe.BPETokenizer().load(path)
    assert loaded.vocab == tok.vocab
    assert loaded.merges == tok.merges
    assert loaded.special_tokens == tok.special_tokens
    assert loaded.pattern == tok.pattern
    for text in [TRAIN_TEXT, "new text 🤖", "x<|endoftext|>y"]:
        assert loaded.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["format"] == "bpe-from-scratch" and data["version"] == 1
    assert len(data["vocab"]) == len(tok.vocab) == tok.n_vocab - 1


def test_gpt2_save_load_still_matches_tiktoken(gpt2, ref, tmp_path, verdict):
    loaded = bpe.BPETokenizer().load(gpt2.save(tmp_path / "gpt2.json"))
    assert loaded.encode(verdict[:3000]) == ref.encode(verdict[:3000])
    assert loaded.n_vocab == 50257


def test_load_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="invalid JSON"):
        bpe.BPETokenizer().load(bad)
    bad.write_text(json.dumps({"vocab": []}), encoding="utf-8")
    with pytest.raises(ValueError, match="format"):
        bpe.BPETokenizer().load(bad)
    good = json.loads(bpe.BPETokenizer().train(TRAIN_TEXT, 270).save(tmp_path / "ok.json").read_text())
    good["vocab"] = good["vocab"][1:]  # drop a byte token
    bad.write_text(json.dumps(good), encoding="utf-8")
    with pytest.raises(ValueError, match="byte"):
        bpe.BPETokenizer().load(bad)


def test_from_gpt2_files_rejects_inconsistent_files(tmp_path):
    encoder = {bpe.BYTE_ENCODER[b]: i for i, b in enumerate(bpe.BYTE_ENCODER)}
    (tmp_path / "encoder.json").write_text(json.dumps(encoder), encoding="utf-8")
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\nĠ t\n", encoding="utf-8")
    with pytest.raises(ValueError, match="missing"):
        bpe.BPETokenizer.from_gpt2_files(tmp_path / "encoder.json", tmp_path / "vocab.bpe")
    encoder["Ġt"] = 256
    encoder["<|endoftext|>"] = 257
    (tmp_path / "encoder.json").write_text(json.dumps(encoder), encoding="utf-8")
    tok = bpe.BPETokenizer.from_gpt2_files(tmp_path / "encoder.json", tmp_path / "vocab.bpe")
    assert tok.special_tokens == {"<|endoftext|>": 257}
    assert tok.encode(" t") == [256]


def test_cli_encode_with_saved_tokenizer(tmp_path, capsys):
    path = bpe.BPETokenizer().train(TRAIN_TEXT, 300).save(tmp_path / "t.json")
    bpe.main(["encode", "the cat", "--tokenizer", str(path)])
    out = capsys.readouterr().out
    assert "ids:" in out and "tokens:" in out


def test_cli_train_and_bad_input(tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text(TRAIN_TEXT, encoding="utf-8")
    bpe.main(["train", str(src), "300", str(tmp_path / "out.json")])
    assert bpe.BPETokenizer().load(tmp_path / "out.json").n_vocab == 300
    with pytest.raises(SystemExit):
        bpe.main(["train", str(tmp_path / "missing.txt"), "300", str(tmp_path / "x.json")])
    assert "no such file" in capsys.readouterr().err


def test_bench_script_runs_on_a_small_text(capsys):
    local_file("the-verdict.txt"), local_file("encoder.json"), local_file("vocab.bpe")
    bench = import_path("ch02/bench_bpe.py")
    bench.main(["--mb", "0.05", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "bpe_from_scratch:" in out and "tiktoken gpt2:" in out and "faster than" in out
    with pytest.raises(SystemExit):
        bench.main(["--mb", "-1"])


def test_cli_train_refuses_an_existing_output_unless_overwrite(tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text(TRAIN_TEXT, encoding="utf-8")
    out = tmp_path / "out.json"
    out.write_text("an earlier tokenizer", encoding="utf-8")
    with pytest.raises(SystemExit) as exc:
        bpe.main(["train", str(src), "300", str(out)])
    assert exc.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert out.read_text(encoding="utf-8") == "an earlier tokenizer"
    bpe.main(["train", str(src), "300", str(out), "--overwrite"])
    assert bpe.BPETokenizer().load(out).n_vocab == 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.json"]  # no temporary file left
