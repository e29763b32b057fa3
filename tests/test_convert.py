"""`convert`: a Meta-format folder (as download.sh leaves it) becomes a Hugging Face folder.

The checkpoint is written here from scratch: random weights under Meta's tensor names, split
into model-parallel shards the way Meta's fairscale layers split them, a params.json and a
SentencePiece tokenizer.model. `meta_forward` below re-implements the forward pass of Meta's
`llama/model.py` in plain torch (pairwise rotary on complex numbers, repeat_kv, RMSNorm), so
"the converted model's logits equal the original's" is checked against Meta's maths, not
against the converter's own idea of it.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
spm = pytest.importorskip("sentencepiece")

from llama2_colab.cli import main  # noqa: E402
from llama2_colab.convert import (  # noqa: E402
    MARKER_FILE,
    check_resources,
    compute_intermediate_size,
    conversion_needs,
    convert_meta_checkpoint,
    inspect_meta_checkpoint,
    write_hf_tokenizer,
)
from llama2_colab.errors import UserFacingError  # noqa: E402

GiB = 1024**3
TEXT = [
    "Llama 2 is a family of large language models released by Meta.",
    "def add(a, b):\n    return a + b",
    "The quick brown fox jumps over the lazy dog.",
    "Tomatoes, basil and cheese make a simple dinner.",
    "for i in range(10):\n    print(i * i)",
]
PROBES = ["Hello world", "def add(a, b):\n    return a + b", "Tomatoes and basil, 42 times!"]


def train_tokenizer(path: Path) -> None:
    """Write a tiny SentencePiece BPE model with Llama's settings (byte fallback, ids 0/1/2)."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT * 4),
        model_writer=buf,
        model_type="bpe",
        vocab_size=320,  # divisible by the shard counts, as 32000 is
        byte_fallback=True,
        character_coverage=1.0,
        split_digits=True,
        normalization_rule_name="identity",  # Llama's: keep newlines and runs of spaces
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    path.write_bytes(buf.getvalue())


def make_params(n_kv_heads: int | None, ffn_dim_multiplier: float | None = None) -> dict:
    params = {"dim": 64, "n_layers": 2, "n_heads": 4, "multiple_of": 32, "norm_eps": 1e-5}
    params["vocab_size"] = -1  # as in Llama 2's params.json: the tokenizer decides
    if n_kv_heads is not None:
        params["n_kv_heads"] = n_kv_heads
    if ffn_dim_multiplier is not None:
        params["ffn_dim_multiplier"] = ffn_dim_multiplier
    return params


def random_weights(params: dict, vocab: int, seed: int = 0) -> dict:
    """Meta's tensor names and shapes, random values of a size that gives O(1) logits."""
    g = torch.Generator().manual_seed(seed)
    dim, n_heads = params["dim"], params["n_heads"]
    kv_dim = (params.get("n_kv_heads") or n_heads) * (dim // n_heads)
    hidden = compute_intermediate_size(dim, params["multiple_of"], params.get("ffn_dim_multiplier"))

    def mat(rows, cols):
        return torch.randn(rows, cols, generator=g) / math.sqrt(cols)

    def norm():
        return 1 + 0.1 * torch.randn(dim, generator=g)

    sd = {"tok_embeddings.weight": torch.randn(vocab, dim, generator=g)}
    for i in range(params["n_layers"]):
        p = f"layers.{i}."
        sd[p + "attention.wq.weight"] = mat(dim, dim)
        sd[p + "attention.wk.weight"] = mat(kv_dim, dim)
        sd[p + "attention.wv.weight"] = mat(kv_dim, dim)
        sd[p + "attention.wo.weight"] = mat(dim, dim)
        sd[p + "feed_forward.w1.weight"] = mat(hidden, dim)
        sd[p + "feed_forward.w2.weight"] = mat(dim, hidden)
        sd[p + "feed_forward.w3.weight"] = mat(hidden, dim)
        sd[p + "attention_norm.weight"] = norm()
        sd[p + "ffn_norm.weight"] = norm()
    sd["norm.weight"] = norm()
    sd["output.weight"] = mat(vocab, dim)
    # Meta's files also carry the rotary table, one frequency per pair of a head's dimensions
    # (the converter reads only its length: the head size); every shard repeats it.
    head_dim, theta = dim // n_heads, params.get("rope_theta", 10000.0)
    sd["rope.freqs"] = 1.0 / (theta ** (torch.arange(0, head_dim, 2).float() / head_dim))
    return sd


def split_shards(sd: dict, n: int) -> list[dict]:
    """Split like fairscale: column-parallel on dim 0, row-parallel and embedding on dim 1."""
    shards: list[dict] = [{} for _ in range(n)]
    for name, tensor in sd.items():
        if name.endswith(("wq.weight", "wk.weight", "wv.weight", "w1.weight", "w3.weight")) or (
            name == "output.weight"
        ):
            parts = tensor.chunk(n, dim=0)
        elif name.endswith(("wo.weight", "w2.weight")) or name == "tok_embeddings.weight":
            parts = tensor.chunk(n, dim=1)
        else:  # norms and the rotary table: every shard holds the whole vector
            parts = [tensor] * n
        for shard, part in zip(shards, parts, strict=True):
            shard[name] = part.clone()
    return shards


def meta_forward(sd: dict, params: dict, tokens):
    """Meta's llama/model.py Transformer.forward, float32, no KV cache."""
    dim, n_heads = params["dim"], params["n_heads"]
    n_kv = params.get("n_kv_heads") or n_heads
    hd, eps = dim // n_heads, params["norm_eps"]
    bsz, seqlen = tokens.shape
    theta = params.get("rope_theta", 10000.0)
    freqs = 1.0 / (theta ** (torch.arange(0, hd, 2)[: hd // 2].float() / hd))
    angles = torch.outer(torch.arange(seqlen).float(), freqs)
    freqs_cis = torch.polar(torch.ones_like(angles), angles)[None, :, None, :]

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    def rotary(x):  # adjacent pairs (x0, x1) are one complex number
        xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(xc * freqs_cis).flatten(3)

    def repeat_kv(x):
        b, s, h, d = x.shape
        rep = n_heads // n_kv
        return x[:, :, :, None, :].expand(b, s, h, rep, d).reshape(b, s, h * rep, d)

    mask = torch.full((seqlen, seqlen), float("-inf")).triu(1)
    h = sd["tok_embeddings.weight"][tokens]
    for i in range(params["n_layers"]):
        p = f"layers.{i}."
        x = rms(h, sd[p + "attention_norm.weight"])
        q = (x @ sd[p + "attention.wq.weight"].T).view(bsz, seqlen, n_heads, hd)
        k = (x @ sd[p + "attention.wk.weight"].T).view(bsz, seqlen, n_kv, hd)
        v = (x @ sd[p + "attention.wv.weight"].T).view(bsz, seqlen, n_kv, hd)
        q, k = rotary(q), rotary(k)
        k, v = repeat_kv(k), repeat_kv(v)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        scores = torch.softmax(q @ k.transpose(2, 3) / math.sqrt(hd) + mask, dim=-1)
        attn = (scores @ v).transpose(1, 2).reshape(bsz, seqlen, dim)
        h = h + attn @ sd[p + "attention.wo.weight"].T
        x = rms(h, sd[p + "ffn_norm.weight"])
        gate = torch.nn.functional.silu(x @ sd[p + "feed_forward.w1.weight"].T)
        h = (
            h
            + (gate * (x @ sd[p + "feed_forward.w3.weight"].T)) @ sd[p + "feed_forward.w2.weight"].T
        )
    return rms(h, sd["norm.weight"]) @ sd["output.weight"].T


def write_meta_folder(root: Path, params: dict, n_shards: int, name="llama-2-tiny", seed=0):
    """Write download.sh's layout: root/tokenizer.model and root/<name>/{params.json,shards}."""
    root.mkdir(parents=True, exist_ok=True)
    train_tokenizer(root / "tokenizer.model")
    vocab = spm.SentencePieceProcessor(model_file=str(root / "tokenizer.model")).vocab_size()
    sd = random_weights(params, vocab, seed)
    folder = root / name
    folder.mkdir()
    (folder / "params.json").write_text(json.dumps(params), "utf-8")
    for i, shard in enumerate(split_shards(sd, n_shards)):
        torch.save(shard, folder / f"consolidated.{i:02d}.pth")
    return folder, sd


@pytest.fixture(scope="module")
def meta_2shard_gqa(tmp_path_factory):
    """A 13B-like (2 shards) checkpoint with 70B-like grouped-query attention, converted."""
    root = tmp_path_factory.mktemp("meta")
    params = make_params(n_kv_heads=2, ffn_dim_multiplier=1.3)
    folder, sd = write_meta_folder(root, params, n_shards=2)
    out = convert_meta_checkpoint(folder, root / "hf", dtype="float32")
    return folder, sd, params, out


def _hf_logits(out: Path, tokens):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(tokens).logits


@pytest.mark.parametrize(
    ("n_shards", "n_kv_heads", "multiplier"),
    [(1, None, None), (2, None, None), (1, 2, None), (2, 2, 1.3), (4, 4, None)],
    ids=["7B-like", "13B-like", "gqa-1-shard", "70B-like", "4-shards"],
)
def test_converted_logits_equal_meta_forward(tmp_path, n_shards, n_kv_heads, multiplier):
    params = make_params(n_kv_heads, multiplier)
    folder, sd = write_meta_folder(tmp_path, params, n_shards, seed=n_shards)
    out = convert_meta_checkpoint(folder, tmp_path / "hf", dtype="float32")
    tokens = torch.tensor([[1, 5, 17, 300, 42, 8, 99, 250, 3, 77, 120, 64]])
    want = meta_forward(sd, params, tokens)
    assert want.abs().mean() > 0.1  # logits big enough for a wrong permutation to show
    torch.testing.assert_close(_hf_logits(out, tokens), want, atol=1e-5, rtol=1e-5)


def test_config_carries_meta_params(meta_2shard_gqa):
    _, sd, params, out = meta_2shard_gqa
    config = json.loads((out / "config.json").read_text())
    assert config["intermediate_size"] == 224  # int(1.3 * int(8 * 64 / 3)) rounded up to 32
    assert config["num_key_value_heads"] == 2
    assert config["rms_norm_eps"] == params["norm_eps"]
    assert config["vocab_size"] == sd["tok_embeddings.weight"].shape[0]
    assert config["max_position_embeddings"] == 4096
    assert (out / MARKER_FILE).is_file()


def test_intermediate_size_matches_the_real_models():
    assert compute_intermediate_size(4096) == 11008  # 7B
    assert compute_intermediate_size(5120) == 13824  # 13B
    assert compute_intermediate_size(8192, 4096, 1.3) == 28672  # 70B
    assert compute_intermediate_size(8192, 256, 1.0) == 22016  # Code Llama 34B


def test_converted_tokenizer_encodes_like_sentencepiece(meta_2shard_gqa):
    from transformers import AutoTokenizer

    folder, _, _, out = meta_2shard_gqa
    sp = spm.SentencePieceProcessor(model_file=str(folder.parent / "tokenizer.model"))
    tokenizer = AutoTokenizer.from_pretrained(out)
    for text in PROBES:
        assert tokenizer(text)["input_ids"] == [sp.bos_id()] + sp.encode(text)
        assert tokenizer.decode(sp.encode(text)) == text
    assert tokenizer.chat_template is None  # a base model: no chat template


def test_converted_folder_generates(meta_2shard_gqa):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, _, _, out = meta_2shard_gqa
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    ids = tokenizer("def add(a, b):", return_tensors="pt")
    new = model.generate(**ids, max_new_tokens=5, do_sample=False)[0, ids["input_ids"].shape[1] :]
    assert len(new) == 5


def test_float16_output_is_half_the_size(tmp_path):
    folder, _ = write_meta_folder(tmp_path, make_params(None), 1)
    out = convert_meta_checkpoint(folder, tmp_path / "hf16")
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"F16"}
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"


def test_chat_folder_gets_the_chat_template_and_sampling(tmp_path):
    folder, _ = write_meta_folder(tmp_path, make_params(None), 1, name="llama-2-7b-chat")
    out = convert_meta_checkpoint(folder, tmp_path / "hf", dtype="float32")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    assert prompt == "<s>[INST] Hi [/INST]"
    generation = json.loads((out / "generation_config.json").read_text())
    assert (generation["temperature"], generation["top_p"]) == (0.6, 0.9)


def test_cli_converts_and_reconverts_its_own_output(meta_2shard_gqa, tmp_path, capsys):
    folder = meta_2shard_gqa[0]
    out = tmp_path / "out"
    assert main(["convert", str(folder), str(out), "--dtype", "float32"]) == 0
    assert "Wrote" in capsys.readouterr().out
    assert main(["convert", str(folder), str(out)]) == 0  # ours: replaced, now float16
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


# --- folders convert must refuse, each with a message that says what to do -------------------


def _error(meta_dir, out_dir) -> UserFacingError:
    with pytest.raises(UserFacingError) as info:
        convert_meta_checkpoint(meta_dir, out_dir, dtype="float32")
    return info.value


@pytest.fixture
def meta_copy(meta_2shard_gqa, tmp_path):
    """A fresh copy of the 2-shard folder (with its tokenizer beside it) to damage."""
    src = meta_2shard_gqa[0]
    shutil.copytree(src, tmp_path / src.name)
    shutil.copy(src.parent / "tokenizer.model", tmp_path / "tokenizer.model")
    return tmp_path / src.name


def test_refuses_a_missing_path_and_a_file(tmp_path):
    assert "does not exist" in _error(tmp_path / "nope", tmp_path / "o").what
    (tmp_path / "f.pth").write_bytes(b"x")
    assert "is a file" in _error(tmp_path / "f.pth", tmp_path / "o").what


def test_refuses_a_folder_without_params(tmp_path):
    (tmp_path / "m").mkdir()
    err = _error(tmp_path / "m", tmp_path / "o")
    assert "no params.json" in err.what and "download.sh" in err.todo


@pytest.mark.parametrize("content", ["{not json", '{"dim": 64}', "[1, 2]"])
def test_refuses_a_bad_params_json(meta_copy, tmp_path, content):
    (meta_copy / "params.json").write_text(content)
    err = _error(meta_copy, tmp_path / "o")
    assert "params.json" in err.what


def test_refuses_a_partial_download(meta_copy, tmp_path):
    (meta_copy / "consolidated.01.pth").unlink()  # 2-shard model, one shard left
    err = _error(meta_copy, tmp_path / "o")
    assert "comes in 2 shards" in err.what and "has 1" in err.what
    (meta_copy / "consolidated.00.pth").rename(meta_copy / "consolidated.01.pth")
    assert "consolidated.00.pth" in _error(meta_copy, tmp_path / "o").what
    (meta_copy / "consolidated.01.pth").unlink()
    assert "no consolidated.00.pth" in _error(meta_copy, tmp_path / "o").what


def test_refuses_a_truncated_shard(meta_copy, tmp_path):
    shard = meta_copy / "consolidated.01.pth"
    shard.write_bytes(shard.read_bytes()[:5000])
    err = _error(meta_copy, tmp_path / "o")
    assert "consolidated.01.pth could not be read" in err.what and "md5sum" in err.todo


def test_refuses_shards_of_different_models(meta_copy, tmp_path):
    other = split_shards(random_weights(make_params(4), 320, seed=9), 2)[1]
    torch.save(other, meta_copy / "consolidated.01.pth")  # MHA shard next to a GQA one
    err = _error(meta_copy, tmp_path / "o")
    assert "disagree" in err.what or "different copies" in err.what


def test_refuses_a_missing_tokenizer(meta_copy, tmp_path):
    (meta_copy.parent / "tokenizer.model").unlink()
    err = _error(meta_copy, tmp_path / "o")
    assert "No tokenizer.model" in err.what


def test_says_a_hugging_face_folder_is_already_converted(meta_2shard_gqa, tmp_path):
    out = meta_2shard_gqa[3]
    err = _error(out, tmp_path / "o")
    assert "already a Hugging Face folder" in err.what and "from_pretrained" in err.todo


def test_never_overwrites_a_folder_it_did_not_write(meta_2shard_gqa, tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    err = _error(meta_2shard_gqa[0], out)
    assert "not empty" in err.what
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_refuses_when_ram_or_disk_is_short(meta_2shard_gqa, tmp_path):
    folder = meta_2shard_gqa[0]
    with pytest.raises(UserFacingError) as info:
        convert_meta_checkpoint(folder, tmp_path / "o", ram_available_bytes=100 * 2**20)
    assert "GiB of free RAM" in info.value.what and "0.1 GiB available" in info.value.what
    assert not (tmp_path / "o").exists()
    checkpoint = inspect_meta_checkpoint(folder)
    with pytest.raises(UserFacingError) as info:
        check_resources(checkpoint, "float16", ram_available_bytes=64 * GiB, disk_free_bytes=0)
    assert "disk" in info.value.what


def test_memory_check_for_llama_2_7b_fits_colab_but_not_a_small_vm(tmp_path):
    """The numbers a learner sees for the real 7B (params.json of llama-2-7b, 13.5 GB bf16)."""
    folder = tmp_path / "llama-2-7b"
    folder.mkdir()
    params = {"dim": 4096, "multiple_of": 256, "n_heads": 32, "n_layers": 32, "norm_eps": 1e-05}
    (folder / "params.json").write_text(json.dumps({**params, "vocab_size": -1}))
    (folder / "consolidated.00.pth").write_bytes(b"PK")  # stands in: only its name is read
    (folder / "tokenizer.model").write_bytes(b"")
    checkpoint = inspect_meta_checkpoint(folder)
    assert round(checkpoint.n_params / 1e9, 2) == 6.74
    ram, disk = conversion_needs(checkpoint, "float16")
    assert (round(ram / GiB, 1), round(disk / GiB, 1)) == (3.5, 12.6)  # streams: not 2 x 13.5 GB
    colab_free = 11 * GiB  # a fresh Colab runtime: 12.7 GiB of RAM, about 11 of it free
    check_resources(checkpoint, "float16", colab_free, disk_free_bytes=80 * GiB)
    with pytest.raises(UserFacingError, match=r"needs about 3\.5 GiB of free RAM"):
        check_resources(checkpoint, "float16", 2 * GiB, disk_free_bytes=80 * GiB)
    with pytest.raises(UserFacingError, match=r"12\.6 GiB of disk"):
        check_resources(checkpoint, "float16", colab_free, disk_free_bytes=10 * GiB)


def test_refuses_a_tokenizer_of_another_model(meta_copy, tmp_path):
    params = json.loads((meta_copy / "params.json").read_text())
    (meta_copy / "params.json").write_text(json.dumps({**params, "vocab_size": 32016}))
    err = _error(meta_copy, tmp_path / "o")
    assert "320 tokens" in err.what and "vocab_size=32016" in err.what


def test_code_llama_instruct_folder(tmp_path):
    """Code Llama's params.json: vocab_size 32016, rope_theta 1e6; tokenizer.model inside."""
    from transformers import AutoConfig, AutoTokenizer

    from llama2_colab.codellama import write_tiny_code_tokenizer_model

    folder = tmp_path / "CodeLlama-7b-Instruct"
    folder.mkdir()
    write_tiny_code_tokenizer_model(folder / "tokenizer.model")
    params = {**make_params(None), "vocab_size": 32016, "rope_theta": 1000000.0}
    sd = random_weights(params, 32016, seed=3)
    (folder / "params.json").write_text(json.dumps(params))
    for i, shard in enumerate(split_shards(sd, 2)):
        torch.save(shard, folder / f"consolidated.{i:02d}.pth")
    out = convert_meta_checkpoint(folder, tmp_path / "hf", dtype="float32")
    config = AutoConfig.from_pretrained(out)
    assert (config.vocab_size, config.max_position_embeddings) == (32016, 16384)
    assert config.rope_parameters["rope_theta"] == 1_000_000.0
    tokens = torch.tensor([[1, 32007, 5, 300, 32008, 42, 32009, 31000, 17]])
    torch.testing.assert_close(
        _hf_logits(out, tokens), meta_forward(sd, params, tokens), atol=1e-5, rtol=1e-5
    )
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.convert_tokens_to_ids("▁<PRE>") == 32007
    assert tokenizer.chat_template is not None  # an Instruct model: the [INST] template


@pytest.mark.parametrize("layout", ["bfloat16", "legacy-format"])
def test_meta_release_formats(tmp_path, layout):
    """Meta ships bfloat16 tensors; very old torch files are not zip archives (no mmap)."""
    params = make_params(2)
    folder, sd = write_meta_folder(tmp_path, params, 2, seed=5)
    if layout == "bfloat16":
        sd = {k: v.to(torch.bfloat16) for k, v in sd.items()}
        for i, shard in enumerate(split_shards(sd, 2)):
            torch.save(shard, folder / f"consolidated.{i:02d}.pth")
        sd = {k: v.float() for k, v in sd.items()}  # the reference computes in float32
    else:
        for i, shard in enumerate(split_shards(sd, 2)):
            path = folder / f"consolidated.{i:02d}.pth"
            torch.save(shard, path, _use_new_zipfile_serialization=False)
        assert not inspect_meta_checkpoint(folder).mmap_ok
    out = convert_meta_checkpoint(folder, tmp_path / "hf", dtype="float32")
    tokens = torch.tensor([[1, 5, 17, 300, 42, 8]])
    want = meta_forward(sd, params, tokens)
    torch.testing.assert_close(_hf_logits(out, tokens), want, atol=1e-5, rtol=1e-5)


def test_a_big_model_is_written_in_several_files_with_an_index(tmp_path):
    params = make_params(2)
    folder, sd = write_meta_folder(tmp_path, params, 2, seed=6)
    out = convert_meta_checkpoint(folder, tmp_path / "hf", dtype="float32", max_file_bytes=100_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) >= 3 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert sorted(p.name for p in out.glob("*.safetensors")) == files
    tokens = torch.tensor([[1, 5, 17, 300]])
    torch.testing.assert_close(
        _hf_logits(out, tokens), meta_forward(sd, params, tokens), atol=1e-5, rtol=1e-5
    )


INDENTED_CODE = [
    "def add(a, b):\n    return a + b",
    "if x:\n        y = 1\n\tz = 2\n            w = 3",
    "x = [\n  1,\n   2,\n]  # two and three spaces, a tab:\t here",
]
# Not probed: a text that *starts* with spaces. transformers 5's LlamaTokenizer (Metaspace with
# prepend_scheme="first") drops one leading space there, for the Hub's Llama 2 tokenizer too
# (huggingface/transformers#47700); the converted tokenizer behaves as the Hub's does.


def test_a_converted_llama2_tokenizer_splits_indented_code_as_sentencepiece(tmp_path):
    """With Llama 2's real vocabulary: `"    return"` is `▁▁▁` + `▁return` for SentencePiece
    (Meta scored whitespace-only pieces -1e9); merges ordered by id would give `▁▁▁▁` +
    `return`, ids the model never saw in training."""
    from llama2_colab.vocab import write_llama2_tokenizer_model

    model_file = write_llama2_tokenizer_model(tmp_path / "tokenizer.model")
    tokenizer = write_hf_tokenizer(model_file, tmp_path / "hf", chat=False)
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    for text in INDENTED_CODE:
        assert tokenizer(text)["input_ids"] == [1] + sp.encode(text), text
        assert tokenizer.decode(sp.encode(text)) == text
    assert "▁▁▁" in tokenizer.convert_ids_to_tokens(tokenizer.encode(INDENTED_CODE[0]))


def test_refuses_a_tokenizer_model_that_is_not_sentencepiece(tmp_path):
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"\x00\xff not a protobuf at all" * 10)
    with pytest.raises(UserFacingError, match="not a SentencePiece tokenizer.model") as err:
        write_hf_tokenizer(bad, tmp_path / "hf", chat=False)
    assert "download.sh" in err.value.todo
    assert not (tmp_path / "hf").exists()


# ---------------------------------------------------------------------------------------------
# Nothing of the user's is lost, whatever OUT_DIR and the folders hold (red-team cases)


def test_converting_again_keeps_what_you_added_to_its_folder(meta_2shard_gqa, tmp_path):
    folder, out = meta_2shard_gqa[0], tmp_path / "hf"
    convert_meta_checkpoint(folder, out, dtype="float32")
    (out / "my-lora").mkdir()
    (out / "my-lora" / "adapter.txt").write_text("a day of training")
    before = sorted(p.name for p in out.iterdir())
    err = _error(folder, out)
    assert "my-lora" in err.what and "Move those out" in err.todo
    assert sorted(p.name for p in out.iterdir()) == before
    assert (out / "my-lora" / "adapter.txt").read_text() == "a day of training"
    shutil.rmtree(out / "my-lora")
    assert convert_meta_checkpoint(folder, out, dtype="float32") == out.resolve()


def test_refuses_an_out_dir_that_holds_the_checkpoint(meta_copy, tmp_path):
    # meta_copy lives in tmp_path: converting into tmp_path would replace the source.
    marker = tmp_path / MARKER_FILE
    marker.write_text("{}")  # even a folder that looks like an earlier conversion
    err = _error(meta_copy, tmp_path)
    assert "holds the checkpoint being converted" in err.what
    assert (meta_copy / "params.json").is_file() and marker.is_file()


def test_dot_from_inside_the_model_folder_is_that_folder(tmp_path, monkeypatch):
    folder, _ = write_meta_folder(tmp_path, make_params(None), 1, name="llama-2-7b-chat")
    monkeypatch.chdir(folder)  # the tokenizer sits beside it, in ".."
    out = convert_meta_checkpoint(".", "../hf", dtype="float32")
    assert out == (tmp_path / "hf").resolve()
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["temperature"] == 0.6  # named a chat model by its real folder name


def test_an_out_dir_that_cannot_be_made_is_named(meta_2shard_gqa, tmp_path):
    (tmp_path / "a-file").write_text("x")
    err = _error(meta_2shard_gqa[0], tmp_path / "a-file" / "hf")
    assert "Cannot write beside" in err.what and "a folder you can write to" in err.todo


@pytest.mark.parametrize(
    ("key", "value"), [("n_heads", 0), ("multiple_of", 0), ("n_layers", -1), ("dim", 0)]
)
def test_refuses_sizes_that_are_not_positive(meta_copy, tmp_path, key, value):
    params = json.loads((meta_copy / "params.json").read_text())
    (meta_copy / "params.json").write_text(json.dumps({**params, key: value}))
    err = _error(meta_copy, tmp_path / "o")
    assert "params.json" in err.what and not (tmp_path / "o").exists()


def test_a_killed_conversions_leftovers_are_removed_and_no_one_elses(meta_2shard_gqa, tmp_path):
    import subprocess

    from llama2_colab.convert import _work_prefix

    dead = subprocess.Popen(["true"])  # a process id that has ended
    dead.wait()
    here = _work_prefix(tmp_path / "hf").rsplit("-", 2)[0]  # ".hf.converting-<this host>"
    stale = tmp_path / f"{here}-{dead.pid}-abc123"
    stale.mkdir()
    (stale / "model-00001-of-00002.safetensors").write_bytes(b"x" * 1000)
    running = tmp_path / f"{here}-{os.getpid()}-def456"  # a live process's: kept
    running.mkdir()
    # Another machine's run on a shared disk (a Drive folder): its process ids mean nothing here.
    elsewhere = tmp_path / f".hf.converting-other_host-{dead.pid}-ghi789"
    elsewhere.mkdir()
    said: list[str] = []
    convert_meta_checkpoint(meta_2shard_gqa[0], tmp_path / "hf", dtype="float32", log=said.append)
    assert not stale.exists() and running.is_dir() and elsewhere.is_dir()
    assert [line for line in said if "interrupted" in line] == [
        f"Removed {stale.name}, left by a conversion that was interrupted"
    ]


def test_a_file_you_saved_over_its_output_is_kept(meta_2shard_gqa, tmp_path):
    # e.g. merged.save_pretrained(out) after a LoRA merge: same name, your weights.
    folder, out = meta_2shard_gqa[0], tmp_path / "hf"
    convert_meta_checkpoint(folder, out, dtype="float32")
    weights = next(out.glob("*.safetensors"))
    weights.write_bytes(b"my merged weights")
    err = _error(folder, out)
    assert weights.name in err.what
    assert weights.read_bytes() == b"my merged weights"


def test_a_linked_model_folder_keeps_its_name_and_neighbours(tmp_path):
    # The download sits in a store; the folder the user names is a link next to tokenizer.model.
    store = tmp_path / "store"
    store.mkdir()
    folder, _ = write_meta_folder(store, make_params(None), 1, name="blob-123")
    work = tmp_path / "w"
    work.mkdir()
    shutil.move(str(store / "tokenizer.model"), work / "tokenizer.model")
    (work / "llama-2-7b-chat").symlink_to(folder, target_is_directory=True)
    out = convert_meta_checkpoint(work / "llama-2-7b-chat", tmp_path / "hf", dtype="float32")
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["temperature"] == 0.6  # a chat model, by the name the user gave it


@pytest.mark.parametrize("damage", ["empty", "bad utf-8", "not a tokenizer"])
def test_refuses_a_damaged_tokenizer_model(meta_copy, tmp_path, damage):
    model = meta_copy.parent / "tokenizer.model"
    if damage == "empty":
        model.write_bytes(b"")
    elif damage == "bad utf-8":
        data = bytearray(model.read_bytes())
        i = data.find("▁the".encode())
        data[i + 3] = 0xFF
        model.write_bytes(bytes(data))
    else:
        model.write_bytes((meta_copy / "params.json").read_bytes())
    err = _error(meta_copy, tmp_path / "o")
    assert "tokenizer.model" in err.what and not (tmp_path / "o").exists()


def test_a_folder_converted_by_an_earlier_version_is_recognised(meta_2shard_gqa, tmp_path):
    # Its marker has no list of files: the names convert writes are taken as its own.
    folder, out = meta_2shard_gqa[0], tmp_path / "hf"
    convert_meta_checkpoint(folder, out, dtype="float32")
    marker = json.loads((out / MARKER_FILE).read_text())
    (out / MARKER_FILE).write_text(json.dumps({k: v for k, v in marker.items() if k != "files"}))
    (out / "notes.txt").write_text("mine")
    assert "notes.txt" in _error(folder, out).what
    (out / "notes.txt").unlink()
    assert convert_meta_checkpoint(folder, out, dtype="float32") == out.resolve()
