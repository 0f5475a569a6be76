"""Chapter 6's exported classifier code: balancing and splitting, padding and truncation, which
parameters train, a short training run, and single vs batched classification. Synthetic data and
tiny models only; no downloads."""
import pandas as pd
import pytest
import tiktoken
import torch
from conftest import TINY_GPT2_CONFIG, exports
from torch.utils.data import DataLoader

pc = exports("ch06")
tokenizer = tiktoken.get_encoding("gpt2")


pytestmark = pytest.mark.usefixtures("one_thread")  # the fixture is in conftest.py


def collection(n_ham=50, n_spam=12):
    """A synthetic collection with unique texts, labels as in SMSSpamCollection."""
    rows = [("ham", f"ham message number {i}") for i in range(n_ham)]
    rows += [("spam", f"spam message number {i}") for i in range(n_spam)]
    return pd.DataFrame(rows, columns=["Label", "Text"])


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return pc.GPTModel({**TINY_GPT2_CONFIG, **overrides}).eval()


def test_balancing_and_splitting():
    df = collection(50, 20)
    balanced = pc.create_balanced_dataset(df, seed=1)
    assert balanced["Label"].value_counts().to_dict() == {"ham": 20, "spam": 20}
    assert set(balanced["Text"]) <= set(df["Text"]) and balanced["Text"].is_unique
    train, val, test = pc.random_split(balanced, 0.7, 0.1, seed=1)
    assert (len(train), len(val), len(test)) == (28, 4, 8)
    sets = [set(part["Text"]) for part in (train, val, test)]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])  # no message in two splits
    assert set().union(*sets) == set(balanced["Text"])                        # and none lost
    again = pc.random_split(pc.create_balanced_dataset(df, seed=1), 0.7, 0.1, seed=1)
    assert all(a["Text"].tolist() == b["Text"].tolist() for a, b in zip((train, val, test), again))
    other = pc.random_split(pc.create_balanced_dataset(df, seed=2), 0.7, 0.1, seed=2)
    assert train["Text"].tolist() != other[0]["Text"].tolist()
    with pytest.raises(ValueError, match="cannot balance 3 ham and 5 spam"):
        pc.create_balanced_dataset(collection(3, 5))
    with pytest.raises(ValueError, match="train_frac"):
        pc.random_split(balanced, 0.9, 0.2)


def test_prepare_spam_csvs_writes_three_labelled_files(tmp_path):
    paths = pc.prepare_spam_csvs(dest_dir=tmp_path, seed=123, df=collection(30, 10))
    assert sorted(paths) == sorted(pc.SPLIT_NAMES) and all(p.parent == tmp_path for p in paths.values())
    parts = {k: pd.read_csv(p) for k, p in paths.items()}
    assert [len(parts[k]) for k in pc.SPLIT_NAMES] == [14, 2, 4]
    assert sum(int(p["Label"].sum()) for p in parts.values()) == 10   # spam is 1, ham is 0
    assert not list(tmp_path.glob(".*"))                              # no temporary files left


def test_padding_and_truncation():
    df = pd.DataFrame({"Text": ["hi", "a somewhat longer message here", "x <|endoftext|> y"], "Label": [0, 1, 0]})
    lengths = [len(tokenizer.encode(t, disallowed_special=())) for t in df["Text"]]
    ds = pc.SpamDataset(df, tokenizer)
    assert ds.max_length == max(lengths)
    for (ids, label), n, want in zip(ds, lengths, df["Label"]):
        assert ids.shape == (max(lengths),) and label.item() == want
        assert (ids[n:] == 50256).all() and (ids[:n] != 50256).all()  # text, then padding only
    short = pc.SpamDataset(df, tokenizer, max_length=3)
    assert short.max_length == 3
    assert short[1][0].tolist() == tokenizer.encode(df["Text"][1])[:3]   # truncated to the first tokens
    assert short[0][0].tolist() == tokenizer.encode("hi") + [50256] * 2
    assert pc.last_token_positions(torch.stack([ids for ids, _ in ds])).tolist() == [n - 1 for n in lengths]
    with pytest.raises(ValueError, match="row 1 holds an empty message"):
        pc.SpamDataset(pd.DataFrame({"Text": ["ok", ""], "Label": [0, 1]}), tokenizer)


@pytest.mark.parametrize("choice,modules", [
    ("head", ["out_head"]),
    ("last-block", ["out_head", "trf_blocks.1", "final_norm"]),
    ("last-two-blocks", ["out_head", "trf_blocks.0", "trf_blocks.1", "final_norm"]),
    ("all", None),
])
def test_which_parameters_train(choice, modules):
    model = pc.prepare_classifier(tiny_model(n_layers=2), num_classes=2, trainable=choice)
    assert model.out_head.out_features == 2 and model.out_head.in_features == TINY_GPT2_CONFIG["emb_dim"]
    for name, param in model.named_parameters():
        expected = modules is None or any(name.startswith(m + ".") for m in modules)
        assert param.requires_grad == expected, name


def test_unknown_trainable_choice():
    with pytest.raises(ValueError, match="unknown trainable choice 'some'"):
        pc.prepare_classifier(tiny_model(), trainable="some")


def separable_loader(n, shuffle, seed=0):
    spam = ["WIN cash now", "FREE prize call now", "URGENT claim your cash prize", "WIN a FREE holiday call"]
    ham = ["see you at lunch", "ok I will be home late", "thanks for dinner mum", "are we still meeting later"]
    rows = [(spam[i % 4] + f" {i}", 1) if i % 2 else (ham[i % 4] + f" {i}", 0) for i in range(n)]
    ds = pc.SpamDataset(pd.DataFrame(rows, columns=["Text", "Label"]), tokenizer)
    torch.manual_seed(seed)
    return DataLoader(ds, batch_size=8, shuffle=shuffle, drop_last=shuffle)


def test_short_training_run_learns_an_easy_task():
    train_loader, val_loader = separable_loader(64, True), separable_loader(24, False)
    model = pc.prepare_classifier(tiny_model(seed=1), trainable="all")
    before = pc.calc_accuracy_loader(val_loader, model, "cpu")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3, weight_decay=0.1)
    torch.manual_seed(1)
    losses, _, _, _, seen = pc.train_classifier_simple(model, train_loader, val_loader, optimizer, "cpu",
                                                       num_epochs=4, eval_freq=8, eval_iter=3, progress=False)
    after = pc.calc_accuracy_loader(val_loader, model, "cpu")
    assert seen == 4 * 64 and losses[-1] < losses[0]
    assert after >= 0.9 and after > before, (before, after)


def test_single_and_batched_classification_agree():
    model = pc.prepare_classifier(tiny_model(seed=2), trainable="last-block")
    messages = ["short", "a rather longer message with many more tokens in it", "medium length one", "x"]
    batched = pc.classify_texts(messages, model, tokenizer, "cpu", batch_size=8)
    alone = torch.cat([pc.classify_texts([m], model, tokenizer, "cpu") for m in messages])
    assert batched.shape == (4, 2) and torch.allclose(batched.sum(dim=1), torch.ones(4))
    assert torch.allclose(batched, alone, atol=1e-5)
    # the logits at position -1 of the padded batch would NOT agree (that is what we avoid)
    ids = [tokenizer.encode(m) for m in messages]
    width = max(map(len, ids))
    batch = torch.tensor([x + [50256] * (width - len(x)) for x in ids])
    with torch.no_grad():
        at_end = torch.softmax(model(batch)[:, -1, :], dim=-1)
    assert not torch.allclose(at_end[0], alone[0], atol=1e-5)
    # classify_review answers with the larger probability
    for m, p in zip(messages, alone):
        assert pc.classify_review(m, model, tokenizer, "cpu") == ("spam" if p[1] > p[0] else "not spam")


def test_classify_truncates_to_the_context_not_the_width():
    model = pc.prepare_classifier(tiny_model(seed=3), trainable="head")   # context 32, width 16
    long_message = "free prize " * 100                                     # 200 tokens
    got = pc.classify_texts([long_message], model, tokenizer, "cpu", max_length=1000)
    cut = tokenizer.decode(tokenizer.encode(long_message)[:32])
    assert torch.allclose(got, pc.classify_texts([cut], model, tokenizer, "cpu"), atol=1e-6)
    assert pc.classify_review(long_message, model, tokenizer, "cpu") in ("spam", "not spam")
    with pytest.raises(ValueError, match="message 2 is empty"):
        pc.classify_texts(["fine", "  "], model, tokenizer, "cpu")


def test_loss_and_accuracy_of_an_empty_loader_are_clear_errors():
    empty = DataLoader(pc.SpamDataset(pd.DataFrame({"Text": ["a"], "Label": [0]}), tokenizer),
                       batch_size=8, drop_last=True)
    model = pc.prepare_classifier(tiny_model())
    for fn in (pc.calc_accuracy_loader, pc.calc_class_loss_loader):
        with pytest.raises(ValueError, match="no batches"):
            fn(empty, model, "cpu")
