"""The offline tiny Llama 2: the real architecture and chat template, random weights, no download.

Real Llama 2 weights are gated and 13 GB; tests and CPU-only runs need something that behaves
like Llama 2 in every way except the quality of its answers. `build_tiny_llama` writes:

- a `LlamaForCausalLM` (2 layers, hidden size 64, 4096 positions like Llama 2, grouped-query
  attention like the 70B) with weights drawn from a fixed seed, saved as safetensors;
- a byte-fallback BPE tokenizer laid out like Llama 2's (`<unk>`=0, `<s>`=1, `</s>`=2, the 256
  byte tokens `<0x00>`..`<0xFF>`, then word pieces with the `▁` space marker), trained on a small
  bundled corpus, carrying the real Llama 2 chat template;
- the generation config of Llama-2-7b-chat-hf (temperature 0.6, top_p 0.9).

It answers in gibberish, of course: the weights are random. Everything else (token ids, the chat
format, loading, streaming, memory arithmetic) is exercised for real.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path

__all__ = [
    "LLAMA2_CHAT_TEMPLATE",
    "TINY_VERSION",
    "build_tiny_llama",
    "ensure_built",
    "ensure_tiny_llama",
    "tiny_cache_dir",
]

# Verbatim from meta-llama/Llama-2-7b-chat-hf tokenizer_config.json ("chat_template").
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}"
    "{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)

# Bump when the recipe changes, so a stale cache is never reused.
TINY_VERSION = "2"
_SEED = 0
_PIECE_VOCAB = 1200  # word pieces learned from the corpus, on top of 3 specials + 256 bytes


def tiny_cache_dir() -> Path:
    """Return where the tiny model is cached: $LLAMA2_COLAB_CACHE or ~/.cache/llama2_colab.

    One folder per recipe and transformers version: the files a build writes depend on the
    transformers that wrote them, and two stacks on one machine (Colab's and the newest) must
    never read each other's build.
    """
    import transformers

    root = os.environ.get("LLAMA2_COLAB_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "llama2_colab"
    )
    return Path(root) / f"tiny-llama-2-v{TINY_VERSION}-transformers-{transformers.__version__}"


def _train_pieces() -> tuple[list[str], list[tuple[str, str]]]:
    """Train word pieces on the bundled corpus; return (pieces, merges), deterministically."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    corpus = resources.files("llama2_colab").joinpath("data/tiny_corpus.txt").read_text("utf-8")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    # Split on spaces the SentencePiece way, so no piece spans two words.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=_PIECE_VOCAB, show_progress=False, special_tokens=["<unk>"]
    )
    tok.train_from_iterator(corpus.splitlines(), trainer)
    model = json.loads(tok.to_str())["model"]
    by_id = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    pieces = [p for p, _ in by_id if p != "<unk>"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return pieces, merges


def _build_tokenizer():
    from transformers import LlamaTokenizer

    pieces, merges = _train_pieces()
    vocab: dict[str, int] = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece in pieces:
        vocab.setdefault(piece, len(vocab))
    # legacy=False, add_bos_token=True, add_eos_token=False: as in Llama-2-7b-chat-hf.
    tokenizer = LlamaTokenizer(
        vocab=vocab,
        merges=merges,
        legacy=False,
        add_bos_token=True,
        add_eos_token=False,
        model_max_length=4096,
        padding_side="left",
    )
    tokenizer.chat_template = LLAMA2_CHAT_TEMPLATE
    return tokenizer


def build_tiny_llama(out_dir: str | os.PathLike) -> Path:
    """Write the tiny Llama 2 (model, tokenizer, generation config) to out_dir; return its path."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        # Every quantized layer's output size is a multiple of 32 and its input size a multiple
        # of 64 (the NF4 block): bitsandbytes repacks 4-bit weights that way on CPUs with
        # AVX512-BF16 and refuses other shapes (172, Llama 2's 11008/4096 scaled down, failed).
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
        tie_word_embeddings=False,
        initializer_range=0.02,
    )
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(_SEED)
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(state)
    model.generation_config = GenerationConfig(
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        do_sample=True,
        temperature=0.6,
        top_p=0.9,
        max_length=4096,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "README.md").write_text(
        "Offline tiny Llama 2 built by llama2_colab: real LlamaForCausalLM architecture and "
        "Llama 2 chat template, random weights (seed 0). Not a language model: it answers "
        "in gibberish.\n",
        encoding="utf-8",
    )
    return out


def ensure_tiny_llama(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the cached tiny Llama 2 directory, building it first if it is missing."""
    return ensure_built(
        Path(cache_dir) if cache_dir is not None else tiny_cache_dir(), build_tiny_llama
    )


def ensure_built(target: Path, build: Callable[[Path], object]) -> Path:
    """Return target, running build(folder) first if target holds no model and tokenizer yet."""
    if (target / "config.json").is_file() and (target / "tokenizer.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build next to the target and rename, so a killed build never leaves half a model behind.
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=target.parent))
    try:
        build(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # lost a race with another builder? fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
