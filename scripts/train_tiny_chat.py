"""Train the offline tiny chat model and write the weights the package ships.

    python scripts/build_tiny_chat_corpus.py   # the corpus (already in the repository)
    python scripts/train_tiny_chat.py          # about 10 minutes on 2 CPU cores

A `LlamaForCausalLM` with Llama 2's architecture and its real 32,000-piece tokenizer, a few
million parameters (the sizes are in `CONFIG`), trained from a fixed seed on
`llama2_colab/data/tiny_chat_corpus.jsonl`. Dialogs are encoded as Meta's reference does
(`llama2_colab.encode_dialog`) and, for one dialog in five, as `apply_chat_template` does, so
the toy, like Llama 2, answers both; the loss is on the answer only, as in the Llama 2 paper's
supervised fine-tuning (section 3.1: "we zero-out the loss on tokens from the user prompt").
Plain documents are learned whole.

Writes `llama2_colab/data/tiny_chat.safetensors` (float16) and `tiny_chat.json` (its sha256,
the config, and what training measured), then asks the held-out questions of
`tiny_chat_lessons.HELD_OUT`. The same seed on the same machine gives the same weights; another
CPU may round differently, so a rebuild elsewhere is close, not byte-identical.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from tiny_chat_lessons import HELD_OUT  # noqa: E402

from llama2_colab.chat import encode_dialog  # noqa: E402
from llama2_colab.tiny import LLAMA2_CHAT_TEMPLATE  # noqa: E402
from llama2_colab.vocab import build_llama2_tokenizer  # noqa: E402

DATA = ROOT / "llama2_colab" / "data"
SEED = 0
# Llama 2's layout at a toy's size. Every 4-bit layer's output size is a multiple of 32 and its
# input size a multiple of 64 (bitsandbytes' CPU packing rule); 4 heads share 2 KV heads (GQA).
CONFIG = dict(
    vocab_size=32000,
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=False,
    initializer_range=0.02,
)
TEMPLATE_SHARE = 0.2  # dialogs encoded the way apply_chat_template does


def encode_line(tokenizer, line: dict, template: bool) -> tuple[list[int], list[int]]:
    """Return (ids, labels) for one corpus line; labels are -100 where no loss is taken."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if "text" in line:
        ids = [bos] + tokenizer(line["text"], add_special_tokens=False)["input_ids"] + [eos]
        return ids, [-100] + ids[1:]
    *asked, answer = line["messages"]
    if template:
        prompt = tokenizer.apply_chat_template(asked, return_dict=True)["input_ids"]
    else:
        prompt = encode_dialog(tokenizer, asked)
    reply = tokenizer(" " + answer["content"].strip(), add_special_tokens=False)["input_ids"]
    reply += [eos]
    return prompt + reply, [-100] * len(prompt) + reply


def load_examples(tokenizer, path: Path) -> list[tuple[list[int], list[int]]]:
    """Return the encoded corpus, one dialog in five encoded as the template does."""
    rng = random.Random(SEED)
    lines = [json.loads(x) for x in path.read_text("utf-8").splitlines()]
    return [encode_line(tokenizer, line, rng.random() < TEMPLATE_SHARE) for line in lines]


def used_vocabulary(examples) -> list[int]:
    """Return the ids the corpus uses (plus unk, BOS and EOS), in id order."""
    return sorted({0, 1, 2}.union(*(ids for ids, _ in examples)))


def to_compact(examples, used: list[int]):
    """Return examples with every id renumbered to its place in used (labels -100 kept)."""
    index = {token: i for i, token in enumerate(used)}
    return [
        ([index[t] for t in ids], [index[t] if t != -100 else -100 for t in labels])
        for ids, labels in examples
    ]


def expand_vocabulary(compact, used: list[int]) -> LlamaForCausalLM:
    """Return the full 32,000-token model: the compact one's rows in place, zeros elsewhere.

    A zero output row gives the logit 0 whatever the input, so the full model's softmax equals
    the compact one's with one more logit of log(unused tokens): exactly what training used.
    """
    model = LlamaForCausalLM(LlamaConfig(**CONFIG))
    state = compact.state_dict()
    ids = torch.tensor(used)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        full = torch.zeros(CONFIG["vocab_size"], CONFIG["hidden_size"])
        full[ids] = state[name]
        state[name] = full
    model.load_state_dict(state)
    return model.eval()


def make_batches(examples, batch_size: int, rng: random.Random) -> list[dict]:
    """Return padded batches of examples of similar length, in a shuffled order."""
    order = sorted(range(len(examples)), key=lambda i: (len(examples[i][0]), rng.random()))
    batches = []
    for start in range(0, len(order), batch_size):
        chunk = [examples[i] for i in order[start : start + batch_size]]
        width = max(len(ids) for ids, _ in chunk)

        def pad(row: list[int], value: int, width: int = width) -> list[int]:
            return row + [value] * (width - len(row))

        batches.append(
            {
                "input_ids": torch.tensor([pad(ids, 0) for ids, _ in chunk]),
                "labels": torch.tensor([pad(labels, -100) for _, labels in chunk]),
                "attention_mask": torch.tensor([pad([1] * len(ids), 0) for ids, _ in chunk]),
            }
        )
    rng.shuffle(batches)
    return batches


def batch_loss(model, batch: dict) -> torch.Tensor:
    """Return the mean next-token loss on the labelled positions (the head runs only there)."""
    hidden = model.model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).last_hidden_state
    targets = batch["labels"][:, 1:]
    graded = targets != -100
    logits = model.lm_head(hidden[:, :-1][graded]).float()
    # The tokens the corpus never uses have zero rows in the full model (logit 0 each): together
    # they are one more logit, log(their number). So this loss is the full model's, exactly.
    unused = torch.full((logits.shape[0], 1), math.log(CONFIG["vocab_size"] - logits.shape[1]))
    return torch.nn.functional.cross_entropy(torch.cat([logits, unused], 1), targets[graded])


def train(model, examples, epochs: int, batch_size: int, lr: float, log) -> list[float]:
    """Train with AdamW, a short warm-up and a cosine decay; return the loss of every step."""
    rng = random.Random(SEED)
    steps = epochs * math.ceil(len(examples) / batch_size)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": other, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
    )
    warmup = min(100, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / warmup
            if s < warmup
            else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup)))
        ),
    )
    losses: list[float] = []
    model.train()
    for epoch in range(epochs):
        start = time.perf_counter()
        for batch in make_batches(examples, batch_size, rng):
            loss = batch_loss(model, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        recent = losses[-20:]
        log(
            f"epoch {epoch + 1}/{epochs}: loss {sum(recent) / len(recent):.3f} "
            f"({time.perf_counter() - start:.0f} s)"
        )
    model.eval()
    return losses


def ask(model, tokenizer, questions: list[str], system: str | None = None) -> str:
    """Return the model's greedy answer to the last question, after answering the others."""
    messages = [{"role": "system", "content": system}] if system else []
    for question in questions:
        messages.append({"role": "user", "content": question})
        prompt = torch.tensor([encode_dialog(tokenizer, messages)])
        with torch.no_grad():
            out = model.generate(
                prompt, do_sample=False, max_new_tokens=80, pad_token_id=0, eos_token_id=2
            )
        answer = tokenizer.decode(out[0, prompt.shape[1] :], skip_special_tokens=True).strip()
        messages.append({"role": "assistant", "content": answer})
    return answer


def score_held_out(model, tokenizer, log) -> tuple[int, int]:
    """Ask every held-out question; return (answered right, asked)."""
    right = 0
    for item in HELD_OUT:
        answer = ask(model, tokenizer, [*item.get("history", []), item["q"]], item.get("system"))
        ok = all(any(a.lower() in answer.lower() for a in alts) for alts in item["checks"])
        right += ok
        log(f"  {'ok ' if ok else 'BAD'} {item['q']!r} -> {answer!r}")
    return right, len(HELD_OUT)


def save_weights(model, summary: dict) -> None:
    """Write the float16 weights and tiny_chat.json (sha256, config, training summary)."""
    weights = DATA / "tiny_chat.safetensors"
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(weights), metadata={"format": "pt"})
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    info = {"sha256": digest, "bytes": weights.stat().st_size, "config": CONFIG, **summary}
    (DATA / "tiny_chat.json").write_text(json.dumps(info, indent=1) + "\n", "utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = build_llama2_tokenizer(chat_template=LLAMA2_CHAT_TEMPLATE)
    corpus = DATA / "tiny_chat_corpus.jsonl"
    examples = load_examples(tokenizer, corpus)
    tokens = sum(len(ids) for ids, _ in examples)
    print(f"{len(examples)} examples, {tokens:,} tokens")
    used = used_vocabulary(examples)
    print(f"the corpus uses {len(used):,} of the {CONFIG['vocab_size']:,} tokens")
    torch.manual_seed(SEED)
    compact = LlamaForCausalLM(LlamaConfig(**(CONFIG | {"vocab_size": len(used)})))
    start = time.perf_counter()
    renumbered = to_compact(examples, used)
    losses = train(compact, renumbered, args.epochs, args.batch_size, args.lr, print)
    seconds = time.perf_counter() - start
    model = expand_vocabulary(compact, used)
    print(f"{sum(p.numel() for p in model.parameters()):,} parameters")
    model.to(torch.float16).to(torch.float32)  # judge the weights as shipped (float16)
    right, asked = score_held_out(model, tokenizer, print)
    print(f"held-out rewordings answered right: {right}/{asked}")
    save_weights(
        model,
        {
            "seed": SEED,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "steps": len(losses),
            "final_loss": round(sum(losses[-20:]) / 20, 4),
            "train_seconds": round(seconds),
            "corpus_sha256": hashlib.sha256(corpus.read_bytes()).hexdigest(),
            "corpus_examples": len(examples),
            "corpus_tokens": tokens,
            "tokens_used": len(used),
            "held_out_right": right,
            "held_out_asked": asked,
            "torch": torch.__version__,
        },
    )


if __name__ == "__main__":
    main()
