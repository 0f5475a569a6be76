"""The notebooks' exported functions check their arguments, since a learner calls them
directly. Each row calls one function with a bad argument and expects a ValueError (or TypeError)
whose message names the argument and the value, instead of a ZeroDivisionError, a shape error
deep inside PyTorch, or a silently wrong result."""
import pytest
import tiktoken
import torch
from conftest import exports
from torch.utils.data import DataLoader, TensorDataset

ch05 = exports("ch05")
ch06 = exports("ch06")
ch07 = exports("ch07")
appf = exports("appendix-F")

CFG = {"vocab_size": 50257, "context_length": 16, "emb_dim": 32, "n_heads": 2, "n_layers": 1, "drop_rate": 0.0,
       "qkv_bias": False}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ch05.GPTModel(CFG).eval()


def ids(n):
    return torch.zeros(1, n, dtype=torch.long)


TEXT = "Every effort moves you closer to the goal. " * 20
# (id, call(model), exception type, phrases the message must contain)
CASES = [
    ("dataset text not a string", lambda m: ch05.GPTDatasetV1(["a", "b"], tiktoken.get_encoding("gpt2"), 4, 4),
     TypeError, ["txt", "list"]),
    ("dataloader stride 0", lambda m: ch05.create_dataloader_v1(TEXT, 2, 4, 0), ValueError, ["stride=0"]),
    ("text shorter than the context", lambda m: ch05.create_dataloader_v1("Hi there", 2, 16, 16), ValueError,
     ["max_length + 1 = 17"]),
    ("attention zero heads", lambda m: ch05.MultiHeadAttention(8, 8, 4, 0.0, 0), ValueError, ["num_heads (0)"]),
    ("attention heads do not divide d_out", lambda m: ch05.MultiHeadAttention(8, 9, 4, 0.0, 2), ValueError,
     ["d_out (9)", "num_heads (2)"]),
    ("attention context 0", lambda m: ch05.CausalAttention(8, 8, 0, 0.0), ValueError, ["context_length (0)"]),
    ("attention 2-d input", lambda m: ch05.MultiHeadAttention(8, 8, 4, 0.0, 2)(torch.randn(4, 8)), ValueError,
     ["(batch, num_tokens, d_in)", "(4, 8)"]),
    ("attention wrong width", lambda m: ch05.CausalAttention(8, 8, 4, 0.0)(torch.randn(1, 4, 5)), ValueError,
     ["5 features", "d_in is 8"]),
    ("attention too long", lambda m: ch05.MultiHeadAttention(8, 8, 4, 0.0, 2)(torch.randn(1, 5, 8)), ValueError,
     ["5 tokens", "context_length is 4"]),
    ("config without n_heads", lambda m: ch05.GPTModel({k: v for k, v in CFG.items() if k != "n_heads"}),
     ValueError, ["lacks n_heads"]),
    ("config n_layers 0", lambda m: ch05.GPTModel(dict(CFG, n_layers=0)), ValueError, ["n_layers=0"]),
    ("config emb_dim vs heads", lambda m: ch05.GPTModel(dict(CFG, n_heads=3)), ValueError,
     ["emb_dim (32)", "n_heads (3)"]),
    ("config drop_rate 1", lambda m: ch05.GPTModel(dict(CFG, drop_rate=1.0)), ValueError, ["drop_rate", "1.0"]),
    ("config drop_rate nan", lambda m: ch05.GPTModel(dict(CFG, drop_rate=float("nan"))), ValueError,
     ["drop_rate", "nan"]),
    ("model float ids", lambda m: m(torch.zeros(1, 4)), ValueError, ["integers", "float32"]),
    ("model 1-d ids", lambda m: m(torch.zeros(4, dtype=torch.long)), ValueError, ["(batch, seq_len)", "(4,)"]),
    ("model id beyond the vocabulary", lambda m: m(torch.tensor([[50257]])), ValueError, ["[0, 50257)"]),
    ("greedy negative max_new_tokens", lambda m: ch05.generate_text_simple(m, ids(3), -1, 16), ValueError,
     ["max_new_tokens", "-1"]),
    ("greedy context_size 0", lambda m: ch05.generate_text_simple(m, ids(3), 2, 0), ValueError,
     ["context_size", "0"]),
    ("generate empty prompt", lambda m: ch05.generate(m, ids(0), 2, 16), ValueError, ["non-empty prompt", "(1, 0)"]),
    ("generate nan temperature", lambda m: ch05.generate(m, ids(3), 2, 16, temperature=float("nan")), ValueError,
     ["temperature", "nan"]),
    ("generate inf temperature", lambda m: ch05.generate(m, ids(3), 2, 16, temperature=float("inf")), ValueError,
     ["temperature", "inf"]),
    ("fast generate nan temperature", lambda m: ch05.generate_fast(ch05.fast_from_chapter(m, CFG), ids(3), 2, 16,
                                                                  temperature=float("nan")), ValueError,
     ["temperature", "nan"]),
    ("fast generate empty prompt", lambda m: ch05.generate_fast(ch05.fast_from_chapter(m, CFG), ids(0), 2, 16),
     ValueError, ["non-empty prompt"]),
    ("generate top_k 0", lambda m: ch05.generate(m, ids(3), 2, 16, top_k=0), ValueError, ["top_k", "0"]),
    ("decode a batch of two", lambda m: ch05.token_ids_to_text(torch.zeros(2, 3, dtype=torch.long),
                                                                tiktoken.get_encoding("gpt2")), ValueError,
     ["one sequence", "(2, 3)"]),
    ("train eval_freq 0", lambda m: ch05.train_model_simple(m, [], [], None, "cpu", 1, 0, 1, "Hi", None),
     ValueError, ["eval_freq", "0"]),
    ("unknown GPT-2 size", lambda m: ch05.load_pretrained_gpt2("gpt2-huge"), ValueError, ["gpt2-huge", "124M"]),
    ("unknown device", lambda m: ch05.pick_device("gpu"), ValueError, ["'gpu'"]),
    ("classify one string as a list", lambda m: ch06.classify_texts("hello", m, None, "cpu"), TypeError,
     ["list of messages", "classify_review"]),
    ("classify batch_size 0", lambda m: ch06.classify_texts(["hello"], m, None, "cpu", batch_size=0), ValueError,
     ["batch_size", "0"]),
    ("classifier eval_iter 0", lambda m: ch06.train_classifier_simple(m, [], [], None, "cpu", 1, 1, 0), ValueError,
     ["eval_iter", "0"]),
    ("instruction entry without instruction", lambda m: ch07.format_input({"input": "x"}), ValueError,
     ["'instruction'"]),
    ("instruction split fractions", lambda m: ch07.split_data(list(range(10)), 0.9, 0.2), ValueError,
     ["train_frac", "0.9", "0.2"]),
    ("reasoning digits 0", lambda m: appf.make_problems(5, 5, digits=0), ValueError, ["digits", "0"]),
    ("reasoning sft lr nan", lambda m: appf.train_sft(m, [(1, 2)], "cot", 10, lr=float("nan")), ValueError,
     ["lr", "nan"]),
    ("reasoning grpo group of one", lambda m: appf.train_grpo(m, [(1, 2)], 10, group_size=1), ValueError,
     ["group_size", "at least 2", "1"]),
]


@pytest.mark.parametrize("call,kind,phrases", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_exported_function_names_the_bad_argument(call, kind, phrases, model):
    with pytest.raises(kind) as info:
        call(model)
    message = str(info.value)
    assert all(p in message for p in phrases), message


def test_good_arguments_still_work(model):
    out = ch05.generate(model, ids(3), 2, 16, temperature=0.5, top_k=5)
    assert out.shape == (1, 5)
    assert ch05.generate_text_simple(model, ids(3), 0, 16).shape == (1, 3)  # zero new tokens is allowed
    assert ch05.token_ids_to_text(torch.tensor([[15496]]), tiktoken.get_encoding("gpt2")) == "Hello"
    assert ch05.MultiHeadAttention(8, 8, 4, 0.0, 2)(torch.randn(2, 4, 8)).shape == (2, 4, 8)


appd = exports("appendix-D")


def nan_model(cfg):
    torch.manual_seed(0)
    model = ch05.GPTModel(cfg)
    with torch.no_grad():
        model.out_head.weight[0, 0] = float("nan")  # every loss becomes NaN
    return model


def run_loop(name, model, optimizer):
    torch.manual_seed(0)
    inputs, targets = torch.randint(0, 100, (8, 8)), torch.randint(0, 100, (8, 8))
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=2)
    if name == "ch05 train_model_simple":
        ch05.train_model_simple(model, loader, loader, optimizer, "cpu", 1, 1, 1, "Hi", None, progress=False)
    elif name == "ch06 train_classifier_simple":
        labels = DataLoader(TensorDataset(inputs, torch.tensor([0, 1] * 4)), batch_size=2)
        ch06.train_classifier_simple(model, labels, labels, optimizer, "cpu", 1, 1, 1, progress=False)
    elif name == "appendix D train_model":
        appd.train_model(model, loader, loader, optimizer, "cpu", 1, 1, 1, "Hi", None, warmup_steps=1,
                         progress=False)
    else:
        appf.train_sft(model, appf.make_problems(8, 0, digits=2)[0], "cot", 5, batch_size=2, digits=2)


LOOPS = ["ch05 train_model_simple", "ch06 train_classifier_simple", "appendix D train_model", "appendix F train_sft"]


@pytest.mark.parametrize("name", LOOPS)
def test_every_training_loop_stops_at_a_non_finite_loss_before_the_update(name):
    cfg = appf.reasoner_config(digits=2) if name.startswith("appendix F") else dict(CFG, vocab_size=100, n_layers=1)
    model = nan_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with pytest.raises(ValueError, match=r"the training loss became nan at step \d+ \(learning rate "):
        run_loop(name, model, optimizer)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) or (before[k].isnan() == after[k].isnan()).all() for k in before)
    assert not optimizer.state  # no step was taken
