"""Appendix E's exported LoRA code: the wrapped model starts as the base model, only A and B
learn, the alpha/rank scaling, merging and unmerging, the adapter file round trip and its
checks, and trainable counts computed by hand. Tiny models only; no downloads."""
import math

import pytest
import torch
from conftest import TINY_GPT2_CONFIG, exports

pc = exports("appendix-E")

pytestmark = pytest.mark.usefixtures("one_thread")  # the fixture is in conftest.py


def tiny_classifier(seed=0, **overrides):
    torch.manual_seed(seed)
    model = pc.GPTModel({**TINY_GPT2_CONFIG, **overrides})
    return pc.prepare_classifier(model, num_classes=2).eval()


def lora_classifier(rank=4, alpha=8, seed=0, **overrides):
    model = tiny_classifier(seed, **overrides)
    for param in model.parameters():
        param.requires_grad = False
    torch.manual_seed(seed + 1)
    return pc.replace_linear_with_lora(model, rank, alpha)


def randomise_b(model, seed=2):
    """Give every B a nonzero value, so that the update is not zero."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for layer in pc.lora_layers(model):
            layer.lora.B.normal_(std=0.05)
    return model


def batch(seed=3, n=3, length=7):
    torch.manual_seed(seed)
    return torch.randint(0, TINY_GPT2_CONFIG["vocab_size"], (n, length))


def test_with_b_at_zero_the_wrapped_model_equals_the_base():
    base = tiny_classifier()
    wrapped = pc.replace_linear_with_lora(tiny_classifier(), rank=4, alpha=8)
    x = batch()
    with torch.no_grad():
        assert torch.equal(wrapped(x), base(x))
    assert all(torch.count_nonzero(layer.lora.B) == 0 for layer in pc.lora_layers(wrapped))


def test_every_linear_is_wrapped_once():
    model = lora_classifier()
    n_linear = 6 * TINY_GPT2_CONFIG["n_layers"] + 1  # q, k, v, out_proj, two feed-forward layers per block; the head
    assert len(pc.lora_layers(model)) == n_linear
    pc.replace_linear_with_lora(model, rank=4, alpha=8)  # again: no adapter on top of an adapter
    assert len(pc.lora_layers(model)) == n_linear
    assert not any(isinstance(m.linear, pc.LinearWithLoRA) for m in pc.lora_layers(model))


def test_gradients_reach_only_a_and_b():
    model = randomise_b(lora_classifier())
    model.train()
    loss = pc.calc_class_loss_batch(batch(), torch.tensor([0, 1, 1]), model, "cpu")
    loss.backward()
    for name, param in model.named_parameters():
        is_lora = name.endswith(".lora.A") or name.endswith(".lora.B")
        assert param.requires_grad == is_lora, name
        if is_lora:
            assert param.grad is not None and torch.count_nonzero(param.grad) > 0, name
        else:
            assert param.grad is None, name


@pytest.mark.parametrize("rank,alpha", [(1, 1), (2, 8), (4, 2), (8, 16.5)])
def test_the_update_is_scaled_by_alpha_over_rank(rank, alpha):
    torch.manual_seed(0)
    layer = pc.LoRALayer(5, 3, rank, alpha)
    with torch.no_grad():
        layer.B.copy_(torch.arange(rank * 3, dtype=torch.float32).reshape(rank, 3) / 10)
    x = torch.randn(4, 5)
    expected = (alpha / rank) * (x @ layer.A.detach() @ layer.B.detach())
    assert layer.scaling == alpha / rank
    assert torch.allclose(layer(x), expected, atol=1e-6)
    assert torch.allclose(layer.delta_weight().T, (alpha / rank) * layer.A @ layer.B, atol=1e-6)


def test_a_is_initialised_like_a_linear_weight_and_b_at_zero():
    torch.manual_seed(0)
    layer = pc.LoRALayer(64, 32, rank=16, alpha=16)
    bound = 1 / math.sqrt(16)  # kaiming_uniform_(a=sqrt(5)) on a (64, 16) tensor: fan_in 16
    assert layer.A.abs().max() <= bound and layer.A.abs().max() > 0.8 * bound
    assert torch.count_nonzero(layer.B) == 0


@pytest.mark.parametrize("rank", [0, -1, 2.5, True, "4"])
def test_bad_rank_is_a_clear_error(rank):
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        pc.LoRALayer(4, 4, rank, 1)
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        pc.replace_linear_with_lora(tiny_classifier(), rank, 1)


@pytest.mark.parametrize("alpha", [0, -2, float("nan"), float("inf")])
def test_bad_alpha_is_a_clear_error(alpha):
    with pytest.raises(ValueError, match="alpha must be a finite positive number"):
        pc.LoRALayer(4, 4, 2, alpha)


def test_merge_then_unmerge_restores_the_base_weights():
    model = randomise_b(lora_classifier())
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    x = batch()
    with torch.no_grad():
        lora_out = model(x)
        pc.merge_lora(model)
        merged_out = model(x)
        pc.merge_lora(model)  # a second merge changes nothing
    assert all(layer.merged for layer in pc.lora_layers(model))
    assert torch.allclose(merged_out, lora_out, atol=1e-5)
    moved = [name for name, p in model.named_parameters() if not torch.equal(p, before[name])]
    assert moved and all(name.endswith(".linear.weight") for name in moved)
    pc.unmerge_lora(model)
    pc.unmerge_lora(model)  # and a second unmerge neither
    assert not any(layer.merged for layer in pc.lora_layers(model))
    for name, p in model.named_parameters():
        assert torch.allclose(p, before[name], atol=1e-6), name
    with torch.no_grad():
        assert torch.allclose(model(x), lora_out, atol=1e-5)


def test_adapter_round_trip(tmp_path):
    model = randomise_b(lora_classifier(rank=4, alpha=8))
    with torch.no_grad():
        model.out_head.linear.weight.add_(0.5)  # the trained head's base weights travel too
    path = pc.save_adapter(model, tmp_path / "adapter.pth")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter.pth"]  # no temporary file left
    fresh = tiny_classifier(seed=0)
    torch.manual_seed(99)
    fresh.out_head = torch.nn.Linear(TINY_GPT2_CONFIG["emb_dim"], 2)  # a head of another initial value
    pc.load_adapter(fresh, path)
    x = batch()
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    assert {(m.lora.rank, m.lora.alpha) for m in pc.lora_layers(fresh)} == {(4, 8)}
    trainable = {name for name, p in fresh.named_parameters() if p.requires_grad}
    assert trainable == {name for name in pc.adapter_state_dict(fresh) if ".lora." in name}


def test_adapter_holds_only_lora_and_head_tensors(tmp_path):
    model = lora_classifier()
    data = torch.load(pc.save_adapter(model, tmp_path / "a.pth"), weights_only=True)
    names = set(data["tensors"])
    assert all(".lora." in n or n.startswith("out_head.") for n in names)
    assert sum(t.numel() for t in data["tensors"].values()) == 2376 + TINY_GPT2_CONFIG["emb_dim"] * 2 + 2


def test_adapter_for_another_configuration_names_the_differing_keys(tmp_path):
    path = pc.save_adapter(lora_classifier(), tmp_path / "a.pth")
    other = tiny_classifier(emb_dim=32, n_layers=3)
    with pytest.raises(ValueError, match="another base configuration") as err:
        pc.load_adapter(other, path)
    assert "emb_dim (adapter 16, model 32)" in str(err.value)
    assert "n_layers (adapter 2, model 3)" in str(err.value)
    assert "vocab_size" not in str(err.value)
    assert not pc.lora_layers(other)  # the model was left untouched


def test_adapter_for_other_base_weights_is_refused_unless_asked(tmp_path):
    model = randomise_b(lora_classifier(seed=0))
    path = pc.save_adapter(model, tmp_path / "a.pth")
    with pytest.raises(ValueError, match="other base weights"):
        pc.load_adapter(tiny_classifier(seed=5), path)
    loaded = pc.load_adapter(tiny_classifier(seed=5), path, check_weights=False)
    assert len(pc.lora_layers(loaded)) == len(pc.lora_layers(model))


def test_adapter_errors(tmp_path):
    with pytest.raises(ValueError, match="no LoRA layers"):
        pc.save_adapter(tiny_classifier(), tmp_path / "a.pth")
    model = pc.merge_lora(lora_classifier())
    with pytest.raises(ValueError, match="merged"):
        pc.save_adapter(model, tmp_path / "a.pth")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "not_adapter.pth")
    with pytest.raises(ValueError, match="not a LoRA adapter file"):
        pc.load_adapter(tiny_classifier(), tmp_path / "not_adapter.pth")
    path = pc.save_adapter(lora_classifier(rank=4, alpha=8), tmp_path / "b.pth")
    with pytest.raises(ValueError, match="another rank or alpha"):
        pc.load_adapter(lora_classifier(rank=2, alpha=8), path)
    assert not (tmp_path / "a.pth").exists()


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    model = lora_classifier()
    path = pc.save_adapter(model, tmp_path / "a.pth")
    before = path.read_bytes()

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pc.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        pc.save_adapter(randomise_b(model), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pth"]


@pytest.mark.parametrize("rank", [1, 4, 16])
def test_trainable_counts_by_hand(rank):
    d, n_layers = TINY_GPT2_CONFIG["emb_dim"], TINY_GPT2_CONFIG["n_layers"]
    # per block: 4 projections d -> d, feed-forward d -> 4d and 4d -> d; the head d -> 2
    per_block = 4 * rank * (d + d) + rank * (d + 4 * d) + rank * (4 * d + d)
    expected = n_layers * per_block + rank * (d + 2)
    if rank == 4:
        assert expected == 2376  # 2 * (512 + 320 + 320) + 72, worked out on paper
    model = lora_classifier(rank=rank, alpha=rank)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
    assert sum(p.numel() for p in pc.adapter_state_dict(model).values()) == expected + d * 2 + 2


def test_load_adapter_names_a_file_that_is_not_an_adapter(tmp_path):
    path = pc.save_adapter(lora_classifier(rank=4, alpha=8), tmp_path / "b.pth")
    data = path.read_bytes()
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.txt").write_text("not an adapter", encoding="utf-8")
    for name, phrase in [("missing.pth", "checkpoint not found"), ("empty.pth", "is an empty file"),
                         ("cut.pth", "is truncated or corrupt"), ("notes.txt", "not a file written by torch.save")]:
        with pytest.raises(ValueError, match=phrase) as err:
            pc.load_adapter(tiny_classifier(), tmp_path / name, flag="--adapter")
        assert str(err.value).startswith(f"--adapter {tmp_path / name}") and "weights_only" not in str(err.value)
    damaged = torch.load(path, weights_only=True)
    del damaged["tensors"]
    torch.save(damaged, tmp_path / "damaged.pth")
    with pytest.raises(ValueError, match="is a damaged LoRA adapter file \\(without tensors\\)"):
        pc.load_adapter(tiny_classifier(), tmp_path / "damaged.pth")
