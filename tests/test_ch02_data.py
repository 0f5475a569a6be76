"""Tests of chapter 2's data pipeline: GPTDatasetV1, create_dataloader_v1 (the exported cells, via
ch02's generated previous_chapters.py) and the SimpleTokenizerV1/V2 classes of ch02/ch02.ipynb."""
import ast
import json
import re

import pytest
import tiktoken
import torch

from conftest import ROOT, exports

pc = exports("ch02")
GPTDatasetV1, create_dataloader_v1 = pc.GPTDatasetV1, pc.create_dataloader_v1

TEXT = " ".join(f"word{i} and some more text, number {i}." for i in range(60))


@pytest.fixture(scope="module")
def gpt2():
    return tiktoken.get_encoding("gpt2")


@pytest.fixture(scope="module")
def notebook_ns():
    """The notebook's definitions of the simple tokenizers (only the defs run: no downloads)."""
    nb = json.loads((ROOT / "ch02" / "ch02.ipynb").read_text(encoding="utf-8"))
    wanted = {"SPLIT_PATTERN", "simple_split", "SimpleTokenizerV1", "SimpleTokenizerV2"}
    ns = {"re": re}
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        for stmt in ast.parse("".join(cell["source"])).body:
            names = {getattr(stmt, "name", None)} | {getattr(t, "id", None) for t in getattr(stmt, "targets", [])}
            if names & wanted:
                exec(compile(ast.Module([stmt], type_ignores=[]), "ch02.ipynb", "exec"), ns)
    assert wanted <= set(ns)
    return ns


# ------------------------------------------------------------ GPTDatasetV1 / create_dataloader_v1

@pytest.mark.parametrize("max_length,stride", [(4, 1), (4, 4), (8, 3), (16, 16), (5, 100)])
def test_windows_are_shifted_slices_of_the_token_ids(gpt2, max_length, stride):
    ids = gpt2.encode(TEXT)
    ds = GPTDatasetV1(TEXT, gpt2, max_length, stride)
    starts = list(range(0, len(ids) - max_length, stride))
    assert len(ds) == len(starts) == (len(ids) - max_length - 1) // stride + 1
    for k in (0, len(ds) // 2, len(ds) - 1):
        x, y = ds[k]
        i = starts[k]
        assert x.tolist() == ids[i:i + max_length]
        assert y.tolist() == ids[i + 1:i + max_length + 1]
        assert x.dtype == torch.long and x.shape == y.shape == (max_length,)


def test_exactly_max_length_plus_one_tokens_gives_one_pair(gpt2):
    ids = gpt2.encode(TEXT)[:11]
    text = gpt2.decode(ids)
    assert gpt2.encode(text) == ids
    ds = GPTDatasetV1(text, gpt2, max_length=10, stride=1)
    assert len(ds) == 1


def test_too_short_text_raises_with_the_numbers(gpt2):
    with pytest.raises(ValueError, match=r"(?s)\b5\b.*\b9\b"):  # 5 tokens, 9 needed
        GPTDatasetV1("Only five tokens here.", gpt2, max_length=8, stride=8)
    with pytest.raises(ValueError, match="needs"):
        create_dataloader_v1("", batch_size=1, max_length=1, stride=1)


@pytest.mark.parametrize("max_length,stride", [(0, 1), (4, 0), (-3, 2), (4, -1)])
def test_non_positive_sizes_are_rejected(gpt2, max_length, stride):
    with pytest.raises(ValueError, match=rf"max_length={max_length}, stride={stride}"):
        GPTDatasetV1(TEXT, gpt2, max_length, stride)


def test_endoftext_is_allowed_in_the_dataset(gpt2):
    text = TEXT + "<|endoftext|>" + TEXT
    ds = GPTDatasetV1(text, gpt2, max_length=8, stride=8)
    assert any(50256 in x.tolist() or 50256 in y.tolist() for x, y in ds)


def test_dataloader_batches_shapes_and_order(gpt2):
    loader = create_dataloader_v1(TEXT, batch_size=3, max_length=4, stride=4, shuffle=False)
    ids = gpt2.encode(TEXT)
    batches = list(loader)
    n_pairs = (len(ids) - 4 - 1) // 4 + 1
    assert len(batches) == n_pairs // 3  # drop_last=True by default
    x, y = batches[0]
    assert x.shape == y.shape == (3, 4)
    assert x[0].tolist() == ids[:4] and x[1].tolist() == ids[4:8]
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_dataloader_keeps_last_partial_batch_when_asked(gpt2):
    ids = gpt2.encode(TEXT)
    n_pairs = (len(ids) - 4 - 1) // 4 + 1
    loader = create_dataloader_v1(TEXT, batch_size=7, max_length=4, stride=4, shuffle=False, drop_last=False)
    sizes = [x.shape[0] for x, _ in loader]
    assert sum(sizes) == n_pairs
    assert len(sizes) == -(-n_pairs // 7)


def test_dataloader_shuffle_is_seeded():
    def first_batch():
        torch.manual_seed(123)
        return next(iter(create_dataloader_v1(TEXT, batch_size=4, max_length=4, stride=2)))[0]
    assert torch.equal(first_batch(), first_batch())
    unshuffled = next(iter(create_dataloader_v1(TEXT, batch_size=4, max_length=4, stride=2, shuffle=False)))[0]
    assert not torch.equal(first_batch(), unshuffled)


# ------------------------------------------------------------ SimpleTokenizerV1 / V2

@pytest.fixture(scope="module")
def vocab(notebook_ns):
    words = sorted(set(notebook_ns["simple_split"]("the cat sat on the mat. A dog, too? Yes!")))
    return {w: i for i, w in enumerate(words + ["<|endoftext|>", "<|unk|>"])}


def test_simple_split_separates_punctuation(notebook_ns):
    assert notebook_ns["simple_split"]("Hello, world. Is this-- a test?") == \
        ["Hello", ",", "world", ".", "Is", "this", "--", "a", "test", "?"]


def test_v1_round_trip_and_unknown_word(notebook_ns, vocab):
    tok = notebook_ns["SimpleTokenizerV1"](vocab)
    text = "the cat sat on the mat. A dog, too?"
    assert tok.decode(tok.encode(text)) == text
    with pytest.raises((KeyError, ValueError), match="'zebra'"):
        tok.encode("the zebra")


@pytest.mark.parametrize("cls", ["SimpleTokenizerV1", "SimpleTokenizerV2"])
def test_decoding_an_unknown_id_names_it(notebook_ns, vocab, cls):
    tok = notebook_ns[cls](vocab)
    with pytest.raises(ValueError, match=str(len(vocab))):
        tok.decode([0, len(vocab)])


def test_v2_unknown_words_and_endoftext(notebook_ns, vocab):
    tok = notebook_ns["SimpleTokenizerV2"](vocab)
    ids = tok.encode("the zebra sat. <|endoftext|> A dog")
    assert ids.count(vocab["<|unk|>"]) == 1
    assert vocab["<|endoftext|>"] in ids
    assert tok.decode(ids) == "the <|unk|> sat. <|endoftext|> A dog"
