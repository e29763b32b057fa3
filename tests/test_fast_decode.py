"""The fast decode path gives the default path's greedy tokens, and refuses what cannot fit.

On a CPU the fast path runs the same prefill and decode steps as on a GPU, without recording a
CUDA graph; in float32 its arithmetic is the default path's, so the tokens must be identical.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from llama2_colab.bench import BenchWork
from llama2_colab.bench_harness import bench_loaded_model
from llama2_colab.chat import ChatSession
from llama2_colab.errors import UserFacingError
from llama2_colab.fast_decode import FastDecoder, fast_stream_generate
from llama2_colab.generation import stream_generate

PROMPTS = ["I have tomatoes at home", "The basil", "Hello", "What should I cook tonight?"]


def _default(model, tokenizer, ids, **kwargs):
    return stream_generate(model, tokenizer, ids, do_sample=False, **kwargs)


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("least", [0, 12])
@pytest.mark.parametrize("overlap", [False, True])
def test_fast_path_gives_the_default_greedy_tokens(
    tiny_model_and_tokenizer, prompt, least, overlap
):
    # overlap=True is the GPU's order (the next step queued before the token is read), run on
    # the CPU: the tokens must not change.
    model, tokenizer = tiny_model_and_tokenizer
    ids = torch.tensor([tokenizer(prompt).input_ids])
    text, want, _ = _default(model, tokenizer, ids, max_new_tokens=12, min_new_tokens=least)
    pieces: list[str] = []
    decoder = FastDecoder(model, max_cache_len=64, overlap=overlap)
    fast_text, got, stats = fast_stream_generate(
        model,
        tokenizer,
        ids,
        on_text=pieces.append,
        max_new_tokens=12,
        min_new_tokens=least,
        decoder=decoder,
    )
    assert got == want
    assert fast_text == text == "".join(pieces)
    assert stats.new_tokens == len(want) and stats.prompt_tokens == ids.shape[1]


def test_one_decoder_serves_many_replies(tiny_model_and_tokenizer):
    # The chat reuses one decoder (one cache, one recorded graph on a GPU) for every reply;
    # a reply must not see the previous reply's cache.
    model, tokenizer = tiny_model_and_tokenizer
    decoder = FastDecoder(model, max_cache_len=64, overlap=True)  # one step past EOS runs
    for prompt in PROMPTS + PROMPTS[:1]:
        ids = torch.tensor([tokenizer(prompt).input_ids])
        _, want, _ = _default(model, tokenizer, ids, max_new_tokens=10)
        _, got, _ = fast_stream_generate(model, tokenizer, ids, max_new_tokens=10, decoder=decoder)
        assert got == want, prompt


@pytest.fixture
def eos_loving_model(tiny_dir):
    """The tiny model with EOS scoring highest at every step, whatever its random weights say."""
    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()

    def eos_wins(module, inputs, logits):
        return logits.index_fill(-1, torch.tensor([2], device=logits.device), 1e4)

    model.lm_head.register_forward_hook(eos_wins)
    return model


@pytest.mark.parametrize("least", [0, 1, 5])
@pytest.mark.parametrize("overlap", [False, True])
def test_eos_ends_the_reply_after_min_new_tokens_as_generate_does(
    eos_loving_model, tiny_model_and_tokenizer, least, overlap
):
    _, tokenizer = tiny_model_and_tokenizer
    ids = torch.tensor([tokenizer("Hello").input_ids])
    _, want, _ = _default(eos_loving_model, tokenizer, ids, max_new_tokens=10, min_new_tokens=least)
    decoder = FastDecoder(eos_loving_model, max_cache_len=16, overlap=overlap)
    _, got, _ = fast_stream_generate(
        eos_loving_model, tokenizer, ids, max_new_tokens=10, min_new_tokens=least, decoder=decoder
    )
    assert got == want
    # It stopped at EOS (before max_new_tokens), and not before min_new_tokens.
    assert got[-1] == tokenizer.eos_token_id and least < len(got) < 10
    assert tokenizer.eos_token_id not in got[:-1]


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, None])
def test_max_new_tokens_must_be_a_whole_number_of_at_least_one(tiny_model_and_tokenizer, bad):
    model, tokenizer = tiny_model_and_tokenizer
    ids = torch.tensor([tokenizer("Hello").input_ids])
    with pytest.raises(ValueError, match="max_new_tokens"):
        fast_stream_generate(model, tokenizer, ids, max_new_tokens=bad)


def test_a_prompt_that_fills_the_cache_is_refused_with_the_sizes(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    ids = torch.tensor([tokenizer("What should I cook tonight?").input_ids])
    n = ids.shape[1]
    decoder = FastDecoder(model, max_cache_len=n + 4)
    _, got, _ = fast_stream_generate(
        model, tokenizer, ids, max_new_tokens=4, min_new_tokens=4, decoder=decoder
    )
    assert len(got) == 4  # exactly full is fine
    with pytest.raises(UserFacingError, match=rf"\({n} tokens\).*\(5\).*{n + 4} tokens"):
        fast_stream_generate(model, tokenizer, ids, max_new_tokens=5, decoder=decoder)


def test_a_request_past_the_models_positions_is_refused(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    ids = torch.tensor([tokenizer("Hello").input_ids])
    with pytest.raises(ValueError, match="4096 positions"):
        fast_stream_generate(model, tokenizer, ids, max_new_tokens=4096)


@pytest.mark.parametrize(
    ("ids", "error", "message"),
    [
        (torch.tensor([[1.0, 15043.0]]), TypeError, "integer token ids"),
        (torch.tensor([1, 15043]), ValueError, "1 x N"),
        (torch.tensor([[1, 32000]]), ValueError, "the id 32000.*from 0 to 31999"),
        (torch.tensor([[1, -5]]), ValueError, "the id -5"),
    ],
)
@pytest.mark.parametrize("path", ["default", "fast"])
def test_prompt_ids_the_model_cannot_take_are_refused_on_both_paths(
    tiny_model_and_tokenizer, ids, error, message, path
):
    model, tokenizer = tiny_model_and_tokenizer
    generate = _default if path == "default" else fast_stream_generate
    with pytest.raises(error, match=message):
        generate(model, tokenizer, ids, max_new_tokens=4)


def test_no_graph_is_recorded_for_a_model_on_the_cpu(tiny_model_and_tokenizer):
    model, _ = tiny_model_and_tokenizer  # on the CPU, whether or not this machine has a GPU
    decoder = FastDecoder(model, max_cache_len=16, use_graph=True)
    assert decoder.use_graph is False and decoder.graph is None


def test_the_bench_times_the_graph_path_on_the_same_work(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    work = BenchWork(prompt_tokens=32, new_tokens=6, repeats=2, warmup=0)
    result = bench_loaded_model(model, tokenizer, work, fast=("graph",))
    graph = result["fast_paths"]["graph"]
    assert "error" not in graph, graph
    assert result["generated_tokens"] == {"package": 6, "baseline": 6, "graph": 6}
    assert graph["same_output_as_default"] is True
    assert graph["cuda_graph"] is False and graph["graph_error"] is None  # a CPU model
    lo, hi = graph["paired_ratio_to_pipeline_iqr"]
    assert lo <= graph["paired_ratio_to_pipeline"] <= hi


def test_the_graph_path_past_the_plans_cache_is_reported_not_run(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    work = BenchWork(prompt_tokens=32, new_tokens=6, repeats=1, warmup=0)
    result = bench_loaded_model(model, tokenizer, work, fast=("graph",), max_cache_len=16)
    assert (
        "exceed the static cache the plan allows (16 tokens)"
        in result["fast_paths"]["graph"]["error"]
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="records a CUDA graph: needs a GPU")
def test_on_a_gpu_the_recorded_graph_replays_the_eager_steps(tiny_dir, tiny_model_and_tokenizer):
    # Runs in `scripts/gpu_check.sh --suite`. The graph replays the very kernels the eager
    # steps launch, so the tokens must be identical, and recording must have succeeded.
    _, tokenizer = tiny_model_and_tokenizer
    model = AutoModelForCausalLM.from_pretrained(tiny_dir).to("cuda").eval()
    graphed = FastDecoder(model, max_cache_len=64)
    eager = FastDecoder(model, max_cache_len=64, use_graph=False)
    for prompt in PROMPTS:
        ids = torch.tensor([tokenizer(prompt).input_ids])
        kwargs = {"max_new_tokens": 12, "min_new_tokens": 12}
        _, want, _ = fast_stream_generate(model, tokenizer, ids, decoder=eager, **kwargs)
        _, got, _ = fast_stream_generate(model, tokenizer, ids, decoder=graphed, **kwargs)
        assert got == want, prompt
    assert graphed.graph is not None, graphed.graph_error


def test_a_greedy_chat_on_the_fast_path_says_what_the_default_path_says(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    turns = ["Hello", "What should I cook tonight?", "And for dessert?"]
    sessions = [
        ChatSession(
            model,
            tokenizer,
            system_prompt="Be brief.",
            max_new_tokens=12,
            do_sample=False,
            fast=fast,
        )
        for fast in (False, True)
    ]
    for text in turns:
        pieces: list[str] = []
        want = sessions[0].send(text)
        got = sessions[1].send(text, on_text=pieces.append)
        assert got == want and "".join(pieces).strip() == got
    assert sessions[1].history == sessions[0].history
    assert sessions[1]._decoder is not None  # the fast path really ran


def test_stop_ends_a_fast_reply_and_keeps_it(tiny_model_and_tokenizer):
    from test_chat import assert_stop_keeps_the_partial_reply

    model, tokenizer = tiny_model_and_tokenizer
    session = ChatSession(model, tokenizer, max_new_tokens=40, do_sample=False, fast=True)
    assert_stop_keeps_the_partial_reply(session)


@pytest.mark.parametrize("overlap", [False, True])
def test_a_stop_keeps_exactly_the_tokens_streamed_so_far(tiny_model_and_tokenizer, overlap):
    # With overlap the next step is already queued when Stop is seen: its token must not leak
    # into the reply, and the next reply on the same decoder must start clean.
    model, tokenizer = tiny_model_and_tokenizer
    ids = torch.tensor([tokenizer("Tell me a long story").input_ids])
    _, want, _ = _default(model, tokenizer, ids, max_new_tokens=20, min_new_tokens=20)
    decoder = FastDecoder(model, max_cache_len=64, overlap=overlap)
    seen: list[str] = []
    _, got, stats = fast_stream_generate(
        model,
        tokenizer,
        ids,
        on_text=seen.append,
        max_new_tokens=20,
        min_new_tokens=20,
        decoder=decoder,
        should_stop=lambda: len(seen) >= 3,
    )
    assert 3 <= len(got) < 20 and got == want[: len(got)] and stats.new_tokens == len(got)
    _, again, _ = fast_stream_generate(
        model, tokenizer, ids, max_new_tokens=20, min_new_tokens=20, decoder=decoder
    )
    assert again == want


@pytest.mark.skipif(not torch.cuda.is_available(), reason="records a CUDA graph: needs a GPU")
def test_on_a_gpu_a_step_that_cannot_be_recorded_stays_eager_and_says_why(
    tiny_dir, tiny_model_and_tokenizer
):
    # Runs in `scripts/gpu_check.sh --suite`. A host sync inside the step (as LLM.int8's
    # outlier check does) breaks the capture: the decoder must fall back with the first error,
    # give the caller's stream back, and still produce the eager tokens.
    _, tokenizer = tiny_model_and_tokenizer
    model = AutoModelForCausalLM.from_pretrained(tiny_dir).to("cuda").eval()
    model.model.norm.register_forward_hook(lambda module, inputs, out: bool(out.sum() > 0))
    stream = torch.cuda.current_stream()
    ids = torch.tensor([tokenizer("Hello").input_ids])
    kwargs = {"max_new_tokens": 8, "min_new_tokens": 8}
    eager = FastDecoder(model, max_cache_len=32, use_graph=False)
    _, want, _ = fast_stream_generate(model, tokenizer, ids, decoder=eager, **kwargs)
    decoder = FastDecoder(model, max_cache_len=32)
    _, got, _ = fast_stream_generate(model, tokenizer, ids, decoder=decoder, **kwargs)
    assert got == want
    assert decoder.graph is None and not decoder.use_graph
    assert decoder.graph_error and "previous error" not in decoder.graph_error
    assert torch.cuda.current_stream() == stream


def test_int8_weights_give_the_default_tokens_on_the_fast_path(tiny_model_and_tokenizer):
    # LLM.int8 layers (bitsandbytes) on the fast path: on a GPU no graph is recorded for them
    # (their outlier check syncs the host), and the tokens are the default path's either way.
    pytest.importorskip("bitsandbytes")
    from llama2_colab.bench_harness import build_random_model

    tiny, tokenizer = tiny_model_and_tokenizer
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build_random_model("tiny", device, "float32", quantization="int8", config=tiny.config)
    ids = torch.tensor([tokenizer("I have tomatoes at home").input_ids])
    _, want, _ = _default(model, tokenizer, ids, max_new_tokens=10, min_new_tokens=10)
    decoder = FastDecoder(model, max_cache_len=32)
    _, got, _ = fast_stream_generate(
        model, tokenizer, ids, max_new_tokens=10, min_new_tokens=10, decoder=decoder
    )
    assert got == want
    assert decoder.graph is None
    if device == "cuda":
        assert "LLM.int8" in decoder.graph_error
