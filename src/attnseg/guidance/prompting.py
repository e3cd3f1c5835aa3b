"""A generation prompt: checked against the model's tokenizer, and the classes its masks default to."""

from __future__ import annotations

import re
import string
from pathlib import Path

from attnseg.errors import BadClassesError, BadPromptError
from attnseg.prompts import STOP_WORDS, ClassSpec, parse_classes


def check_prompt(prompt: str, tokenizer) -> str:
    """The prompt with its whitespace tidied; an empty prompt or a word the tokenizer cannot encode is refused."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadPromptError('the prompt is empty: say what to draw, e.g. "a red star on the grass"')
    prompt = " ".join(prompt.split())
    unk = getattr(tokenizer, "unk_token_id", None) if tokenizer is not None else None
    if unk is not None and unk in tokenizer(prompt, add_special_tokens=False)["input_ids"]:
        unknown = [
            word
            for word in dict.fromkeys(re.findall(r"[^\s" + re.escape(string.punctuation) + r"]+", prompt))
            if unk in tokenizer(word, add_special_tokens=False)["input_ids"]
        ]
        known = sorted(w for w in tokenizer.get_vocab() if w.isalpha())
        hint = f"; it knows: {', '.join(known)}" if len(known) <= 100 else ""
        raise BadPromptError(
            f"the model's tokenizer does not know {', '.join(map(repr, unknown)) or 'a word'} "
            f"in {prompt!r}{hint}"
        )
    return prompt


def model_nouns(folder: str | Path | None) -> list[str] | None:
    """The class names a model was trained to draw, where its folder says (the embedded world models)."""
    if folder is None or not (Path(folder) / "world.json").is_file():
        return None
    from attnseg.world.render import CLASSES  # the world's vocabulary of classes, nothing else of it

    return [c.name for c in CLASSES]


def default_classes(prompt: str, tokenizer=None, nouns: list[str] | None = None) -> list[ClassSpec]:
    """The classes a prompt names: the model's nouns that occur in it (in prompt order), else its content words.

    Without a list of nouns (any model but the embedded ones) every word that is not a stop word counts,
    adjectives included: name the classes yourself for masks of nouns only.
    """
    lowered = prompt.lower()
    if nouns is not None:
        found = []
        for noun in sorted(nouns, key=len, reverse=True):  # 'crescent moon' before a shorter name inside it
            for match in re.finditer(r"\b" + re.escape(noun.lower()) + r"\b", lowered):
                if not any(s < match.end() and match.start() < e for s, e, _ in found):
                    found.append((match.start(), match.end(), noun))
        names = list(dict.fromkeys(name for _, _, name in sorted(found)))
        if not names:
            raise BadClassesError(
                f"the prompt {prompt!r} names none of the classes the model knows ({', '.join(nouns)}); "
                "name one, or pass --classes"
            )
        return parse_classes(names)
    words = [w.strip(string.punctuation) for w in lowered.split()]
    names = list(dict.fromkeys(w for w in words if w and w not in STOP_WORDS))
    if not names:
        raise BadClassesError(f"the prompt {prompt!r} has no content word to segment; pass --classes")
    return parse_classes(names)
