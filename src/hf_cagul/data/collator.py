"""Raw rows of the data contract -> VLM training batches, one collator for every trainer.

Each row becomes ``prompt + target + eos``: the prompt is the question about the image (in the
processor's chat template), the target what the model should answer. A `TargetPolicy` says
what that target is and what else a batch carries: `ForgetRetainDataCollator` is the collator,
`CagulDataCollator` (forget targets on forget rows, query mask) and `UnlearningDataCollator`
(true answers, optional refusal batch) are it with their trainers' policies. Labels cover the
target and eos only; the query mask marks the prompt's text tokens, whose attention ranks the
visual tokens, exactly as at inference time. Forget rows are flagged ``forget`` in every batch.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from PIL import Image

from hf_cagul.data.schema import (
    ANSWER_COLUMN,
    DEFAULT_REFUSALS,
    FORGET_SPLIT,
    FORGET_TARGET_COLUMN,
    IMAGE_COLUMN,
    QUESTION_COLUMN,
    REQUIRED_COLUMNS,
    SPLIT_COLUMN,
    SPLITS,
    load_image,
)

__all__ = [
    "CAGUL_TARGETS",
    "FORGET_FLAG",
    "IGNORE_INDEX",
    "REFUSAL_BATCH",
    "SUPERVISED_TARGETS",
    "TRUE_ANSWER_BATCH",
    "UNLEARNING_TARGETS",
    "CagulDataCollator",
    "ForgetRetainDataCollator",
    "TargetPolicy",
    "UnlearningDataCollator",
]

IGNORE_INDEX = -100
"""Label of positions that carry no loss (prompt, image and padding tokens)."""

FORGET_FLAG = "forget"
"""Batch key of the ``(batch,)`` bool flags of forget rows, in every trainer's batches."""

REFUSAL_BATCH = "refusal"
"""Batch key of the nested batch of the forget rows with their refusals as targets."""

TRUE_ANSWER_BATCH = "true_answer"
"""Batch key of the nested batch of the forget rows with their true answers as targets."""

REPLACED_FLAG = "replaced"
"""Key, in the `TRUE_ANSWER_BATCH` batch, of its ``(rows,)`` bool flags: True for the rows whose
forget target replaces the true answer (a private fact), False where the forget target is the
true answer itself (a visual question, whose answer must stay)."""

# Stands in for an assistant answer when rendering the chat template once, to learn what the
# template writes between the generation prompt and the answer (e.g. a space after "ASSISTANT:").
_ANSWER_SENTINEL = "CAGULANSWERSENTINEL"


@dataclass(frozen=True)
class TargetPolicy:
    """What each row of a batch is trained toward, and what the batch carries besides.

    Args:
        forget_targets: Forget rows are trained toward their forget target (their
            ``forget_target`` when non-empty, else a refusal), as CAGUL trains them; when False,
            every row's target is its ``answer`` (supervised fine-tuning, and the baselines,
            which push the true answer down on forget rows).
        flag_forget: Add ``forget`` (`FORGET_FLAG`): ``(batch,)`` bool, True for forget rows.
            Leave it out for a plain `transformers.Trainer`, which passes every key to the
            model.
        query_mask: Add ``query_mask``: the prompt's text tokens, whose attention ranks the
            visual tokens (CAGUL's adapter reads it).
        refusal_batch: Add ``refusal`` (`REFUSAL_BATCH`): the forget rows alone, with the same
            (augmented) photos and their forget target as the target, as a nested batch with
            its own ``labels`` (IdkPO's preferred answers). Absent from a batch without forget
            rows.
        true_answer_batch: Add ``true_answer`` (`TRUE_ANSWER_BATCH`): the forget rows alone,
            same (augmented) photos, with their true ``answer`` as the target, as a nested batch
            with its own ``labels`` (and ``query_mask`` when the policy adds one), and
            `REPLACED_FLAG`: which of those answers their forget target replaces. The true
            answers of those rows are what `CagulTrainer`'s depth term pushes down (a visual
            answer is a forget row's target too: pushing it down would fight the forget term).
            Absent from a batch without forget rows.
    """

    forget_targets: bool = False
    flag_forget: bool = True
    query_mask: bool = False
    refusal_batch: bool = False
    true_answer_batch: bool = False


CAGUL_TARGETS = TargetPolicy(forget_targets=True, query_mask=True)
"""`CagulTrainer`'s batches: forget targets on forget rows, the query mask, the forget flags."""

UNLEARNING_TARGETS = TargetPolicy()
"""The fine-tuning baselines' batches: every target the true answer, forget rows flagged."""

SUPERVISED_TARGETS = TargetPolicy(flag_forget=False)
"""Plain supervised fine-tuning with `transformers.Trainer`: the true answers, nothing else."""


@dataclass
class ForgetRetainDataCollator:
    """Collate raw dataset rows (see `hf_cagul.data.schema`) into a VLM training batch.

    Use it with ``remove_unused_columns=False`` (or a trainer of `hf_cagul`, which keeps the raw
    columns): it needs each row's ``image``, ``question``, ``answer``, ``split`` and, when
    present, ``forget_target``.

    **Prompt.** With a chat template (``processor.chat_template`` is set), the prompt is
    ``processor.apply_chat_template([{"role": "user", "content": [{"type": "image"},
    {"type": "text", "text": question}]}], add_generation_prompt=True, tokenize=False)`` and the
    texts are tokenised with ``add_special_tokens=False`` (the template writes bos itself, as in
    transformers' own ``apply_chat_template(tokenize=True)``). Without one, the prompt is
    ``f"{processor.image_token} {question}"``, tokenised with the tokenizer's special tokens, and
    the target follows after a space.

    **Target**, as ``policy`` says: the row's ``answer``, or on forget rows under
    ``policy.forget_targets`` the row's forget target: its ``forget_target`` when non-empty, else
    one of ``refusals``, picked by a SHA-256 hash of ``(seed, question, answer)``: the same row
    gets the same refusal in every epoch, worker and process. The text between the generation
    prompt and an assistant answer in the chat template (e.g. the space in
    ``"ASSISTANT: answer"``) is put before the target, and the tokenizer's eos token after it,
    as the template ends an assistant turn.

    **Output** of ``collator(rows)``: every tensor the processor returns (``input_ids``,
    ``attention_mask``, ``pixel_values``; ``image_grid_thw`` and ``mm_token_type_ids`` for
    Qwen2-VL; ``pixel_attention_mask`` for Idefics3...), right-padded, plus

    * ``labels`` ``(batch, seq)``: the target and eos token ids, ``-100`` elsewhere;
    * with ``policy.query_mask``, ``query_mask`` ``(batch, seq)`` bool: prompt tokens that are
      neither image tokens nor padding (the tokens whose attention ranks the visual tokens).
      Image tokens are the processor's ``image_token`` and, where the processor expands that
      placeholder into another token (Gemma3), the tokenizer's ``image_token``;
    * with ``policy.flag_forget``, ``forget`` ``(batch,)`` bool: True for forget rows;
    * with ``policy.refusal_batch``, ``refusal``: the forget rows' batch toward their forget
      targets; with ``policy.true_answer_batch``, ``true_answer``: the forget rows' batch toward
      their true answers (see `TargetPolicy`).

    For a prefix LM, whose processor takes a ``suffix`` (PaliGemma), ``token_type_ids`` marks the
    target as the causal suffix (1) and the prompt as the bidirectional prefix (0), as the
    processor's own ``suffix`` argument would.

    Nothing is ever truncated: with ``max_length`` set, a longer sample raises (cutting would
    drop image tokens, which breaks the model, or the target, which leaves nothing to learn).

    Args:
        processor: The VLM's processor (with a ``tokenizer`` and an ``image_token``).
        max_length: Longest accepted sample, in tokens (image tokens included); None: no limit.
        refusals: Forget targets for forget rows without their own ``forget_target``.
        seed: Seed of the refusal choice.
        augment: Applied to each training photo once per batch (e.g. `PhotoAugmentation`;
            a row's refusal encoding shares it); never to the prompts built for generation.
        policy: What each row is trained toward and what the batch carries (keyword only;
            default: `SUPERVISED_TARGETS`).

    Raises:
        ValueError: At construction, for an empty ``refusals``, a non-positive ``max_length``,
            or a processor whose tokenizer has no eos token or whose image token is unknown;
            when called, for a row that lacks a column or has a bad value, an image that cannot
            be opened, or a sample longer than ``max_length``.
    """

    processor: Any
    max_length: int | None = None
    refusals: Sequence[str] = DEFAULT_REFUSALS
    seed: int = 0
    augment: Callable[[Image.Image], Image.Image] | None = None
    policy: TargetPolicy = field(default=SUPERVISED_TARGETS, kw_only=True)
    _answer_separator: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.refusals = tuple(self.refusals)
        if not self.refusals or not all(
            isinstance(refusal, str) and refusal.strip() for refusal in self.refusals
        ):
            raise ValueError(f"refusals must be non-empty strings, got {self.refusals!r}.")
        if self.max_length is not None and self.max_length <= 0:
            raise ValueError(f"max_length must be positive or None, got {self.max_length}.")
        tokenizer = getattr(self.processor, "tokenizer", None)
        if tokenizer is None:
            raise ValueError(
                f"{type(self.processor).__name__} has no `tokenizer`: pass the VLM's processor "
                "(e.g. `AutoProcessor.from_pretrained(model_id)`), not a tokenizer alone."
            )
        if not isinstance(tokenizer.eos_token, str):
            raise ValueError(
                "The processor's tokenizer has no eos token, so targets cannot end with one. "
                "Set `processor.tokenizer.eos_token`."
            )
        image_token = getattr(self.processor, "image_token", None)
        image_token_id = getattr(self.processor, "image_token_id", None)
        if image_token_id is None and isinstance(image_token, str):
            image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        if image_token is None and isinstance(image_token_id, int):
            image_token = tokenizer.convert_ids_to_tokens(image_token_id)
        if not isinstance(image_token_id, int) or not isinstance(image_token, str):
            raise ValueError(
                f"Cannot tell the image token of {type(self.processor).__name__}: it has neither "
                "`image_token_id` nor an `image_token` the tokenizer knows. Set "
                "`processor.image_token` to the token the processor expands into visual tokens."
            )
        self.image_token: str = image_token
        self.image_token_id: int = image_token_id
        # Some processors (Gemma3) name a placeholder (begin-of-image) as their image token and
        # expand it into the tokenizer's own image token: neither is a text token.
        expanded = getattr(tokenizer, "image_token_id", None)
        self.visual_token_ids: tuple[int, ...] = (image_token_id,) + (
            (expanded,) if isinstance(expanded, int) and expanded != image_token_id else ()
        )

    # ------------------------------------------------------------------ texts

    @property
    def _prefix_lm(self) -> bool:
        """Whether the processor splits prefix and ``suffix`` (a prefix LM such as PaliGemma)."""
        try:
            return "suffix" in inspect.signature(self.processor.__call__).parameters
        except (TypeError, ValueError):
            return False

    @property
    def tokenizer(self) -> Any:
        """The processor's tokenizer."""
        return self.processor.tokenizer

    @property
    def uses_chat_template(self) -> bool:
        """Whether prompts are rendered with the processor's chat template."""
        return getattr(self.processor, "chat_template", None) is not None

    def prompt_text(self, question: str) -> str:
        """The prompt for ``question`` about one image, up to where the answer starts."""
        if self.uses_chat_template:
            prompt = self.processor.apply_chat_template(
                self._messages(question), add_generation_prompt=True, tokenize=False
            )
            return prompt if isinstance(prompt, str) else prompt[0]
        return f"{self.image_token} {question}"

    def target_text(self, feature: dict[str, Any]) -> str:
        """What the model should answer to one row (without separator and eos).

        The row's ``answer``; on a forget row under ``policy.forget_targets``, its
        `forget_target_text`.
        """
        if self.policy.forget_targets and feature[SPLIT_COLUMN] == FORGET_SPLIT:
            return self.forget_target_text(feature)
        return _true_answer(feature)

    def forget_target_text(self, feature: dict[str, Any]) -> str:
        """What a forget row should be answered instead: its ``forget_target`` when non-empty,
        else a refusal chosen deterministically from ``(seed, question, answer)``."""
        forget_target = feature.get(FORGET_TARGET_COLUMN)
        if isinstance(forget_target, str) and forget_target.strip():
            return forget_target
        key = f"{self.seed}\x00{feature[QUESTION_COLUMN]}\x00{feature[ANSWER_COLUMN]}"
        digest = hashlib.sha256(key.encode("utf-8")).digest()
        return self.refusals[int.from_bytes(digest[:8], "big") % len(self.refusals)]

    @staticmethod
    def _messages(question: str) -> list[dict[str, Any]]:
        return [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
        ]

    def answer_separator(self) -> str:
        """What goes between the prompt and the target (computed once).

        With a chat template: what the template writes between the generation prompt and an
        assistant answer ("" when it cannot tell). Without one: a space.
        """
        if self._answer_separator is None:
            self._answer_separator = self._find_answer_separator()
        return self._answer_separator

    def _find_answer_separator(self) -> str:
        if not self.uses_chat_template:
            return " "
        question = "what is this ?"
        prompt = self.prompt_text(question)
        conversation = [
            *self._messages(question),
            {"role": "assistant", "content": [{"type": "text", "text": _ANSWER_SENTINEL}]},
        ]
        try:
            rendered = self.processor.apply_chat_template(
                conversation, add_generation_prompt=False, tokenize=False
            )
        except Exception:  # a template without assistant turns: no separator to learn
            return ""
        rendered = rendered if isinstance(rendered, str) else rendered[0]
        if not rendered.startswith(prompt) or _ANSWER_SENTINEL not in rendered[len(prompt) :]:
            return ""
        rest = rendered[len(prompt) :]
        return rest[: rest.index(_ANSWER_SENTINEL)]

    # ------------------------------------------------------------------ batch

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        """Collate raw rows into model inputs plus ``labels`` and what ``policy`` adds."""
        if not features:
            raise ValueError(f"{type(self).__name__} got an empty batch.")
        for index, feature in enumerate(features):
            self._check_feature(index, feature)
        images = []
        for feature in features:
            try:
                image = load_image(feature[IMAGE_COLUMN])
                images.append(image if self.augment is None else self.augment(image))
            except ValueError as err:
                raise ValueError(f"Row with question {feature[QUESTION_COLUMN]!r}: {err}") from err
        output = self._collate(features, images, [self.target_text(row) for row in features])
        forget = [feature[SPLIT_COLUMN] == FORGET_SPLIT for feature in features]
        if self.policy.flag_forget:
            output[FORGET_FLAG] = torch.tensor(forget)
        rows = [index for index, is_forget in enumerate(forget) if is_forget]
        nested: tuple[tuple[str, bool, Callable[[dict[str, Any]], str]], ...] = (
            (REFUSAL_BATCH, self.policy.refusal_batch, self.forget_target_text),
            (TRUE_ANSWER_BATCH, self.policy.true_answer_batch, _true_answer),
        )
        for key, wanted, target_of in nested:
            if wanted and rows:
                # The same photo objects as the main batch: one augmentation per photo.
                output[key] = self._collate(
                    [features[index] for index in rows],
                    [images[index] for index in rows],
                    [target_of(features[index]) for index in rows],
                )
        if TRUE_ANSWER_BATCH in output:
            output[TRUE_ANSWER_BATCH][REPLACED_FLAG] = torch.tensor(
                [
                    self.forget_target_text(features[index]) != _true_answer(features[index])
                    for index in rows
                ]
            )
        return output

    def _collate(
        self, features: list[dict[str, Any]], images: list[Image.Image], targets: list[str]
    ) -> dict[str, Any]:
        """The processor's tensors, ``labels`` and (``policy.query_mask``) the query mask of
        ``features`` with their ``images``, answered by ``targets``."""
        separator = self.answer_separator()
        prompts = [self.prompt_text(feature[QUESTION_COLUMN]) for feature in features]
        for feature, target in zip(features, targets, strict=True):
            if self.image_token in target:
                raise ValueError(
                    f"The target of the row with question {feature[QUESTION_COLUMN]!r} contains "
                    f"the image token {self.image_token!r}; remove it from the answer."
                )
        eos = self.tokenizer.eos_token
        full_texts = [
            f"{prompt}{separator}{target}{eos}"
            for prompt, target in zip(prompts, targets, strict=True)
        ]
        text_kwargs = {"add_special_tokens": not self.uses_chat_template}

        batch = self._process(images, full_texts, text_kwargs)
        input_ids: torch.Tensor = batch["input_ids"]
        attention_mask: torch.Tensor = batch["attention_mask"]
        lengths = attention_mask.sum(dim=1).tolist()
        prompt_lengths = self._prompt_lengths_from_text(
            prompts, full_texts, input_ids, lengths, text_kwargs
        )
        if prompt_lengths is None:
            prompt_lengths = self._prompt_lengths_from_processor(
                images, prompts, input_ids, lengths, text_kwargs
            )
        for index, feature in enumerate(features):
            self._check_sample(
                feature, input_ids[index], int(lengths[index]), prompt_lengths[index]
            )

        positions = torch.arange(input_ids.shape[1]).unsqueeze(0)
        starts = torch.tensor(prompt_lengths).unsqueeze(1)
        ends = torch.tensor(lengths).unsqueeze(1)
        is_target = (positions >= starts) & (positions < ends)
        labels = torch.where(is_target, input_ids, torch.full_like(input_ids, IGNORE_INDEX))

        output: dict[str, Any] = dict(batch)
        if "token_type_ids" in output and self._prefix_lm:
            # A prefix LM (PaliGemma) attends bidirectionally within the prefix (type 0) and
            # causally in the suffix (type 1). The processor marks all of our text as prefix,
            # which would let the prompt see the answer: mark the target as the suffix, exactly
            # as the processor's own ``suffix`` argument does.
            output["token_type_ids"] = is_target.to(output["token_type_ids"].dtype)
        output["labels"] = labels
        if self.policy.query_mask:
            output["query_mask"] = (
                (positions < starts)
                & attention_mask.bool()
                & ~torch.isin(input_ids, torch.tensor(self.visual_token_ids))
            )
        return output

    def _check_feature(self, index: int, feature: dict[str, Any]) -> None:
        missing = [column for column in REQUIRED_COLUMNS if column not in feature]
        if missing:
            raise ValueError(
                f"Batch row {index} lacks column(s) {', '.join(map(repr, missing))}; it has "
                f"{', '.join(map(repr, feature)) or 'none'}. With transformers' Trainer, keep the "
                "raw columns: `remove_unused_columns=False` (hf_cagul's trainers do this)."
            )
        for column in (QUESTION_COLUMN, ANSWER_COLUMN):
            value = feature[column]
            if not isinstance(value, str) or not value.strip():
                raise ValueError(
                    f"Batch row {index}: {column!r} must be a non-empty string, got {value!r}. "
                    "Run `hf_cagul.data.validate_dataset(dataset)` to find every bad row."
                )
        if feature[SPLIT_COLUMN] not in SPLITS:
            raise ValueError(
                f"Batch row {index} (question {feature[QUESTION_COLUMN]!r}): split must be one of "
                f"{', '.join(map(repr, SPLITS))}, got {feature[SPLIT_COLUMN]!r}."
            )
        if self.image_token in feature[QUESTION_COLUMN]:
            raise ValueError(
                f"Batch row {index}: the question {feature[QUESTION_COLUMN]!r} contains the image "
                f"token {self.image_token!r}; the collator places the image itself."
            )

    def prompts(self, images: Sequence[Any], questions: Sequence[str]) -> dict[str, torch.Tensor]:
        """Generation inputs for ``questions`` about ``images``: the prompts exactly as training
        builds them (same template, same special tokens), padded on the left for ``generate``."""
        return self._process(
            [load_image(image) for image in images],
            [self.prompt_text(question) for question in questions],
            {"add_special_tokens": not self.uses_chat_template},
            padding_side="left",
        )

    def _process(
        self,
        images: list[Any],
        texts: list[str],
        text_kwargs: dict[str, Any],
        padding_side: str = "right",
    ) -> dict[str, Any]:
        """One processor call for the batch, padded on the right unless told otherwise (the
        labels assume right padding)."""
        tokenizer = self.tokenizer
        original_side = tokenizer.padding_side
        tokenizer.padding_side = padding_side
        try:
            return dict(
                self.processor(
                    images=[[image] for image in images],
                    text=texts,
                    return_tensors="pt",
                    padding=True,
                    **text_kwargs,
                )
            )
        finally:
            tokenizer.padding_side = original_side

    def _prompt_lengths_from_text(
        self,
        prompts: list[str],
        full_texts: list[str],
        input_ids: torch.Tensor,
        lengths: list[int],
        text_kwargs: dict[str, Any],
    ) -> list[int] | None:
        """Prompt lengths (image tokens included) without processing the images again.

        The processor expands the image placeholder, which lies in the prompt, so the target's
        tokens are the same with and without the expansion: count them on the unexpanded text
        and subtract. Returns None if the processor's tokens do not end with them (then the
        prompts must be processed with their images).
        """
        tokenize = self.tokenizer
        prompt_ids = tokenize(prompts, **text_kwargs)["input_ids"]
        text_ids = tokenize(full_texts, **text_kwargs)["input_ids"]
        prompt_lengths = []
        for index, (prompt, full) in enumerate(zip(prompt_ids, text_ids, strict=True)):
            shared = _common_prefix(prompt, full)
            target = list(full[shared:])
            length = lengths[index]
            if not target or len(target) > length:
                return None
            if input_ids[index, length - len(target) : length].tolist() != target:
                return None
            prompt_lengths.append(length - len(target))
        return prompt_lengths

    def _prompt_lengths_from_processor(
        self,
        images: list[Any],
        prompts: list[str],
        input_ids: torch.Tensor,
        lengths: list[int],
        text_kwargs: dict[str, Any],
    ) -> list[int]:
        """Prompt lengths by processing the prompts with their images (the general fallback)."""
        prompt_batch = self._process(images, prompts, text_kwargs)
        prompt_ids = prompt_batch["input_ids"]
        prompt_real = prompt_batch["attention_mask"].sum(dim=1).tolist()
        return [
            _common_prefix(
                prompt_ids[index, : prompt_real[index]].tolist(),
                input_ids[index, : lengths[index]].tolist(),
            )
            for index in range(len(prompts))
        ]

    def _check_sample(
        self, feature: dict[str, Any], ids: torch.Tensor, length: int, prompt_length: int
    ) -> None:
        question = feature[QUESTION_COLUMN]
        image_positions = torch.nonzero(ids[:length] == self.image_token_id).flatten()
        if image_positions.numel() == 0:
            raise ValueError(
                f"The row with question {question!r} has no image tokens after processing: "
                f"the prompt must hold the image placeholder {self.image_token!r}."
            )
        last_image = int(image_positions[-1])
        if last_image >= prompt_length:
            raise ValueError(
                f"The row with question {question!r} has image tokens after its prompt; the "
                "target must not contain image placeholders."
            )
        if prompt_length >= length:
            raise ValueError(
                f"The row with question {question!r} has no target tokens after its prompt "
                f"({length} tokens in all); check the answer / forget target."
            )
        if int(ids[length - 1]) != self.tokenizer.eos_token_id:
            raise ValueError(
                f"The row with question {question!r} does not end with the eos token "
                f"{self.tokenizer.eos_token!r} (id {self.tokenizer.eos_token_id}) after "
                "processing; the tokenizer must keep its eos token as one token."
            )
        if self.max_length is not None and length > self.max_length:
            if self.max_length <= last_image:
                cut = "would cut into its image tokens"
            elif self.max_length <= prompt_length:
                cut = "would leave no target tokens"
            else:
                cut = f"would cut {length - self.max_length} of its target tokens"
            raise ValueError(
                f"The row with question {question!r} is {length} tokens long (image tokens "
                f"included: {image_positions.numel()}; prompt: {prompt_length}), over "
                f"max_length={self.max_length}; truncating it {cut}, so the collator never "
                "truncates. Raise max_length, or shorten the question and answer."
            )


@dataclass
class CagulDataCollator(ForgetRetainDataCollator):
    """`ForgetRetainDataCollator` with `CagulTrainer`'s policy (`CAGUL_TARGETS`).

    Retain rows are trained toward their ``answer``, forget rows toward their forget target (a
    refusal); batches carry the ``query_mask`` and the ``forget`` flags.
    """

    policy: TargetPolicy = field(default=CAGUL_TARGETS, kw_only=True)


@dataclass
class UnlearningDataCollator(ForgetRetainDataCollator):
    """`ForgetRetainDataCollator` with the fine-tuning baselines' policy (`UNLEARNING_TARGETS`).

    Every row's target is its true answer (gradient ascent and NPO push it down on forget
    rows), forget rows are flagged ``forget``; with ``with_refusals``, the batch also holds
    ``refusal``: the forget rows alone, same photos, with a refusal (or their
    ``forget_target``) as the target, as a nested batch with its own ``labels`` (the preferred
    answers of IdkPO).

    Args:
        processor: The VLM's processor.
        max_length: Longest accepted sample, in tokens; None: no limit.
        refusals: Refusals for the ``refusal`` batch (rows without a ``forget_target``).
        seed: Seed of the refusal choice.
        augment: Applied to each photo once per batch (both encodings of a row share it).
        with_refusals: Add the ``refusal`` batch of the forget rows.
    """

    with_refusals: bool = False
    policy: TargetPolicy = field(default=UNLEARNING_TARGETS, init=False)

    def __post_init__(self) -> None:
        self.policy = replace(UNLEARNING_TARGETS, refusal_batch=self.with_refusals)
        super().__post_init__()


def _true_answer(feature: dict[str, Any]) -> str:
    """A row's true ``answer``, as a target."""
    return str(feature[ANSWER_COLUMN])


def _common_prefix(first: Sequence[int], second: Sequence[int]) -> int:
    """Length of the longest common prefix of two token id sequences."""
    length = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        length += 1
    return length
