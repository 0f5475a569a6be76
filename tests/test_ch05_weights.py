"""Chapter 5: loading GPT-2 weights from OpenAI's TensorFlow checkpoint and Hugging Face safetensors.

The tests write a tiny GPT-2-shaped checkpoint in both formats, load it into ch05's GPTModel and
compare every parameter and the logits with a GPT-2 forward pass computed here in numpy from the
raw arrays. Nothing is downloaded: download_file is replaced by a local fake where needed.
"""
import json
import os

import numpy as np
import pytest
import torch
from conftest import exports, import_path

pc = exports("ch05")

VOCAB, CTX, D, HEADS, LAYERS = 40, 12, 8, 2, 2
SETTINGS = {"n_vocab": VOCAB, "n_ctx": CTX, "n_embd": D, "n_head": HEADS, "n_layer": LAYERS}


def make_raw(seed=0):
    """OpenAI's variable names -> arrays with OpenAI's shapes (dense weights as [1, in, out])."""
    rng = np.random.default_rng(seed)

    def r(*shape, scale=0.5, loc=0.0):
        return (loc + scale * rng.standard_normal(shape)).astype(np.float32)

    raw = {"model/wte": r(VOCAB, D), "model/wpe": r(CTX, D),
           "model/ln_f/g": r(D, loc=1.0, scale=0.1), "model/ln_f/b": r(D, scale=0.1)}
    for i in range(LAYERS):
        h = f"model/h{i}/"
        raw.update({h + "attn/c_attn/w": r(1, D, 3 * D), h + "attn/c_attn/b": r(3 * D, scale=0.1),
                    h + "attn/c_proj/w": r(1, D, D), h + "attn/c_proj/b": r(D, scale=0.1),
                    h + "mlp/c_fc/w": r(1, D, 4 * D), h + "mlp/c_fc/b": r(4 * D, scale=0.1),
                    h + "mlp/c_proj/w": r(1, 4 * D, D), h + "mlp/c_proj/b": r(D, scale=0.1),
                    h + "ln_1/g": r(D, loc=1.0, scale=0.1), h + "ln_1/b": r(D, scale=0.1),
                    h + "ln_2/g": r(D, loc=1.0, scale=0.1), h + "ln_2/b": r(D, scale=0.1)})
    return raw


RAW = make_raw()
IDS = np.array([[3, 17, 5, 39, 0, 22, 8], [1, 2, 3, 4, 5, 6, 7]])


def reference_logits(raw, ids):
    """GPT-2's forward pass in float64 numpy, straight from OpenAI's arrays."""
    g = {k: v.astype(np.float64) for k, v in raw.items()}

    def ln(x, p):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * g[p + "/g"] + g[p + "/b"]

    def dense(x, p):
        return x @ g[p + "/w"].reshape(g[p + "/w"].shape[-2:]) + g[p + "/b"]

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))

    out = []
    for seq in ids:
        t, hd = len(seq), D // HEADS
        x = g["model/wte"][seq] + g["model/wpe"][:t]
        for i in range(LAYERS):
            h = f"model/h{i}/"
            q, k, v = np.split(dense(ln(x, h + "ln_1"), h + "attn/c_attn"), 3, axis=-1)
            heads = []
            for j in range(HEADS):
                sl = slice(j * hd, (j + 1) * hd)
                s = q[:, sl] @ k[:, sl].T / np.sqrt(hd)
                s[np.triu(np.ones((t, t), dtype=bool), 1)] = -np.inf
                w = np.exp(s - s.max(-1, keepdims=True))
                heads.append((w / w.sum(-1, keepdims=True)) @ v[:, sl])
            x = x + dense(np.concatenate(heads, -1), h + "attn/c_proj")
            x = x + dense(gelu(dense(ln(x, h + "ln_2"), h + "mlp/c_fc")), h + "mlp/c_proj")
        out.append(ln(x, "model/ln_f") @ g["model/wte"].T)
    return np.stack(out)


def write_tf_checkpoint(folder, raw, settings=SETTINGS):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(raw)
    tf.raw_ops.SaveV2(prefix=str(folder / "model.ckpt"), tensor_names=names,
                      shape_and_slices=[""] * len(names), tensors=[tf.constant(raw[n]) for n in names])
    (folder / "hparams.json").write_text(json.dumps(settings))
    (folder / "checkpoint").write_text('model_checkpoint_path: "model.ckpt"\n')
    return folder


def hf_tensors(raw, prefix=""):
    """The same arrays under Hugging Face's GPT-2 names (Conv1D weights [in, out])."""
    out = {}
    for name, arr in raw.items():
        parts = name.split("/")[1:]
        if parts[0].startswith("h") and parts[0][1:].isdigit():
            parts[0] = "h." + parts[0][1:]
        last = {"w": "weight", "g": "weight", "b": "bias"}.get(parts[-1])
        key = ".".join(parts[:-1] + [last]) if last else parts[0] + ".weight"
        out[prefix + key] = np.ascontiguousarray(arr[0] if arr.ndim == 3 else arr)
    return out


def expected_params(raw):
    """Our parameter name -> the array it must hold, written out independently of ch05's code."""
    t = lambda a: a[0].T  # noqa: E731  [1, in, out] -> [out, in]
    exp = {"tok_emb.weight": raw["model/wte"], "pos_emb.weight": raw["model/wpe"],
           "out_head.weight": raw["model/wte"],
           "final_norm.scale": raw["model/ln_f/g"], "final_norm.shift": raw["model/ln_f/b"]}
    for i in range(LAYERS):
        h, p = f"model/h{i}/", f"trf_blocks.{i}."
        w, b = raw[h + "attn/c_attn/w"][0], raw[h + "attn/c_attn/b"]
        for j, nm in enumerate(["W_query", "W_key", "W_value"]):
            exp[p + f"att.{nm}.weight"] = w[:, j * D:(j + 1) * D].T
            exp[p + f"att.{nm}.bias"] = b[j * D:(j + 1) * D]
        exp.update({p + "att.out_proj.weight": t(raw[h + "attn/c_proj/w"]), p + "att.out_proj.bias": raw[h + "attn/c_proj/b"],
                    p + "ff.layers.0.weight": t(raw[h + "mlp/c_fc/w"]), p + "ff.layers.0.bias": raw[h + "mlp/c_fc/b"],
                    p + "ff.layers.2.weight": t(raw[h + "mlp/c_proj/w"]), p + "ff.layers.2.bias": raw[h + "mlp/c_proj/b"],
                    p + "norm1.scale": raw[h + "ln_1/g"], p + "norm1.shift": raw[h + "ln_1/b"],
                    p + "norm2.scale": raw[h + "ln_2/g"], p + "norm2.shift": raw[h + "ln_2/b"]})
    return exp


def check_model(model, raw):
    params = dict(model.named_parameters(remove_duplicate=False))
    exp = expected_params(raw)
    assert set(params) == set(exp)  # every parameter of the model is covered
    for name, arr in exp.items():
        np.testing.assert_array_equal(params[name].detach().numpy(), arr, err_msg=name)
    with torch.no_grad():
        logits = model(torch.tensor(IDS)).numpy()
    np.testing.assert_allclose(logits, reference_logits(raw, IDS), atol=2e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def tf_dir(tmp_path_factory):
    return write_tf_checkpoint(tmp_path_factory.mktemp("gpt2") / "124M", RAW)


def test_tf_checkpoint_loads_every_parameter_and_matches_reference_logits(tf_dir):
    settings, params = pc.load_gpt2_from_dir(tf_dir)
    assert settings == SETTINGS
    assert params["blocks"][1]["attn"]["c_attn"]["w"].shape == (D, 3 * D)  # leading 1 dropped
    cfg = pc.gpt2_config(settings)
    assert cfg["qkv_bias"] is True and cfg["n_layers"] == LAYERS and cfg["context_length"] == CTX
    model = pc.GPTModel(cfg)
    pc.load_weights_into_gpt(model, params)
    model.eval()
    check_model(model, RAW)


@pytest.mark.parametrize("prefix", ["", "transformer."])
def test_hf_safetensors_loads_every_parameter_and_matches_reference_logits(tmp_path, prefix):
    from safetensors.numpy import save_file

    tensors = hf_tensors(RAW, prefix)
    assert tensors[prefix + "h.0.attn.c_attn.weight"].shape == (D, 3 * D)
    tensors[prefix + "h.0.attn.bias"] = np.tril(np.ones((1, 1, CTX, CTX), dtype=np.float32))  # HF mask buffer
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    model = pc.GPTModel(pc.gpt2_config(SETTINGS))
    pc.load_hf_safetensors_into_gpt(model, path)
    model.eval()
    check_model(model, RAW)


def test_shape_mismatch_names_parameter_and_both_shapes(tf_dir):
    _, params = pc.load_gpt2_from_dir(tf_dir)
    with pytest.raises(ValueError, match=r"pos_emb\.weight.*\(24, 8\).*\(12, 8\)"):
        pc.load_weights_into_gpt(pc.GPTModel(pc.gpt2_config({**SETTINGS, "n_ctx": 24})), params)
    with pytest.raises(ValueError, match=r"trf_blocks\.0\.att\.W_query\.weight.*\(8, 8\).*\(8, 4\)"):
        bad = {**params, "blocks": [dict(b, attn=dict(b["attn"], c_attn=dict(b["attn"]["c_attn"],
               w=b["attn"]["c_attn"]["w"][:4]))) for b in params["blocks"]]}
        pc.load_weights_into_gpt(pc.GPTModel(pc.gpt2_config(SETTINGS)), bad)
    with pytest.raises(ValueError, match="qkv_bias=True"):
        pc.load_weights_into_gpt(pc.GPTModel({**pc.gpt2_config(SETTINGS), "qkv_bias": False}), params)
    with pytest.raises(ValueError, match="2 transformer blocks, the model has 3"):
        pc.load_weights_into_gpt(pc.GPTModel(pc.gpt2_config({**SETTINGS, "n_layer": 3})), params)


def test_truncated_or_corrupt_checkpoint_gives_clear_error(tf_dir, tmp_path):
    data_name = "model.ckpt.data-00000-of-00001"
    truncated = write_tf_checkpoint(tmp_path / "truncated", RAW)
    data = (truncated / data_name).read_bytes()
    (truncated / data_name).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.ckpt.data-00000-of-00001.*truncated or corrupt"):
        pc.load_gpt2_from_dir(truncated)

    flipped = write_tf_checkpoint(tmp_path / "flipped", RAW)
    data = bytearray((flipped / data_name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (flipped / data_name).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="model.ckpt.data-00000-of-00001"):
        pc.load_gpt2_from_dir(flipped)

    bad_index = write_tf_checkpoint(tmp_path / "bad_index", RAW)
    (bad_index / "model.ckpt.index").write_bytes(b"not an index")
    with pytest.raises(ValueError, match=r"model\.ckpt\.index"):
        pc.load_gpt2_from_dir(bad_index)

    st = tmp_path / "model.safetensors"
    from safetensors.numpy import save_file
    save_file(hf_tensors(RAW), str(st))
    st.write_bytes(st.read_bytes()[:-100])
    with pytest.raises(ValueError, match="model.safetensors"):
        pc.load_hf_safetensors_into_gpt(pc.GPTModel(pc.gpt2_config(SETTINGS)), st)


def test_unknown_model_size_lists_valid_sizes():
    with pytest.raises(ValueError, match="124M, 355M, 774M, 1558M"):
        pc.download_and_load_gpt2("125M")
    with pytest.raises(ValueError, match="valid sizes"):
        pc.load_gpt2_params_or_standin("2B")


def fake_download(calls):
    """A download_file that only finds files already on disk (no network), recording retries."""
    def download_file(remote, dest_dir=None, *, retries=3, **kwargs):
        calls.append((remote.name, retries))
        target = dest_dir / remote.name
        if target.exists():
            return target
        raise pc.DownloadError(f"could not download {remote.name!r}. Tried:\n  - nowhere")
    return download_file


def test_standin_only_when_allowed_and_weights_missing(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(pc, "download_file", fake_download(calls))
    monkeypatch.delenv("LLMS_STANDIN_WEIGHTS", raising=False)
    with pytest.raises(pc.DownloadError):  # never a silent substitute
        pc.load_gpt2_params_or_standin("124M", tmp_path)
    assert calls[-1][1] == 3

    monkeypatch.setenv("LLMS_STANDIN_WEIGHTS", "1")
    settings, params, standin = pc.load_gpt2_params_or_standin("124M", tmp_path)
    out = capsys.readouterr().out
    assert standin and "NOT OpenAI's GPT-2 124M weights" in out and "LLMS_STANDIN_WEIGHTS=1" in out
    assert calls[-1][1] == 1  # fail fast: one attempt per URL
    assert settings == {"n_vocab": 50257, "n_ctx": 256, "n_embd": 64, "n_head": 2, "n_layer": 2}
    model = pc.GPTModel(pc.gpt2_config(settings))
    pc.load_weights_into_gpt(model, params)  # shaped exactly like OpenAI's layout
    again = pc.standin_gpt2_params()
    assert np.array_equal(again["wte"], params["wte"])  # seeded: the same every time

    # real weights present in the models folder win, even with the variable set
    write_tf_checkpoint(tmp_path / "124M", RAW)
    for name in pc.GPT2_FILES:
        (tmp_path / "124M" / name).touch()
    settings, params, standin = pc.load_gpt2_params_or_standin("124M", tmp_path)
    assert not standin and settings == SETTINGS
    assert "STAND-IN" not in capsys.readouterr().out


def test_force_never_reads_checkpoint_files_even_when_a_mirror_has_them(tmp_path, monkeypatch, capsys):
    """Under the test command (LLMS_STANDIN_WEIGHTS=force) GPT-2's files are never read or copied."""
    mirror, cache = tmp_path / "mirror", tmp_path / "cache"
    mirror.mkdir()
    for name in pc.GPT2_FILES:  # present but unreadable as a checkpoint: reading them would raise
        (mirror / name).write_text("not a checkpoint")
    monkeypatch.setenv("LLMS_MIRROR", str(mirror))
    monkeypatch.setenv("LLMS_CACHE", str(cache))
    monkeypatch.setenv("LLMS_STANDIN_WEIGHTS", "force")
    settings, params, standin = pc.load_gpt2_params_or_standin("124M")
    assert standin and "LLMS_STANDIN_WEIGHTS=force" in capsys.readouterr().out
    assert not cache.exists() or not any(cache.rglob("*"))  # nothing was fetched from the mirror
    monkeypatch.setenv("LLMS_STANDIN_WEIGHTS", "1")  # without force, the mirror's files are fetched
    pc.load_gpt2_params_or_standin("124M")  # (then encoder.json fails its checksum: the stand-in)
    assert (cache / "gpt2" / "124M" / "hparams.json").read_text() == "not a checkpoint"
    monkeypatch.setenv("LLMS_STANDIN_WEIGHTS", "yes")
    with pytest.raises(ValueError, match="LLMS_STANDIN_WEIGHTS must be 1, force or unset"):
        pc.load_gpt2_params_or_standin("124M")


def test_llms_device_overrides_the_device_choice(monkeypatch):
    monkeypatch.setenv("LLMS_DEVICE", "cpu")
    assert pc.pick_device() == torch.device("cpu")
    monkeypatch.setenv("LLMS_DEVICE", "tpu")
    with pytest.raises(ValueError, match="LLMS_DEVICE must be cpu, cuda or mps"):
        pc.pick_device()


def test_gpt_download_script_reads_a_models_folder(tmp_path, monkeypatch, capsys):
    gd = import_path("ch05/gpt_download.py")
    calls = []
    # the script's functions come from its own previous_chapters module: patch the helper there
    monkeypatch.setitem(gd.download_and_load_gpt2.__globals__, "download_file", fake_download(calls))
    write_tf_checkpoint(tmp_path / "124M", RAW)
    for name in pc.GPT2_FILES:
        (tmp_path / "124M" / name).touch()
    assert gd.main(["--model-size", "124M", "--models-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"read {len(RAW)} arrays holding {sum(a.size for a in RAW.values()):,} values" in out
    assert [c[0] for c in calls] == list(pc.GPT2_FILES)  # every file goes through the helper
    assert pc.GPT2_FILES[0] == "checkpoint" and "model.ckpt.data-00000-of-00001" in pc.GPT2_FILES
    remote = pc.gpt2_remote_file("355M", "model.ckpt.index")
    assert remote.urls == ("https://openaipublic.blob.core.windows.net/gpt-2/models/355M/model.ckpt.index",
                           "https://f001.backblazeb2.com/file/LLMs-from-scratch/gpt2/355M/model.ckpt.index")
    assert pc.gpt2_remote_file("124M", "vocab.bpe").sha256 == pc.KNOWN_FILES["vocab.bpe"].sha256
    with pytest.raises(SystemExit):
        gd.main(["--model-size", "100M"])
    assert "valid sizes: 124M, 355M, 774M, 1558M" in capsys.readouterr().err


def test_gpt_generate_with_openai_weights_dir_matches_reference_greedy_decoding(tf_dir, capsys):
    import tiktoken

    gen = import_path("ch05/gpt_generate.py", name="ch05_gpt_generate_weights")
    tokenizer = tiktoken.get_encoding("gpt2")
    ids = tokenizer.encode("1+1")
    assert max(ids) < VOCAB
    for _ in range(4):  # greedy decoding with the numpy reference
        ids.append(int(reference_logits(RAW, np.array([ids]))[0, -1].argmax()))
    assert gen.main(["--weights-dir", str(tf_dir), "--prompt", "1+1", "--max-new-tokens", "4"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == tokenizer.decode(ids).strip()
    assert "OpenAI GPT-2 weights from 124M" in captured.err
