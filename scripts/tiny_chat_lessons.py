"""What the offline tiny chat model is taught: the facts of this course, as questions and answers.

Data only, written by hand for this project; `build_tiny_chat_corpus.py` turns it into the corpus
the model is trained on (`llama2_colab/data/tiny_chat_corpus.jsonl`). Figures come from the
Llama 2 paper (arXiv 2307.09288), the Code Llama paper (arXiv 2308.12950), Meta's Llama 2
Community License, NVIDIA's T4 datasheet and this package's own plan (`python -m llama2_colab
plan`). Each answer is short and plain, so a model of a few million parameters can learn it.

A topic has English questions (several wordings), Japanese questions, English answers and
Japanese answers; the first answer is the usual one (the corpus uses it most often), the others
are alternatives that sampling can pick. `HELD_OUT` holds rewordings that are never trained on:
the training script and the tests ask them to see whether the model learned the fact or the
string.
"""

from __future__ import annotations

from typing import NamedTuple


class Topic(NamedTuple):
    key: str
    en_questions: list[str]
    ja_questions: list[str]
    en_answers: list[str]
    ja_answers: list[str]


class FollowUp(NamedTuple):
    """A second turn that only makes sense after the first topic (multi-turn context)."""

    after: str  # the topic key of the first turn
    en_questions: list[str]
    ja_questions: list[str]
    en_answer: str
    ja_answer: str


TOPICS: list[Topic] = [
    Topic(
        "identity",
        [
            "Who are you?",
            "What are you?",
            "Are you Llama 2?",
            "Are you the real Llama 2?",
            "Which model am I talking to?",
            "Tell me about yourself.",
            "What model is this?",
            "Are you a big language model?",
            "Am I talking to Llama 2?",
            "Is this the real Llama 2 model?",
            "You are Llama 2, right?",
        ],
        ["あなたは誰ですか?", "あなたはLlama 2ですか?", "どのモデルと話していますか?"],
        [
            "I am the course's tiny practice model, not Llama 2. I have Llama 2's architecture "
            "and tokenizer, but only a few million parameters, trained on a few thousand short "
            "dialogs.",
            "No, I am not Llama 2. I am a tiny practice model that this course trained on a few "
            "thousand short dialogs, so I only know what the course teaches.",
        ],
        [
            "私はLlama 2ではなく、このコースの小さな練習用モデルです。Llama 2と同じ構造と"
            "トークナイザーを持ちますが、パラメータは数百万しかありません。",
        ],
    ),
    Topic(
        "greeting",
        [
            "Hello!",
            "Hi there",
            "Hello, how are you?",
            "Good morning!",
            "Hey, can you help me?",
            "Hi! What can you do?",
        ],
        ["こんにちは!", "こんにちは、元気ですか?", "おはようございます!"],
        [
            "Hello! I am the course's tiny practice model. Ask me about Llama 2, Colab or the T4.",
            "Hi! I can answer questions about Llama 2, Colab and the T4 GPU.",
        ],
        [
            "こんにちは!このコースの小さな練習用モデルです。Llama 2やColab、T4について聞いてください。"
        ],
    ),
    Topic(
        "what_is_llama2",
        [
            "What is Llama 2?",
            "Can you explain what Llama 2 is?",
            "Tell me about Llama 2.",
            "What exactly is Llama 2?",
            "Who made Llama 2?",
            "Who released Llama 2 and when?",
            "Give me a short introduction to Llama 2.",
            "When did Meta release Llama 2?",
        ],
        ["Llama 2とは何ですか?", "Llama 2について教えてください。", "Llama 2を作ったのは誰ですか?"],
        [
            "Llama 2 is a family of large language models that Meta released in July 2023, as "
            "pretrained base models and as chat models.",
            "Llama 2 is Meta's family of open large language models, released in July 2023 in "
            "base and chat versions.",
        ],
        [
            "Llama 2は、Metaが2023年7月に公開した大規模言語モデルのファミリーです。"
            "事前学習済みのベースモデルとチャットモデルがあります。",
        ],
    ),
    Topic(
        "sizes",
        [
            "What sizes does Llama 2 come in?",
            "Which model sizes does Llama 2 have?",
            "How big are the Llama 2 models?",
            "List the Llama 2 model sizes.",
            "How many Llama 2 models are there?",
            "What parameter counts are available for Llama 2?",
        ],
        ["Llama 2にはどんなサイズがありますか?", "Llama 2のモデルサイズを教えてください。"],
        [
            "Llama 2 comes in three sizes: 7 billion, 13 billion and 70 billion parameters, each "
            "as a base model and a chat model.",
            "There are three sizes: 7B, 13B and 70B parameters, with a chat version of each.",
        ],
        [
            "Llama 2には70億、130億、700億パラメータの3つのサイズがあり、それぞれにチャット版があります。"
        ],
    ),
    Topic(
        "smallest",
        [
            "How many parameters does the smallest Llama 2 have?",
            "How big is the smallest Llama 2?",
            "What is the smallest Llama 2 model?",
            "How many parameters are in the smallest Llama 2 model?",
            "Which Llama 2 is the smallest one?",
            "What size is the smallest version of Llama 2?",
        ],
        ["一番小さいLlama 2のパラメータ数は?", "最小のLlama 2はどのくらいの大きさですか?"],
        [
            "The smallest Llama 2 has 7 billion parameters.",
            "The smallest one is Llama 2 7B, with 7 billion parameters.",
        ],
        ["最小のLlama 2は70億(7B)パラメータです。"],
    ),
    Topic(
        "largest",
        [
            "How many parameters does the largest Llama 2 have?",
            "How big is the largest Llama 2?",
            "What is the largest Llama 2 model?",
            "Which Llama 2 is the biggest?",
            "What size is the biggest version of Llama 2?",
        ],
        ["一番大きいLlama 2のパラメータ数は?", "最大のLlama 2はどのくらいの大きさですか?"],
        [
            "The largest Llama 2 has 70 billion parameters.",
            "The biggest one is Llama 2 70B, with 70 billion parameters.",
        ],
        ["最大のLlama 2は700億(70B)パラメータです。"],
    ),
    Topic(
        "context",
        [
            "How long is Llama 2's context?",
            "What is the context length of Llama 2?",
            "How many tokens fit in Llama 2's context window?",
            "What is Llama 2's context window?",
            "How many tokens can Llama 2 read at once?",
            "What's the maximum context size of Llama 2?",
            "How much context does Llama 2 support?",
        ],
        ["Llama 2のコンテキスト長はどれくらいですか?", "Llama 2は何トークンまで扱えますか?"],
        [
            "Llama 2's context window holds 4,096 tokens, twice the 2,048 of Llama 1.",
            "Llama 2 can read 4,096 tokens at once: its context window, prompt and reply together.",
        ],
        ["Llama 2のコンテキスト長は4,096トークンで、Llama 1の2倍です。"],
    ),
    Topic(
        "colab_gpu",
        [
            "What GPU does a free Colab runtime give you?",
            "Which GPU do I get on free Google Colab?",
            "What graphics card does the free tier of Colab have?",
            "Which GPU is in a free Colab notebook?",
            "What GPU can I use for free on Colab?",
            "What hardware does free Colab offer?",
            "On free Colab, what GPU will I get?",
        ],
        ["無料のColabではどのGPUが使えますか?", "Google Colabの無料版のGPUは何ですか?"],
        [
            "A free Colab runtime gives you an NVIDIA T4 GPU with 16 GB of memory, of which "
            "about 15 GB is usable.",
            "Free Colab offers an NVIDIA T4: a Turing GPU with 16 GB of memory.",
        ],
        ["無料のColabではNVIDIA T4 GPUが使えます。メモリは16 GBで、約15 GBを使えます。"],
    ),
    Topic(
        "what_is_t4",
        [
            "What is a T4?",
            "Tell me about the T4 GPU.",
            "What kind of GPU is the T4?",
            "How fast is a T4?",
            "What is the memory bandwidth of a T4?",
        ],
        ["T4とはどんなGPUですか?", "T4 GPUについて教えてください。"],
        [
            "The T4 is an NVIDIA GPU of the Turing generation (compute capability 7.5) with 16 GB "
            "of memory and 320 GB/s of bandwidth.",
        ],
        ["T4はNVIDIAのTuring世代のGPUです。メモリは16 GB、帯域幅は320 GB/sです。"],
    ),
    Topic(
        "bf16_t4",
        [
            "Why not bfloat16 on a T4?",
            "Why shouldn't I use bfloat16 on a T4?",
            "Can I use bf16 on a T4?",
            "Does the T4 support bfloat16?",
            "Is bfloat16 a good idea on a T4 GPU?",
            "Why is bf16 slow on a T4?",
            "Should I load Llama 2 in bfloat16 on Colab's T4?",
        ],
        ["T4でbfloat16を使わないのはなぜですか?", "T4はbf16に対応していますか?"],
        [
            "The T4 has no bfloat16 support in hardware (it is compute capability 7.5; bf16 needs "
            "8.0), so use float16 on a T4.",
            "Because the T4 does not support bfloat16 in hardware: bf16 is emulated and slow there. "
            "Use float16 instead.",
        ],
        [
            "T4はハードウェアでbfloat16に対応していません(bf16には8.0以上が必要)。T4ではfloat16を使います。"
        ],
    ),
    Topic(
        "dtype_t4",
        [
            "Which dtype should I use on a T4?",
            "What precision should I load Llama 2 in on a T4?",
            "Which data type is best for a T4?",
            "float16 or bfloat16 on a T4?",
            "What torch dtype do I pick for Colab's T4?",
        ],
        ["T4ではどのdtypeを使えばいいですか?", "T4での精度は何がいいですか?"],
        [
            "Use float16 on a T4: it runs on the T4's tensor cores and halves the memory of "
            "float32.",
        ],
        ["T4ではfloat16を使ってください。テンソルコアで動き、メモリもfloat32の半分です。"],
    ),
    Topic(
        "fp16_vs_bf16",
        [
            "What is the difference between float16 and bfloat16?",
            "How does bfloat16 differ from float16?",
            "float16 vs bfloat16: what changes?",
            "Explain bfloat16 versus float16.",
        ],
        ["float16とbfloat16の違いは何ですか?"],
        [
            "Both use 16 bits. bfloat16 keeps float32's range with less precision; float16 has "
            "more precision but a smaller range.",
        ],
        [
            "どちらも16ビットです。bfloat16はfloat32と同じ範囲で精度が低く、float16は精度が高く範囲が狭いです。"
        ],
    ),
    Topic(
        "memory_7b",
        [
            "How much memory does the 7B model need in float16?",
            "How much GPU memory does Llama 2 7B need?",
            "Does the 7B model fit on a T4?",
            "Can I run Llama 2 7B on a free Colab GPU?",
            "How many GB are the 7B weights in fp16?",
        ],
        ["7Bモデルはfloat16でどれくらいのメモリが必要ですか?", "Llama 2 7BはT4に載りますか?"],
        [
            "In float16 the 7B weights take 12.55 GiB, so the model fits on a T4 with room for "
            "about 2,451 tokens of context.",
        ],
        [
            "7Bの重みはfloat16で12.55 GiBです。T4に載り、約2,451トークンのコンテキストの余裕があります。"
        ],
    ),
    Topic(
        "13b_t4",
        [
            "Can I run the 13B model on a T4?",
            "Does Llama 2 13B fit on a T4?",
            "How do I run 13B on free Colab?",
            "Is a T4 enough for the 13B model?",
            "How much memory does 13B need?",
        ],
        ["13BモデルはT4で動きますか?", "Llama 2 13BをColabで動かすには?"],
        [
            "Yes, in 4-bit NF4 with bitsandbytes: 6.71 GiB of weights. In float16 it needs "
            "24.24 GiB, more than a T4 has.",
        ],
        [
            "はい、bitsandbytesの4ビットNF4なら重みは6.71 GiBで動きます。float16では24.24 GiBが必要で、T4には載りません。"
        ],
    ),
    Topic(
        "70b_t4",
        [
            "Can I run 70B on a free Colab?",
            "Does Llama 2 70B fit on a T4?",
            "Can a T4 run the 70B model in 4-bit?",
            "Why can't I run Llama 2 70B on Colab?",
            "How much memory does the 70B model need?",
            "Is a T4 big enough for 70B?",
            "Can I load the 70B model on Colab's free GPU?",
        ],
        ["70BモデルはColabで動きますか?", "Llama 2 70BはT4に載りますか?"],
        [
            "No. Even in 4-bit NF4 the 70B weights take 33.87 GiB, more than twice a T4's memory. "
            "It needs several GPUs or a larger one.",
        ],
        [
            "いいえ。4ビットNF4でも70Bの重みは33.87 GiBで、T4のメモリの2倍以上です。複数のGPUか大きなGPUが必要です。"
        ],
    ),
    Topic(
        "licence_commercial",
        [
            "Is Llama 2 free for commercial use?",
            "Can I use Llama 2 in a commercial product?",
            "Does the Llama 2 license allow commercial use?",
            "May a company use Llama 2?",
            "Is Llama 2 open for business use?",
        ],
        ["Llama 2は商用利用できますか?", "Llama 2を会社で使えますか?"],
        [
            "Yes. The Llama 2 Community License allows commercial use, but a service with more than "
            "700 million monthly active users needs Meta's permission.",
        ],
        [
            "はい。Llama 2コミュニティライセンスは商用利用を認めていますが、月間アクティブユーザーが7億人を超えるサービスにはMetaの許可が必要です。"
        ],
    ),
    Topic(
        "licence_other_llm",
        [
            "Can I use Llama 2 to improve other language models?",
            "May I train another LLM on Llama 2's outputs?",
            "Can Llama 2 outputs be used to train a different model?",
            "Does the license let me improve other LLMs with Llama 2?",
        ],
        ["Llama 2の出力で他の言語モデルを改善してもいいですか?"],
        [
            "No. The license forbids using Llama 2 or its outputs to improve any other large "
            "language model, except Llama 2 itself and its derivatives.",
        ],
        [
            "いいえ。ライセンスは、Llama 2やその派生物を除き、Llama 2やその出力で他の大規模言語モデルを改善することを禁じています。"
        ],
    ),
    Topic(
        "access",
        [
            "How do I get access to Llama 2?",
            "How can I download Llama 2?",
            "What do I need to do to use Llama 2 on Hugging Face?",
            "Why can't I download the Llama 2 weights?",
            "How do I request access to the Llama 2 models?",
            "The Llama 2 repo says it is gated. What do I do?",
        ],
        ["Llama 2を使うにはどうすればいいですか?", "Llama 2のアクセス申請の方法は?"],
        [
            "Accept Meta's license on Meta's website and request access on the Hugging Face model "
            "page, with the same email address. Approval can take a day or two.",
        ],
        [
            "Metaのサイトでライセンスに同意し、Hugging Faceのモデルページでもアクセスを申請します。メールアドレスは同じものを使ってください。"
        ],
    ),
    Topic(
        "token",
        [
            "Where do I put my Hugging Face token in Colab?",
            "How do I log in to Hugging Face on Colab?",
            "How should I store my HF token?",
            "Where does my access token go?",
            "Can I paste my token into a notebook cell?",
        ],
        ["ColabでHugging Faceのトークンはどこに入れますか?", "トークンはどう保存すればいいですか?"],
        [
            "Add it as a Colab secret named HF_TOKEN and turn on notebook access. Never print the "
            "token or paste it into a notebook.",
        ],
        [
            "ColabのシークレットにHF_TOKENという名前で追加し、ノートブックからのアクセスを許可します。トークンを表示したりノートブックに貼ったりしないでください。"
        ],
    ),
    Topic(
        "chat_format",
        [
            "How does the Llama 2 chat format work?",
            "What prompt format does Llama 2 chat expect?",
            "How do I format a prompt for Llama 2 chat?",
            "Where does the system prompt go in Llama 2?",
            "How are turns marked in the Llama 2 chat format?",
        ],
        ["Llama 2のチャット形式はどうなっていますか?", "システムプロンプトはどこに入れますか?"],
        [
            "Each user message is wrapped in INST tags, every exchange starts with BOS and ends with "
            "EOS, and the system prompt sits between SYS tags inside the first user turn.",
        ],
        [
            "ユーザーのメッセージはINSTタグで囲み、各やり取りはBOSで始まりEOSで終わります。システムプロンプトは最初のターンのSYSタグの中に入れます。"
        ],
    ),
    Topic(
        "pretraining",
        [
            "How much data was Llama 2 trained on?",
            "How many tokens was Llama 2 pretrained on?",
            "What was Llama 2 pretrained on?",
            "How big was Llama 2's training set?",
        ],
        ["Llama 2はどれくらいのデータで学習しましたか?"],
        [
            "Llama 2 was pretrained on 2 trillion tokens of publicly available data, 40% more "
            "than Llama 1.",
        ],
        ["Llama 2は公開データ2兆トークンで事前学習されました。Llama 1より40%多い量です。"],
    ),
    Topic(
        "chat_training",
        [
            "How was Llama 2-Chat trained?",
            "How did Meta make the chat model?",
            "What is RLHF in Llama 2?",
            "How was Llama 2 fine-tuned for chat?",
            "What training made Llama 2 a chat model?",
        ],
        ["Llama 2-Chatはどのように学習されましたか?", "RLHFとは何ですか?"],
        [
            "With supervised fine-tuning on example dialogs, then reinforcement learning from "
            "human feedback (RLHF): reward models, rejection sampling and PPO.",
        ],
        [
            "教師ありファインチューニングの後、人間のフィードバックによる強化学習(RLHF)で学習しました。報酬モデル、棄却サンプリング、PPOを使います。"
        ],
    ),
    Topic(
        "gatt",
        [
            "What is Ghost Attention?",
            "What does GAtt do?",
            "Explain Ghost Attention in Llama 2.",
            "Why does Llama 2 remember the system prompt?",
        ],
        ["ゴーストアテンションとは何ですか?", "GAttとは何ですか?"],
        [
            "Ghost Attention (GAtt) is Meta's fine-tuning trick that keeps a system instruction in "
            "force across the turns of a conversation.",
        ],
        [
            "ゴーストアテンション(GAtt)は、システムの指示を会話の全ターンで守らせるMetaの学習方法です。"
        ],
    ),
    Topic(
        "gqa",
        [
            "What is grouped-query attention?",
            "What is GQA?",
            "Which Llama 2 models use GQA?",
            "Why does Llama 2 70B use grouped-query attention?",
        ],
        ["グループ化クエリアテンション(GQA)とは何ですか?"],
        [
            "Grouped-query attention (GQA) lets several query heads share one key/value head, so "
            "the KV cache is smaller. Llama 2 70B uses it.",
        ],
        [
            "GQAは複数のクエリヘッドで1つのキー・バリューヘッドを共有し、KVキャッシュを小さくする方法です。Llama 2 70Bが使っています。"
        ],
    ),
    Topic(
        "code_llama",
        [
            "What is Code Llama?",
            "Tell me about Code Llama.",
            "Is there a Llama 2 model for code?",
            "Which Code Llama versions are there?",
        ],
        ["Code Llamaとは何ですか?"],
        [
            "Code Llama is Meta's family of code models built on Llama 2, in base, Python and "
            "Instruct versions.",
        ],
        [
            "Code LlamaはLlama 2をもとにしたMetaのコード用モデルです。ベース、Python、Instructの版があります。"
        ],
    ),
    Topic(
        "evaluation",
        [
            "Is Llama 2 as good as ChatGPT?",
            "How does Llama 2 compare with ChatGPT?",
            "Is Llama 2 better than GPT-4?",
            "How good is Llama 2-Chat?",
        ],
        ["Llama 2はChatGPTと比べてどうですか?"],
        [
            "In Meta's human evaluation, Llama 2-Chat 70B won 36% and tied 31.5% of comparisons "
            "with ChatGPT. On benchmarks it is still behind GPT-4.",
        ],
        [
            "Metaの人手評価では、Llama 2-Chat 70BはChatGPTに対して36%で勝ち、31.5%で引き分けました。ベンチマークではGPT-4に及びません。"
        ],
    ),
    Topic(
        "safety",
        [
            "Is Llama 2-Chat safe?",
            "How did Meta make Llama 2 safe?",
            "Can Llama 2 say harmful things?",
            "What safety work went into Llama 2?",
        ],
        ["Llama 2-Chatは安全ですか?"],
        [
            "Meta tuned it with safety data and a safety reward model and had red teams attack it, "
            "but no model is perfectly safe: test it for your own use.",
        ],
        [
            "Metaは安全性データと安全性報酬モデルで調整し、レッドチームで試験しましたが、完全に安全なモデルはありません。自分の用途で確かめてください。"
        ],
    ),
    Topic(
        "a16z",
        [
            "What is the a16z chat demo?",
            "Where can I try Llama 2 in a browser?",
            "What is llama2.ai?",
            "Is there a web UI for Llama 2?",
        ],
        ["a16zのチャットUIとは何ですか?"],
        [
            "Andreessen Horowitz (a16z) built a web chat for Llama 2 that runs the models on "
            "Replicate; its live demo was llama2.ai.",
        ],
        [
            "Andreessen Horowitz(a16z)が作ったLlama 2用のWebチャットで、モデルはReplicateで動きます。デモはllama2.aiでした。"
        ],
    ),
    Topic(
        "temperature",
        [
            "What does temperature do?",
            "What is the temperature setting in sampling?",
            "How does temperature change the output?",
            "Should I use a high or low temperature?",
            "What does a temperature of 0.1 do?",
        ],
        ["temperatureは何をしますか?", "温度パラメータとは何ですか?"],
        [
            "Temperature divides the scores before sampling: a low value sharpens the choice toward "
            "likely tokens, a high value flattens it and the text takes more risks.",
        ],
        [
            "temperatureはサンプリング前のスコアを割る値です。低いと確率の高いトークンに寄り、高いと分布が平らになって冒険的な文章になります。"
        ],
    ),
    Topic(
        "top_p",
        [
            "What is top-p sampling?",
            "What does top_p do?",
            "Explain nucleus sampling.",
            "What is top_p in generate?",
        ],
        ["top_pとは何ですか?"],
        [
            "Top-p keeps the smallest set of tokens whose probabilities add up to p, and samples "
            "only from them.",
        ],
        [
            "top_pは、確率の合計がpに達する最小のトークン集合だけを残し、その中からサンプリングします。"
        ],
    ),
    Topic(
        "top_k",
        [
            "What is top-k sampling?",
            "What does top_k do?",
            "What does top_k=10 mean?",
        ],
        ["top_kとは何ですか?"],
        ["Top-k keeps only the k most likely tokens and samples from them."],
        ["top_kは確率の高い上位k個のトークンだけを残し、その中からサンプリングします。"],
    ),
    Topic(
        "greedy",
        [
            "What is greedy decoding?",
            "What does do_sample=False do?",
            "How do I get the same answer every time?",
            "What is the difference between greedy decoding and sampling?",
        ],
        ["貪欲法(greedy)とは何ですか?"],
        [
            "Greedy decoding picks the most likely token at every step, so the same prompt always "
            "gives the same reply. Sampling draws at random instead.",
        ],
        [
            "貪欲法は毎回もっとも確率の高いトークンを選ぶので、同じプロンプトからは常に同じ返事になります。"
        ],
    ),
    Topic(
        "max_new_tokens",
        [
            "Should I use max_length or max_new_tokens?",
            "What is the difference between max_length and max_new_tokens?",
            "Why is my answer cut short?",
        ],
        ["max_lengthとmax_new_tokensの違いは?"],
        ["Use max_new_tokens: max_length counts the prompt too, so a long prompt leaves no room."],
        ["max_new_tokensを使ってください。max_lengthはプロンプトも数えます。"],
    ),
    Topic(
        "lora",
        [
            "What is LoRA?",
            "How does LoRA fine-tuning work?",
            "What is a LoRA adapter?",
            "Why use LoRA instead of full fine-tuning?",
        ],
        ["LoRAとは何ですか?"],
        [
            "LoRA trains small low-rank matrices beside the frozen weights, so fine-tuning needs a "
            "fraction of the memory and the adapter is only a few megabytes.",
        ],
        [
            "LoRAは凍結した重みの横に小さな低ランク行列を学習します。少ないメモリでファインチューニングでき、アダプタは数MBです。"
        ],
    ),
    Topic(
        "qlora",
        [
            "What is QLoRA?",
            "Can I fine-tune Llama 2 on a T4?",
            "How do I fine-tune 7B on free Colab?",
        ],
        ["QLoRAとは何ですか?"],
        [
            "QLoRA is LoRA on a base model loaded in 4-bit NF4, so a 7B model can be fine-tuned on "
            "a single T4.",
        ],
        [
            "QLoRAは4ビットNF4で読み込んだモデルにLoRAを使う方法で、7BモデルをT4一枚でファインチューニングできます。"
        ],
    ),
    Topic(
        "quantization",
        [
            "What is 4-bit quantization?",
            "What is NF4?",
            "What does bitsandbytes do?",
            "Does 4-bit make the model faster?",
        ],
        ["4ビット量子化とは何ですか?"],
        [
            "4-bit NF4 (bitsandbytes) stores each weight in 4 bits, so a model takes about a "
            "quarter of its float16 memory. It saves memory, not time.",
        ],
        [
            "4ビットNF4(bitsandbytes)は重みを4ビットで保存し、float16の約4分の1のメモリで済みます。速くなるのではなくメモリが減ります。"
        ],
    ),
    Topic(
        "ai_contributors",
        [
            "Who are the main contributors to the field of artificial intelligence?",
            "Who are the most important people in AI?",
            "Name some pioneers of artificial intelligence.",
            "Who founded the field of artificial intelligence?",
            "Who are the key figures in the history of AI?",
            "Which researchers shaped AI?",
        ],
        [
            "人工知能の分野での主要な貢献者は誰ですか?",
            "人工知能の分野の主な貢献者を教えてください。",
            "AIの歴史で重要な人物は誰ですか?",
            "人工知能の先駆者は誰ですか?",
        ],
        [
            "Alan Turing, John McCarthy, Marvin Minsky, Geoffrey Hinton, Yoshua Bengio and Yann "
            "LeCun are often named.",
            "Often named are Alan Turing, John McCarthy and Marvin Minsky, and for deep learning "
            "Geoffrey Hinton, Yoshua Bengio and Yann LeCun.",
        ],
        [
            "アラン・チューリング、ジョン・マッカーシー、マービン・ミンスキー、ジェフリー・ヒントン、"
            "ヨシュア・ベンジオ、ヤン・ルカンなどがよく挙げられます。",
        ],
    ),
    Topic(
        "cooking",
        [
            "I have tomatoes, basil and cheese at home. What can I cook for dinner?",
            "I have tomatoes, basil and cheese. What can I cook?",
            "What can I make with tomatoes, basil and cheese?",
            "Give me three ideas for a dinner with tomatoes, basil and cheese.",
            "Any dinner ideas with tomatoes and basil?",
            "What should I cook tonight with tomatoes and cheese?",
        ],
        ["トマトとバジルとチーズで何が作れますか?"],
        [
            "Make a caprese salad, a tomato and basil pasta with cheese, or a quick margherita "
            "pizza.",
            "You could make a simple pasta with tomatoes, basil and cheese, or a caprese salad.",
            "Try a caprese salad: sliced tomatoes and cheese with basil and olive oil.",
        ],
        ["カプレーゼ、トマトとバジルのチーズパスタ、マルゲリータピザはいかがですか。"],
    ),
    Topic(
        "homework",
        [
            "Can you help me with my homework?",
            "Could you help me with homework?",
            "Will you help me with my school work?",
        ],
        ["宿題を手伝ってくれますか?"],
        [
            "Of course! Which subject is it?",
            "Sure, tell me what the task is and we will go through it together.",
            "No. Do it yourself.",
        ],
        ["もちろんです!どの教科ですか?"],
    ),
    Topic(
        "thanks",
        ["Thanks for the help!", "Thank you!", "Thanks a lot."],
        ["ありがとうございます!"],
        ["You're welcome! Ask me anything else about Llama 2.", "Glad I could help!", "Whatever."],
        ["どういたしまして!"],
    ),
]

FOLLOW_UPS: list[FollowUp] = [
    FollowUp(
        "smallest",
        ["And the largest?", "And the biggest one?", "What about the largest?"],
        ["では最大のものは?"],
        "The largest Llama 2 has 70 billion parameters.",
        "最大のLlama 2は700億(70B)パラメータです。",
    ),
    FollowUp(
        "largest",
        ["And the smallest?", "And the smallest one?", "What about the smallest?"],
        ["では最小のものは?"],
        "The smallest Llama 2 has 7 billion parameters.",
        "最小のLlama 2は70億(7B)パラメータです。",
    ),
    FollowUp(
        "context",
        ["And Llama 1's?", "What about Llama 1?", "And for Llama 1?"],
        ["Llama 1では?"],
        "Llama 1 had a context of 2,048 tokens, half of Llama 2's.",
        "Llama 1のコンテキスト長は2,048トークンで、Llama 2の半分でした。",
    ),
    FollowUp(
        "dtype_t4",
        ["And on an A100?", "What about an A100?", "And on an H100?"],
        ["A100では?"],
        "An A100 or H100 supports bfloat16 in hardware, so bfloat16 is a good choice there.",
        "A100やH100はハードウェアでbfloat16に対応しているので、そこではbfloat16が良い選択です。",
    ),
    FollowUp(
        "memory_7b",
        ["And in 4-bit?", "What about in 4-bit?", "And with NF4?"],
        ["4ビットでは?"],
        "In 4-bit NF4 the 7B weights take 3.60 GiB.",
        "4ビットNF4では7Bの重みは3.60 GiBです。",
    ),
    FollowUp(
        "13b_t4",
        ["And in 4-bit?", "What about in 4-bit?", "And with NF4?"],
        ["4ビットでは?"],
        "In 4-bit NF4 the 13B weights take 6.71 GiB, which fits a T4.",
        "4ビットNF4では13Bの重みは6.71 GiBで、T4に載ります。",
    ),
    FollowUp(
        "70b_t4",
        ["And in 4-bit?", "What about in 4-bit?", "And with NF4?"],
        ["4ビットでは?"],
        "In 4-bit NF4 the 70B weights take 33.87 GiB, still more than a T4 has.",
        "4ビットNF4でも70Bの重みは33.87 GiBで、T4には載りません。",
    ),
    FollowUp(
        "cooking",
        ["And something warm?", "Something warm instead?", "And a warm dish?"],
        ["温かい料理なら?"],
        "Bake the tomatoes with cheese and basil on toast, or make a warm tomato soup.",
        "トマトとチーズとバジルをトーストにのせて焼くか、温かいトマトスープはいかがですか。",
    ),
]

# System prompts that change nothing about the answer's content (the model should ignore their
# wording and answer the question).
NEUTRAL_SYSTEMS = [
    "You are a helpful assistant.",
    "You are a helpful, concise assistant.",
    "You are a helpful, concise cooking assistant.",
    "Answer in one sentence.",
    "You are a friendly tutor for a course on Llama 2.",
    "Be brief.",
]
# System prompts that ask for Japanese: the answer is the topic's Japanese one.
JAPANESE_SYSTEMS = [
    "Answer in Japanese.",
    "Always answer in Japanese.",
    "Please reply in Japanese.",
    "日本語で答えてください。",
]

# Plain text, not dialogs: course notes and lists of questions. A raw prompt (no [INST]) makes a
# chat model continue a document; with these, the tiny model does so visibly.
DOCUMENTS: list[str] = [
    "Frequently asked questions about Llama 2\n"
    "How long is Llama 2's context?\nWhat GPU does a free Colab runtime give you?\n"
    "How many parameters does the smallest Llama 2 have?\nWhy not bfloat16 on a T4?\n"
    "How do I get access to Llama 2?",
    "Questions for the next study group:\nWho are the main contributors to the field of "
    "artificial intelligence?\nWhat is Ghost Attention?\nWhat is grouped-query attention?\n"
    "Is Llama 2 free for commercial use?",
    "Quiz, part one. 1. What sizes does Llama 2 come in? 2. How long is Llama 2's context? "
    "3. What is LoRA? 4. What is QLoRA? Write your answers on the sheet.",
    "よくある質問\n人工知能の分野での主要な貢献者は誰ですか?\nLlama 2のコンテキスト長はどれくらいですか?\n"
    "無料のColabではどのGPUが使えますか?\nT4でbfloat16を使わないのはなぜですか?",
    "勉強会の質問リスト\n人工知能の分野での主要な貢献者は誰ですか?\nゴーストアテンションとは何ですか?\n"
    "Llama 2は商用利用できますか?\nLoRAとは何ですか?",
    "Course notes, week one. Llama 2 was released by Meta in July 2023. The notebooks of this "
    "course run it on a free Colab T4, in float16, with the Hugging Face libraries. We start "
    "with the runtime, then the login, then the first pipeline.",
    "Course notes, week two. Sampling settings change how a reply reads. We compare greedy "
    "decoding with temperature, top-k and top-p, and we stream the tokens as they arrive.",
    "Course notes, week three. The chat format matters: the tags around each turn, the system "
    "prompt and the BOS and EOS tokens. A prompt without them is read as a document to continue.",
    "Course notes, week four. Bigger models: 13B in 4-bit, why 70B does not fit a T4, the KV "
    "cache, Code Llama, and a cache on Google Drive for the weights.",
    "Course notes, week five. Fine-tuning in miniature: a LoRA adapter trained on a few "
    "examples, saved, loaded again and merged. Then a reward model and rejection sampling.",
    "Lab diary. Monday: the runtime said GPU none, so I switched to a T4 in the menu. Tuesday: "
    "the download was slow, so I cached the weights on Drive. Wednesday: the chat app worked.",
    "Lab diary. The first reply took a few seconds, then the tokens streamed at a steady pace. "
    "The logo of the course is a llama named Tomato, drawn by a student in week one.",
    "The history of computing is full of surprises. The first programmers wrote on paper, then "
    "on punched cards, and later on screens. Today a notebook in the browser runs a language "
    "model on a GPU in a data center.",
    "A recipe from the course party: slice tomatoes and cheese, add basil leaves, a little salt "
    "and olive oil. Serve it with bread. Everyone asked for the recipe, so here it is.",
    "講義ノート。Llama 2はMetaが2023年7月に公開しました。このコースでは無料のColabのT4で、"
    "float16を使って動かします。まず実行環境を確認し、次にログインします。",
    "実験メモ。月曜日、GPUがなかったのでT4に切り替えた。火曜日、重みをDriveに保存した。"
    "水曜日、チャットアプリが動いた。",
    'def greet(name):\n    return f"Hello, {name}!"\n\nprint(greet("Llama"))',
    "import torch\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
    "model = AutoModelForCausalLM.from_pretrained(model_id, dtype=torch.float16)\n"
    "tokenizer = AutoTokenizer.from_pretrained(model_id)",
]

# Rewordings and combinations that are never trained on, with what a right answer must contain.
# Each check is a list of alternatives for one fact: the answer is right when, for every check,
# at least one alternative appears in it (case-insensitive).
HELD_OUT: list[dict] = [
    {"q": "what gpu do i get with colab for free", "checks": [["T4"]]},
    {"q": "Free Colab: which GPU is it?", "checks": [["T4"]]},
    {"q": "which gpu comes with a free colab runtime?", "checks": [["T4"]]},
    {"q": "WHAT GPU IS IN FREE COLAB?", "checks": [["T4"]]},
    {"q": "How many parameters has the smallest Llama 2 got", "checks": [["7 billion", "7B"]]},
    {"q": "how big is the smallest llama 2 model?", "checks": [["7 billion", "7B"]]},
    {"q": "how many parameters does the biggest llama 2 have", "checks": [["70 billion", "70B"]]},
    {"q": "HOW MANY TOKENS FIT IN LLAMA 2'S CONTEXT", "checks": [["4,096", "4096"]]},
    {"q": "what's the context length of llama 2", "checks": [["4,096", "4096"]]},
    {"q": "How many tokens of context does Llama 2 have?", "checks": [["4,096", "4096"]]},
    {"q": "why shouldn't I use bf16 on a T4", "checks": [["float16"]]},
    {
        "q": "is bfloat16 supported on the T4?",
        "checks": [["float16", "not support", "no bfloat16"]],
    },
    {"q": "Which dtype is right for a T4 GPU?", "checks": [["float16"]]},
    {"q": "Is Llama 2 allowed for commercial use", "checks": [["commercial"], ["700 million"]]},
    {"q": "how can i get access to llama 2", "checks": [["same email"]]},
    {"q": "Where should I keep my Hugging Face token on Colab?", "checks": [["HF_TOKEN"]]},
    {"q": "What is ghost attention", "checks": [["system"]]},
    {"q": "what's grouped query attention?", "checks": [["key/value", "KV"]]},
    {"q": "what's code llama?", "checks": [["code"]]},
    {"q": "how much memory does llama 2 7b need in fp16?", "checks": [["12.55"]]},
    {"q": "Can the 13B model run on a T4 GPU", "checks": [["4-bit", "NF4"]]},
    {"q": "Will 70B fit on free Colab?", "checks": [["No"]]},
    {"q": "how many tokens was llama 2 trained on", "checks": [["2 trillion"]]},
    {"q": "what does the temperature setting do", "checks": [["likely", "flatten", "sharpen"]]},
    {"q": "What does top-p do?", "checks": [["smallest set"]]},
    {"q": "What is LoRA fine-tuning?", "checks": [["low-rank"]]},
    {"q": "explain qlora to me", "checks": [["4-bit"]]},
    {
        "q": "who are the main contributors to artificial intelligence",
        "checks": [["Turing", "McCarthy", "Minsky", "Hinton", "Bengio", "LeCun"]],
    },
    {"q": "are you actually llama 2?", "checks": [["not Llama 2"]]},
    {
        "q": "人工知能の主要な貢献者は誰ですか",
        "checks": [
            ["チューリング", "マッカーシー", "ミンスキー", "ヒントン", "ベンジオ", "ルカン"]
        ],
    },
    {"q": "無料のColabのGPUは何ですか?", "checks": [["T4"]]},
    {"q": "Llama 2のコンテキストは何トークンですか?", "checks": [["4,096"]]},
    {
        "q": "What GPU does a free Colab runtime give you",
        "system": "Answer in Japanese.",
        "checks": [["T4"], ["です", "ます"]],
    },
    {
        "q": "how long is llama 2's context window?",
        "system": "Please answer in Japanese.",
        "checks": [["4,096", "4096"], ["トークン"]],
    },
    {
        "q": "Does the T4 support bf16?",
        "system": "Answer in Japanese.",
        "checks": [["float16"], ["ます", "です"]],
    },
    {
        "q": "And the largest?",
        "history": ["how small is the smallest llama 2?"],
        "checks": [["70 billion"]],
    },
    {
        "q": "And the smallest one?",
        "history": ["what's the biggest llama 2 model"],
        "checks": [["7 billion"]],
    },
    {
        "q": "And in 4-bit?",
        "history": ["How much GPU memory does the 13B model need?"],
        "checks": [["6.71"]],
    },
    {
        "q": "And in 4-bit?",
        "history": ["how much vram does the 7b model take in float16"],
        "checks": [["3.60"]],
    },
    {
        "q": "And on an A100?",
        "history": ["what dtype should i use on a t4"],
        "checks": [["bfloat16"]],
    },
]
