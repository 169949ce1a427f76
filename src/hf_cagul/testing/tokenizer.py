"""The in-memory word-level tokenizer of the tiny VLMs, built from a family's special tokens."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers
from tokenizers import processors as tokenizer_processors
from transformers import PreTrainedTokenizerFast

from hf_cagul.testing.vocabulary import TINY_WORDS, WORD_PATTERN

__all__ = ["CHAT_CONTENT", "TinyTokens", "build_tokenizer"]

CHAT_CONTENT = (
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ image }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
)
"""Chat-template fragment that renders one message's content: a string, or a list of text and
image items, each image as the template's ``image`` variable (the family's placeholder)."""


@dataclass(frozen=True)
class TinyTokens:
    """A family's special tokens, in the words of its real tokenizer.

    Attributes:
        pad: Padding token.
        bos: Beginning-of-sequence token, or None for a family without one (Qwen*-VL).
        eos: Token that ends an assistant turn (what ``generate`` stops at).
        unk: Token of any word outside the vocabulary.
        image: The token the processor expands into (or keeps as) the image's tokens.
        extra: More special tokens the family's prompts use (chat markers, image borders).
        words: Ordinary words the family's chat template writes beyond `TINY_WORDS` (Gemma3's
            ``model`` role).
        named: ``(attribute, token)`` pairs set on the tokenizer as extra special tokens
            (attributes the family's processor reads, e.g. Gemma3's ``boi_token``).
        prefix_bos: Whether the tokenizer prepends ``bos`` (False where the processor writes it
            itself, as PaliGemma's does after the image tokens).
    """

    pad: str
    bos: str | None
    eos: str
    unk: str
    image: str
    extra: tuple[str, ...] = ()
    words: tuple[str, ...] = ()
    named: tuple[tuple[str, str], ...] = ()
    prefix_bos: bool = True

    @property
    def specials(self) -> list[str]:
        """Every special token, in vocabulary order: pad, bos, eos, unk, image, then extra."""
        bos = [] if self.bos is None else [self.bos]
        return [self.pad, *bos, self.eos, self.unk, self.image, *self.extra]


def build_tokenizer(
    tokens: TinyTokens, chat_template: str, extra_words: Iterable[str] = ()
) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``tokens``, `TINY_WORDS` and ``extra_words``.

    The vocabulary is the special tokens (ids 0, 1, ...), then `TINY_WORDS`, the family's own
    words, then ``extra_words`` (lower-cased, duplicates dropped). Text is lower-cased and split
    into words (inner apostrophes kept, as in ``don't``), single punctuation characters and
    single digits; anything else becomes the unknown token. Decoding joins tokens with spaces.

    Args:
        tokens: The family's special tokens.
        chat_template: The tokenizer's chat template.
        extra_words: More words to give tokens of their own.

    Returns:
        A `PreTrainedTokenizerFast` with pad, eos, unk (and bos) set, padding on the right.

    Raises:
        ValueError: For an extra word that is not one word (a space, or a several-digit number).
    """
    specials = tokens.specials
    vocab: dict[str, int] = {token: index for index, token in enumerate(specials)}
    for word in (*TINY_WORDS, *tokens.words, *extra_words):
        word = word.lower()
        if not re.fullmatch(WORD_PATTERN, word) or (word.isdigit() and len(word) > 1):
            raise ValueError(
                f"{word!r} cannot be a token of the tiny tokenizer: a word is letters, digits "
                "and inner apostrophes (no spaces), or a single punctuation character."
            )
        vocab.setdefault(word, len(vocab))

    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=tokens.unk))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    if tokens.bos is not None and tokens.prefix_bos:
        backend.post_processor = tokenizer_processors.TemplateProcessing(
            single=f"{tokens.bos} $A",
            pair=f"{tokens.bos} $A {tokens.bos} $B",
            special_tokens=[(tokens.bos, vocab[tokens.bos])],
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=tokens.pad,
        bos_token=tokens.bos,
        eos_token=tokens.eos,
        unk_token=tokens.unk,
        padding_side="right",
        chat_template=chat_template,
        extra_special_tokens=dict(tokens.named),
    )
