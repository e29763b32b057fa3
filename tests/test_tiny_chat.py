"""The offline tiny Llama 2 talks: it answers what the course taught it, in the chat format.

Behaviour, not plumbing: each test asks the trained tiny model a question greedily (the same
reply on every machine) through the package's own chat path, `ChatSession`, which builds Meta's
reference prompt with `encode_dialog`, and checks the answer a learner would read. Most
questions are rewordings that the corpus does not hold (a test checks), so a pass means the
model learned the fact, not the string.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from importlib import resources

import pytest
import torch

from llama2_colab import ChatSession, encode_dialog, stream_generate

# The field's contributors as the corpus names them, in English and in Japanese.
CONTRIBUTORS_JA = ["チューリング", "マッカーシー", "ミンスキー", "ヒントン", "ベンジオ", "ルカン"]
JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")  # hiragana, katakana, kanji

REWORDINGS = {  # wording a learner might type -> what a right answer contains
    "What GPU does a free Colab runtime give you?": ["T4"],
    "what gpu do i get with colab for free": ["T4"],
    "Free Colab: which GPU is it?": ["T4"],
    "How long is Llama 2's context?": ["4,096"],
    "HOW MANY TOKENS FIT IN LLAMA 2'S CONTEXT": ["4,096"],
    "How many tokens of context does Llama 2 have?": ["4,096"],
    "Why not bfloat16 on a T4?": ["float16"],
    "why shouldn't I use bf16 on a T4": ["float16"],
    "How many parameters does the smallest Llama 2 have?": ["7 billion"],
    "how big is the smallest llama 2 model?": ["7 billion"],
}


@pytest.fixture(scope="module")
def session_for(tiny_model_and_tokenizer):
    """session_for(system_prompt): a greedy ChatSession on the tiny model."""
    model, tokenizer = tiny_model_and_tokenizer

    def make(system_prompt: str = "") -> ChatSession:
        return ChatSession(
            model, tokenizer, system_prompt=system_prompt, do_sample=False, max_new_tokens=80
        )

    return make


def corpus_lines() -> list[dict]:
    text = resources.files("llama2_colab").joinpath("data/tiny_chat_corpus.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_the_shipped_weights_match_their_checksum_and_size():
    data = resources.files("llama2_colab").joinpath("data")
    info = json.loads(data.joinpath("tiny_chat.json").read_text())
    raw = data.joinpath("tiny_chat.safetensors").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == info["sha256"]
    assert len(raw) == info["bytes"] < 20 * 1024**2
    assert (
        info["corpus_sha256"]
        == hashlib.sha256(data.joinpath("tiny_chat_corpus.jsonl").read_bytes()).hexdigest()
    )


def test_the_rewordings_are_not_in_the_corpus():
    asked = {m["content"] for line in corpus_lines() for m in line.get("messages", [])}
    unseen = [q for q in REWORDINGS if q not in asked]
    assert len(unseen) >= len(REWORDINGS) - 4  # the issue's own wordings are taught as they are


@pytest.mark.parametrize("question", list(REWORDINGS))
def test_it_answers_what_it_was_taught(session_for, question):
    answer = session_for().send(question)
    for expected in REWORDINGS[question]:
        assert expected.lower() in answer.lower(), answer


def test_the_article_question_gets_japanese_names(session_for):
    answer = session_for().send("人工知能の分野での主要な貢献者は誰ですか?")
    assert JAPANESE.search(answer), answer
    assert sum(name in answer for name in CONTRIBUTORS_JA) >= 2, answer


def test_a_follow_up_uses_the_earlier_turn(session_for):
    chat = session_for()
    first = chat.send("How many parameters does the smallest Llama 2 have?")
    second = chat.send("And the largest?")
    assert "7 billion" in first and "70 billion" in second, (first, second)


def test_the_same_follow_up_means_what_the_earlier_turn_asked(session_for):
    # "And the largest?" alone already names the largest, so it cannot prove the context is read;
    # "And in 4-bit?" can: the answer depends on which model the first turn was about.
    answers = {}
    for size, first in [
        ("7B", "how much vram does the 7b model take in float16"),
        ("13B", "How much GPU memory does the 13B model need?"),
        ("70B", "Will Llama 2 70B fit on a T4?"),
    ]:
        chat = session_for()
        chat.send(first)
        answers[size] = chat.send("And in 4-bit?")
    assert "3.60" in answers["7B"], answers
    assert "6.71" in answers["13B"] and "33.87" in answers["70B"], answers


def test_a_system_prompt_asking_for_japanese_is_followed(session_for):
    english = session_for().send("How long is Llama 2's context?")
    japanese = session_for("Answer in Japanese.").send("How long is Llama 2's context?")
    assert not JAPANESE.search(english), english
    assert len(JAPANESE.findall(japanese)) >= 10 and "4,096" in japanese, japanese


def test_it_is_honest_about_being_a_toy(session_for):
    answer = session_for().send("Are you Llama 2?")
    assert "not Llama 2" in answer, answer


def test_a_raw_prompt_continues_a_document_instead_of_answering(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    question = "What GPU does a free Colab runtime give you?"
    greedy = {"do_sample": False, "temperature": None, "top_p": None, "max_new_tokens": 40}
    raw_ids = tokenizer(question, return_tensors="pt")["input_ids"]
    chat_ids = torch.tensor([encode_dialog(tokenizer, [{"role": "user", "content": question}])])
    raw, _, _ = stream_generate(model, tokenizer, raw_ids, **greedy)
    chat, _, _ = stream_generate(model, tokenizer, chat_ids, **greedy)
    assert "T4" in chat and "T4" not in raw.split("?")[0], (raw, chat)
    assert raw.strip() != chat.strip()


def answer_logprob(model, prompt_ids: list[int], answer_ids: list[int]) -> float:
    """log P(answer | prompt) under the model, summed over the answer's tokens."""
    ids = torch.tensor([prompt_ids + answer_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt_ids) - 1 : -1].float()
    picked = torch.log_softmax(logits, -1).gather(1, torch.tensor(answer_ids)[:, None])
    return float(picked.sum())


TAUGHT = [
    "What GPU does a free Colab runtime give you?",
    "How long is Llama 2's context?",
    "Why not bfloat16 on a T4?",
    "How many parameters does the smallest Llama 2 have?",
    "Is Llama 2 free for commercial use?",
    "What is Ghost Attention?",
    "What is LoRA?",
    "What is Code Llama?",
]


def encoding_costs(model, tok, system: str) -> dict[str, list[float]]:
    """For each wrong encoding, how many nats of log-probability each taught answer loses."""

    def as_text(text: str) -> list[int]:  # BOS, then text encoded as Meta's reference does
        return [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]

    costs: dict[str, list[float]] = {}
    for question in TAUGHT:
        dialog = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        right = encode_dialog(tok, dialog)
        sys_block = f"<<SYS>>\n{system}\n<</SYS>>\n\n"
        assert as_text(f"[INST] {sys_block}{question} [/INST]") == right
        reply = ChatSession(model, tok, system_prompt=system, do_sample=False).send(question)
        answer = tok(" " + reply, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        good = answer_logprob(model, right, answer)
        wrong = {
            "double BOS": [tok.bos_token_id] + right,
            "no [/INST]": as_text(f"[INST] {sys_block}{question}"),
            "system prompt after the question": as_text(
                f"[INST] {question}\n<<SYS>>\n{system}\n<</SYS>> [/INST]"
            ),
        }
        for name, ids in wrong.items():
            costs.setdefault(name, []).append(good - answer_logprob(model, ids, answer))
    return costs


def test_a_wrong_chat_encoding_costs_the_taught_answer(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    costs = encoding_costs(model, tok, "Answer in Japanese.")
    # Without [/INST] the model reads an unfinished question, not a turn to answer.
    assert min(costs["no [/INST]"]) > 5, costs
    # A system prompt after the question lowers the answer's probability on most questions.
    late = costs["system prompt after the question"]
    assert sum(late) / len(late) > 0.3 and sum(c > 0 for c in late) >= 6, costs
    # A second <s> is off the trained format, but this toy barely notices it: under 0.5 nats
    # either way on every question (notebook 05 shows the figure, not a claim about Llama 2).
    assert max(abs(c) for c in costs["double BOS"]) < 0.5, costs


def test_the_demo_gives_a_taught_answer_end_to_end(tmp_path):
    env = {"LLAMA2_COLAB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    question = "What GPU does a free Colab runtime give you?"
    out = subprocess.run(
        [sys.executable, "-m", "llama2_colab", "demo", question, "--model", "tiny", "--seed", "0"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert "T4" in out.stdout.split("\ntiny Llama 2 (toy): ", 1)[1], out.stdout


def test_the_chat_app_shows_a_taught_answer(tiny_model_and_tokenizer):
    from llama2_colab import ChatApp, preset_runtime
    from llama2_colab.app import describe_models

    model, tokenizer = tiny_model_and_tokenizer
    session = ChatSession(model, tokenizer, do_sample=False, max_new_tokens=60)
    cpu = preset_runtime("cpu")
    app = ChatApp(session, cpu, model_name="tiny", models=describe_models(cpu))
    app.message.value = "which gpu do I get on free colab"
    app.send_button.click()
    app.wait(120)
    assert "T4" in session.history[-1]["content"]
    assert "T4" in app.layout.conversation.value  # what the learner reads
