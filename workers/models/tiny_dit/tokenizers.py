"""Small fast tokenizers built offline for the tiny DiT pipelines: no vocabulary file is downloaded.

Each keeps the special tokens and the tokenizer class of the encoder family it stands in for, so the
pipeline's own prompt code (padding, truncation, end-of-sequence, chat templates) runs unchanged. The
vocabularies hold single characters only: prompts tokenize long, which exercises truncation cheaply.
"""

from __future__ import annotations

import re
import string

# Every printable, non-space ASCII character is a token; others map to the unknown token (or bytes).
CHARACTERS = sorted(set(string.printable) - set(string.whitespace))
T5_MAX_TOKENS = 512  # FluxPipeline and StableDiffusion3Pipeline read up to 512 T5 tokens at most


def build_t5_tokenizer():
    """A T5 (Unigram, sentencepiece-style) fast tokenizer: `<pad>`=0, `</s>`=1, `<unk>`=2, as T5 numbers them."""
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(char, -3.0) for char in CHARACTERS]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=T5_MAX_TOKENS)


# Qwen's chat tokens (Qwen-Image's Qwen2.5-VL, Z-Image's and FLUX.2 klein's Qwen3), and its vision tokens so that
# the Qwen2.5-VL config can name them.
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Qwen-Image drops the first 34 hidden states: its template's system prompt is 34 tokens in Qwen's vocabulary.
# Giving its words whole-word tokens keeps that count (the tokenizer test checks it), so only the prompt's
# states reach the transformer.
QWEN_IMAGE_SYSTEM_PREFIX = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background:<|im_end|>\n<|im_start|>user\n"
)
QWEN_IMAGE_DROP_TOKENS = 34
# Qwen3's chat template, cut to what the pipelines use: user turns, the generation prompt, and the empty thinking
# block that `enable_thinking=False` adds (FLUX.2 klein); Z-Image asks for `enable_thinking=True` (no block).
QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def build_qwen_tokenizer():
    """A Qwen2 byte-level BPE fast tokenizer: every byte a token, the chat templates' words whole tokens."""
    from tokenizers import pre_tokenizers
    from transformers import Qwen2TokenizerFast

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {char: index for index, char in enumerate(sorted(byte_chars))}
    # Qwen's pre-tokenizer keeps a word's leading space, which byte-level BPE writes as "Ġ".
    template_text = re.sub(r"<\|[a-z_]+\|>", "", QWEN_IMAGE_SYSTEM_PREFIX) + "\nassistant"
    words = [word.replace(" ", "Ġ") for word in re.findall(r" ?[A-Za-z]+", template_text)]
    merges = _whole_word_merges(words, vocab)
    for token in QWEN_SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2TokenizerFast(
        vocab=vocab,
        merges=merges,
        model_max_length=32768,
        additional_special_tokens=QWEN_SPECIAL_TOKENS[1:],
        chat_template=QWEN3_CHAT_TEMPLATE,
    )
    tokenizer.add_tokens(["<think>", "</think>"])  # plain added tokens in Qwen3, not special
    return tokenizer


def build_gemma_tokenizer():
    """A Gemma fast tokenizer (Sana's Gemma2): `<pad>`=0, `<eos>`=1, `<bos>`=2, `<unk>`=3, `<mask>`=4 as Gemma
    numbers them, a `<bos>` before every prompt, spaces as "▁", and byte fallback for other characters."""
    from transformers import GemmaTokenizerFast

    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    tokens += [f"<0x{byte:02X}>" for byte in range(256)]
    tokens += ["▁", *CHARACTERS]
    vocab = {token: index for index, token in enumerate(tokens)}
    # Whole-word tokens for the instruction SanaPipeline puts before every prompt: it stays ~200 tokens long
    # (~300 in Gemma's vocabulary) instead of ~1,300 characters, which would dominate the tiny model's time.
    instruction = "\n".join(_sana_instruction())
    merges = _whole_word_merges(["▁" + word for word in re.findall(r"[A-Za-z]+", instruction)], vocab)
    return GemmaTokenizerFast(vocab=vocab, merges=merges)


def _sana_instruction() -> list[str]:
    # Read from the installed pipeline rather than copied: its words are what every Sana prompt starts with.
    import inspect

    from diffusers import SanaPipeline

    return inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default


def _whole_word_merges(words: list[str], vocab: dict[str, int]) -> list[tuple[str, str]]:
    """BPE merges (and vocabulary entries, added to `vocab`) that join each word's characters into one token."""
    merges = []
    for word in sorted(set(words)):
        for end in range(2, len(word) + 1):
            if word[:end] not in vocab:
                merges.append((word[: end - 1], word[end - 1]))
                vocab[word[:end]] = len(vocab)
    return merges
