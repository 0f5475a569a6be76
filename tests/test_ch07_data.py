"""Chapter 7's data side: instruction files, the prompt, the collate function (against hand-computed
batches), response extraction, the reference-answer NLL and the offline metrics."""
import json
import math

import pytest
import tiktoken
import torch
from conftest import exports

pc = exports("ch07")
P, M = 50256, -100
TOK = tiktoken.get_encoding("gpt2")


def test_collate_pads_shifts_and_masks_padding():
    inputs, targets = pc.instruction_collate([[1, 2, 3, 4, 5], [6, 7], [8, 9, 10]])
    assert inputs.tolist() == [[1, 2, 3, 4, 5], [6, 7, P, P, P], [8, 9, 10, P, P]]
    assert targets.tolist() == [[2, 3, 4, 5, P], [7, P, M, M, M], [9, 10, P, M, M]]
    assert inputs.dtype == targets.dtype == torch.int64


def test_collate_truncates_to_allowed_max_length():
    inputs, targets = pc.instruction_collate([[1, 2, 3, 4, 5], [6, 7]], allowed_max_length=3)
    assert inputs.tolist() == [[1, 2, 3], [6, 7, P]]
    assert targets.tolist() == [[2, 3, 4], [7, P, M]]


def test_collate_masks_instructions():
    batch = [([1, 2, 3, 4, 5], 3), ([6, 7], 1), ([8, 9, 10], 3)]
    _, plain = pc.instruction_collate(batch)
    assert plain.tolist() == [[2, 3, 4, 5, P], [7, P, M, M, M], [9, 10, P, M, M]]  # pairs, no masking
    _, targets = pc.instruction_collate(batch, mask_instructions=True)
    # prompt of 3 tokens: the targets 2 and 3 are prompt tokens; 4 (first response token) stays
    assert targets.tolist() == [[M, M, 4, 5, P], [7, P, M, M, M], [M, M, P, M, M]]
    _, cut = pc.instruction_collate(batch, mask_instructions=True, allowed_max_length=2)
    assert cut.tolist() == [[M, M], [7, P], [M, M]]
    with pytest.raises(ValueError, match="mask_instructions needs"):
        pc.instruction_collate([[1, 2, 3]], mask_instructions=True)


def test_dataset_items_and_an_entry_longer_than_the_context():
    entry = {"instruction": "Repeat.", "input": "", "output": "word " * 300}
    ds = pc.InstructionDataset([entry], TOK)
    ids, n_prompt = ds[0]
    assert ids[:n_prompt] == TOK.encode(pc.format_input(entry)) and len(ids) > 300
    inputs, targets = pc.instruction_collate([ds[0]], allowed_max_length=16, mask_instructions=True)
    assert inputs.shape == targets.shape == (1, 16)
    assert (targets == M).all()  # the 16 tokens kept are all prompt: nothing to learn, no crash
    injected = pc.InstructionDataset([{"instruction": "<|endoftext|>", "output": "x"}], TOK)[0][0]
    assert P not in injected  # special-token text in data is ordinary text


def test_format_input():
    base = ("Below is an instruction that describes a task. Write a response that appropriately "
            "completes the request.\n\n### Instruction:\nAdd 2 and 3.")
    assert pc.format_input({"instruction": "Add 2 and 3.", "input": ""}) == base + "\n\n### Response:\n"
    assert pc.format_input({"instruction": "Add 2 and 3."}) == base + "\n\n### Response:\n"
    assert (pc.format_input({"instruction": "Add 2 and 3.", "input": "2, 3"})
            == base + "\n\n### Input:\n2, 3\n\n### Response:\n")


def test_split_sizes():
    train, val, test = pc.split_data(list(range(1100)))
    assert (len(train), len(val), len(test)) == (935, 55, 110)
    assert train[-1] == 934 and test == list(range(935, 1045)) and val[0] == 1045


def test_malformed_instruction_files_name_the_entry(tmp_path):
    good = {"instruction": "a", "input": "", "output": "b"}
    cases = [({"instruction": "a"}, "expected a JSON list"),
             ([good, {"instruction": "a"}], "entry 1 lacks the key\\(s\\) output"),
             ([good, good, "text"], "entry 2 is a str"),
             ([{"instruction": "a", "output": 3}], "entry 0: 'output' must be a string")]
    for data, message in cases:
        path = tmp_path / "data.json"
        path.write_text(json.dumps(data))
        with pytest.raises(ValueError, match=message):
            pc.load_instruction_data(path)
    path.write_text("[{")
    with pytest.raises(ValueError, match="data.json: not valid JSON"):
        pc.load_instruction_data(path)
    assert pc.check_instruction_data([good, {"instruction": "x", "output": "y"}])  # input is optional


def test_extract_response():
    prompt = pc.format_input({"instruction": "Name a color."})
    assert pc.extract_response(prompt + "Blue.", prompt) == "Blue."
    assert pc.extract_response(prompt + "### Response:\n Blue. \n", prompt) == "Blue."
    assert pc.extract_response("Blue.\n\n### Instruction:\nName another.", "") == "Blue."
    assert pc.extract_response("  Red and blue.\nAlso green.  ", "") == "Red and blue.\nAlso green."


def tiny_model(seed=1):
    torch.manual_seed(seed)
    cfg = {"vocab_size": 50257, "context_length": 64, "emb_dim": 16, "n_heads": 2, "n_layers": 1,
           "drop_rate": 0.0, "qkv_bias": False}
    return pc.GPTModel(cfg).eval()


def test_response_nll_against_a_hand_loop():
    model = tiny_model()
    entries = [{"instruction": "Say hi.", "output": "Hi there, friend."},
               {"instruction": "Count.", "input": "1 2", "output": "3"}]
    total, count = 0.0, 0
    for e in entries:  # -log p of each response token and the end-of-text, one entry at a time
        prompt = TOK.encode(pc.format_input(e))
        seq = prompt + TOK.encode(e["output"]) + [P]
        logp = torch.log_softmax(model(torch.tensor([seq[:-1]])), dim=-1)[0]
        for pos in range(len(prompt) - 1, len(seq) - 1):
            total -= logp[pos, seq[pos + 1]].item()
            count += 1
    expected = total / count
    for batch_size in (1, 2):  # padding in a shared batch must not change the result
        assert math.isclose(pc.response_nll(model, entries, TOK, "cpu", batch_size), expected, rel_tol=1e-5)


def test_offline_metrics_hand_computed():
    assert math.isclose(pc.rouge_l_f1("The cat sat on the mat.", "the cat is on the mat"), 5 / 6)
    # precision 2/2, recall 2/4 -> F1 = 2 * 1 * 0.5 / 1.5 = 2/3
    assert math.isclose(pc.rouge_l_f1("blue sky", "the blue clear sky"), 2 / 3)
    assert pc.rouge_l_f1("apples", "oranges") == 0.0
    assert pc.normalize_answer("  The  Pacific, Ocean! ") == "pacific ocean"
    assert pc.exact_match("An apple.", "apple") and not pc.exact_match("apple pie", "apple")
    entries = [{"output": "Paris is the capital.", "model_response": "paris is THE capital"},
               {"output": "blue clear sky", "model_response": "green grass"},
               {"output": "the blue clear sky", "model_response": "blue sky"},
               {"output": "four", "model_response": "4"}]
    m = pc.offline_metrics(entries)
    assert m["n"] == 4
    assert math.isclose(m["rouge_l_f1"], 100 * (1 + 0 + 2 / 3 + 0) / 4)
    assert math.isclose(m["exact_match"], 25.0)
    with pytest.raises(ValueError, match="no responses"):
        pc.offline_metrics([])
