"""Class names → prompt text → token columns, for any fast tokenizer (CLIP BPE, T5 sentencepiece, word-level)."""

from __future__ import annotations

import copy
import re
import string
from dataclasses import dataclass

from attnseg.errors import BadClassesError, BadConfigError, UnknownWordError
from attnseg.method.pipeline import TokenLayout

STOP_WORDS = frozenset(
    "a an the and or of on in at to with without by for from into onto over under before after behind "
    "next near beside between its it is are this that these those some".split()
)
# The reference code's list: a, an, the, and, plus ",", "." and "-", which are punctuation here anyway.
REFERENCE_STOP_WORDS = frozenset("a an the and".split())
STOP_WORD_SETS = {"attnseg": STOP_WORDS, "reference": REFERENCE_STOP_WORDS}  # MethodConfig.stop_words
DEFAULT_TEMPLATE = "a photo of {}."
# A tokenizer with fewer words than this is listed whole when it does not know a word (the embedded models').
SMALL_VOCABULARY = 500


def check_template(template: str) -> str:
    """The template, if it has exactly one {} where the class names go; BadConfigError if not."""
    if not isinstance(template, str) or template.count("{}") != 1:
        count = template.count("{}") if isinstance(template, str) else 0
        raise BadConfigError(
            f"prompt template {template!r} has {count} '{{}}'; it needs exactly one, where the class names go "
            "(e.g. 'a photo of {}.')"
        )
    return template


def known_words(tokenizer) -> list[str] | None:
    """The words a small word-level tokenizer knows (specials, punctuation, stop words left out); None if large."""
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    backend = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    if not vocab or len(vocab) > SMALL_VOCABULARY or type(backend).__name__ != "WordLevel":
        return None  # sub-word pieces (BPE, unigram) are not words a user could name a class with
    special = set(getattr(tokenizer, "all_special_tokens", []) or [])
    return sorted(
        w for w in vocab if w not in special and w.strip(string.punctuation) and w.lower() not in STOP_WORDS
    )


def embedded_vocabulary(name: str) -> list[str]:
    """The words an embedded model's tokenizer knows."""
    from transformers import PreTrainedTokenizerFast

    from attnseg.backbones.loading import ASSETS

    return known_words(PreTrainedTokenizerFast.from_pretrained(ASSETS / name / "tokenizer")) or []


@dataclass(frozen=True)
class ClassSpec:
    """One class: a display name and the synonyms the prompt names it by (the display name first)."""

    name: str
    synonyms: tuple[str, ...]


@dataclass(frozen=True)
class PromptPlan:
    """One prompt: its text, which classes it names, and their token columns."""

    text: str
    class_indices: list[int]  # indices into the full class list
    layout: TokenLayout  # columns index the capture's kept tokens (0..keep-1) plus the rest column `keep`
    token_spans: dict[str, list[int]]  # synonym → token positions in the text sequence, for result.json
    n_tokens: int  # tokens used, special tokens included


def parse_classes(classes: list[str] | str) -> list[ClassSpec]:
    """Check and split class names; `a|b|c` gives synonyms. Raises BadClassesError with what to fix."""
    if isinstance(classes, str):
        classes = classes.split(",")
    if not classes:
        raise BadClassesError("no class names given: pass at least one, e.g. --classes 'cat,grass,wall'")
    specs: list[ClassSpec] = []
    seen: dict[str, int] = {}
    for position, raw in enumerate(classes, 1):
        if not isinstance(raw, str):
            raise BadClassesError(f"class #{position} is {raw!r}, not a string")
        synonyms = tuple(" ".join(s.split()) for s in raw.split("|"))
        if not raw.strip() or any(not s for s in synonyms):
            raise BadClassesError(
                f"class #{position} ({raw!r}) is empty or has an empty synonym; remove it or write a name"
            )
        for syn in synonyms:
            key = syn.lower()
            if key in seen:
                raise BadClassesError(
                    f"class name {syn!r} appears twice (classes #{seen[key]} and #{position}); each name must be unique"
                )
            seen[key] = position
        specs.append(ClassSpec(synonyms[0], synonyms))
    return specs


def _content_words(text: str, start: int, stop_words: frozenset[str] = STOP_WORDS) -> list[tuple[int, int]]:
    """Character spans of the words of `text` (placed at `start`) that are neither stop words nor punctuation."""
    spans = []
    for match in re.finditer(r"\S+", text):
        word = match.group().strip(string.punctuation).lower()
        if word and word not in stop_words:
            spans.append((start + match.start(), start + match.end()))
    return spans


def _compose(entities: list[str], template: str) -> tuple[str, list[tuple[int, int]]]:
    """Prompt text naming every entity, and each entity's character span."""
    if len(entities) == 1:
        body = entities[0]
    else:
        body = ", ".join(entities[:-1]) + " and " + entities[-1]
    prefix = template.split("{}")[0]
    text = template.replace("{}", body, 1)
    spans, cursor = [], len(prefix)
    for index, entity in enumerate(entities):
        spans.append((cursor, cursor + len(entity)))
        cursor += len(entity) + (5 if index == len(entities) - 2 else 2)  # " and " or ", "
    return text, spans


def compose_prompt(names: list[str], template: str = DEFAULT_TEMPLATE) -> str:
    """The prompt text naming every name in the template ("a photo of star, sky and grass.")."""
    return _compose(names, template)[0]


class PromptBuilder:
    """Turns class specs into prompts that fit the text encoder, with token columns from character offsets."""

    def __init__(
        self, tokenizer, max_tokens: int, template: str = DEFAULT_TEMPLATE, position_offset: int = 0
    ) -> None:
        check_template(template)
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.template = template
        self.position_offset = position_offset  # where this tokenizer's tokens sit in the joint text sequence
        self.special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
        # A lone '▁' piece: T5 tokenizers give it the offsets of the next character, so text alone misses it.
        vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
        self.boundary_ids = {vocab["▁"]} if "▁" in vocab else set()
        self.unk_id = getattr(tokenizer, "unk_token_id", None)
        self.stop_words = STOP_WORDS

    def _tokenize(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        # verbose=False: a long prompt is measured here on purpose; the tokenizer's own warning is noise.
        enc = self.tokenizer(
            text, add_special_tokens=True, return_offsets_mapping=True, truncation=False, verbose=False
        )
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]

    def _entity_tokens(self, ids, offsets, text: str, span: tuple[int, int], entity: str) -> list[int]:
        words = _content_words(entity, span[0], self.stop_words)
        tokens = []
        for position, (token_id, (s, e)) in enumerate(zip(ids, offsets)):
            if token_id in self.special_ids or token_id in self.boundary_ids or e <= s:
                continue
            if not text[s:e].strip(" ▁" + string.punctuation):
                continue  # special, empty, a lone word-boundary piece, or punctuation
            if any(s < we and e > ws for ws, we in words):
                tokens.append(position)
        return tokens

    def _plan(
        self, specs: list[ClassSpec], indices: list[int], background: list[ClassSpec]
    ) -> tuple[PromptPlan, int]:
        entities = [syn for i in indices for syn in specs[i].synonyms] + [
            s for b in background for s in b.synonyms
        ]
        text, spans = _compose(entities, self.template)
        ids, offsets = self._tokenize(text)
        cursor = 0
        class_tokens: list[list[list[int]]] = []
        token_spans: dict[str, list[int]] = {}
        for spec in [specs[i] for i in indices] + background:
            groups = []
            for syn in spec.synonyms:
                positions = self._entity_tokens(ids, offsets, text, spans[cursor], syn)
                self._check_known(ids, offsets, spans[cursor], syn)
                cursor += 1
                if not positions:
                    raise BadClassesError(
                        f"class name {syn!r} has no content word (only stop words or punctuation); "
                        "name the thing itself, e.g. 'cat' rather than 'the'"
                    )
                shifted = [p + self.position_offset for p in positions]
                token_spans[syn] = shifted
                groups.append(shifted)
            class_tokens.append(groups)
        n_classes = len(indices)
        content = sorted({p for groups in class_tokens for g in groups for p in g})
        if len(class_tokens) == 1:
            # A lone entity divided by its own tokens is 1 everywhere (per-pixel rescaling then says nothing):
            # score it against the prompt's other words ("photo" in "a photo of wall."), the rest of what
            # the text says, so that a single class gets a map of where it is.
            others = self._word_tokens(ids, offsets, text, exclude=set(content), offset=self.position_offset)
            content = sorted(set(content) | set(others))
        special = [p + self.position_offset for p, t in enumerate(ids) if t in self.special_ids]
        layout = TokenLayout(class_tokens[:n_classes], class_tokens[n_classes:], content, special)
        return PromptPlan(text, list(indices), layout, token_spans, len(ids) + self.position_offset), len(ids)

    def _word_tokens(self, ids, offsets, text: str, exclude: set[int], offset: int) -> list[int]:
        """Positions (shifted by offset) of the prompt's content-word tokens that are not in `exclude`."""
        words = _content_words(text, 0)
        out = []
        for position, (token_id, (s, e)) in enumerate(zip(ids, offsets)):
            if token_id in self.special_ids or token_id in self.boundary_ids or e <= s:
                continue
            if not text[s:e].strip(" ▁" + string.punctuation) or position + offset in exclude:
                continue
            if any(s < we and e > ws for ws, we in words):
                out.append(position + offset)
        return out

    def _check_known(self, ids, offsets, span: tuple[int, int], entity: str) -> None:
        """Raise UnknownWordError when a word of the entity tokenises to the unknown token."""
        if self.unk_id is None:
            return
        unknown = [
            entity[max(0, s - span[0]) : e - span[0]]
            for token_id, (s, e) in zip(ids, offsets)
            if token_id == self.unk_id and s < span[1] and e > span[0]
        ]
        if not unknown:
            return
        words = known_words(self.tokenizer)
        known = (
            f"it knows {len(words)} words: {', '.join(words)}"
            if words
            else "its tokenizer maps it to the unknown token"
        )
        raise UnknownWordError(
            f"this model does not know the word(s) {', '.join(repr(_short(w)) for w in unknown)} in class "
            f"{_short(entity)!r}; "
            f"{known}. Name the class with words it knows, or pass --model with a model that knows it"
        )

    def locate(
        self, text: str, specs: list[ClassSpec], background: list[ClassSpec] | None = None
    ) -> PromptPlan:
        """Token columns of classes (and background words) named inside a given prompt: a pipeline the user
        runs, or a caption."""
        ids, offsets = self._tokenize(text)
        lowered = text.lower()
        class_tokens, token_spans = [], {}
        for spec in specs + list(background or []):
            groups = []
            for syn in spec.synonyms:
                match = re.search(r"\b" + re.escape(syn.lower()) + r"\b", lowered)
                if match is None:
                    raise BadClassesError(
                        f"{syn!r} does not occur in the prompt {text!r}; name words the prompt uses"
                    )
                positions = self._entity_tokens(
                    ids, offsets, text, match.span(), text[match.start() : match.end()]
                )
                if not positions:
                    raise BadClassesError(
                        f"class name {syn!r} has no content word (only stop words or punctuation)"
                    )
                token_spans[syn] = [p + self.position_offset for p in positions]
                groups.append(token_spans[syn])
            class_tokens.append(groups)
        content = sorted({p for groups in class_tokens for g in groups for p in g})
        special = [p + self.position_offset for p, t in enumerate(ids) if t in self.special_ids]
        n = len(specs)
        plan = PromptPlan(
            text,
            list(range(n)),
            TokenLayout(class_tokens[:n], class_tokens[n:], content, special),
            token_spans,
            len(ids) + self.position_offset,
        )
        return with_rest_column(plan, plan.n_tokens)

    def with_stop_words(self, name: str) -> PromptBuilder:
        """This builder with another stop-word set (STOP_WORD_SETS: 'attnseg' or the reference's)."""
        if STOP_WORD_SETS[name] is self.stop_words:
            return self
        clone = copy.copy(self)
        clone.stop_words = STOP_WORD_SETS[name]
        return clone

    def build(self, specs: list[ClassSpec], background: list[ClassSpec] | None = None) -> list[PromptPlan]:
        """Greedily pack classes into as few prompts as fit `max_tokens`; background words go in each one."""
        background = background or []
        plans: list[PromptPlan] = []
        current: list[int] = []
        for index in range(len(specs)):
            trial = current + [index]
            _, length = self._plan(specs, trial, background)
            if length <= self.max_tokens:
                current = trial
                continue
            if not current:
                name = specs[index].name
                shown = _short(name)
                with_bg = " with the background words" if background else ""
                raise BadClassesError(
                    f"class {shown!r}{with_bg} takes {length} tokens, more than the text encoder's "
                    f"{self.max_tokens}; shorten it" + (" or drop background words" if background else "")
                )
            plans.append(self._plan(specs, current, background)[0])
            current = [index]
        plans.append(self._plan(specs, current, background)[0])
        keep = max(plan.n_tokens for plan in plans)
        return [with_rest_column(plan, keep) for plan in plans]


def with_rest_column(plan: PromptPlan, keep: int) -> PromptPlan:
    """Mark the rest column (index `keep`, the sum of all tokens past the kept ones) as special."""
    layout = plan.layout
    padding = range(plan.n_tokens, keep)  # pads of a shorter prompt sit inside the kept columns
    special = sorted(set(p for p in layout.special_tokens if p < keep) | set(padding) | {keep})
    return PromptPlan(
        plan.text,
        plan.class_indices,
        TokenLayout(layout.class_tokens, layout.background_tokens, layout.content_tokens, special),
        plan.token_spans,
        plan.n_tokens,
    )


def _short(text: str, limit: int = 40) -> str:
    """A user's text cut to fit in one message line."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
