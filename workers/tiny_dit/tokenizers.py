"""Small fast tokenizers built offline for the tiny DiT pipelines: no vocabulary file is downloaded.

Each keeps the special tokens and the tokenizer class of the encoder family it stands in for, so the
pipeline's own prompt code (padding, truncation, end-of-sequence, chat templates) runs unchanged. The
vocabularies hold single characters only: prompts tokenize long, which exercises truncation cheaply.
"""

from __future__ import annotations

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
