import pytest

from attnseg.errors import BadClassesError
from attnseg.prompts import PromptBuilder, parse_classes


@pytest.fixture(scope="module")
def clip_tokenizer(tmp_path_factory):
    from attnseg.testing import tiny_clip_tokenizer

    return tiny_clip_tokenizer(tmp_path_factory.mktemp("tok"))


def word_level_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["<s>", "</s>", "<unk>", "a", "photo", "of", "cat", "red", "ball", "and", ",", "."]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )


def t5_like_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import T5TokenizerFast

    vocab = [
        ("<pad>", 0.0),
        ("</s>", 0.0),
        ("<unk>", 0.0),
        ("▁", -2.0),
        ("▁a", -3.0),
        ("▁photo", -3.0),
        ("▁of", -3.0),
        ("cat", -3.0),
        ("▁cat", -9.0),
        ("▁red", -3.0),
        ("▁ball", -3.0),
        ("▁and", -3.0),
        (",", -3.0),
        (".", -3.0),
        ("s", -4.0),
    ]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    from tokenizers import processors

    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def test_parse_classes_synonyms_and_errors():
    specs = parse_classes("person|man|woman, grass")
    assert specs[0].name == "person" and specs[0].synonyms == ("person", "man", "woman")
    assert specs[1].synonyms == ("grass",)
    for bad, needle in [
        ([], "no class"),
        (["cat", "  "], "empty"),
        (["cat", "Cat"], "twice"),
        (["a|"], "empty"),
        ("cat,,dog", "empty"),
    ]:
        with pytest.raises(BadClassesError, match=needle):
            parse_classes(bad)


def test_clip_spans_point_at_class_words(clip_tokenizer):
    plan = PromptBuilder(clip_tokenizer, 77).build(parse_classes(["cat", "red ball|the ball"]))[0]
    ids = clip_tokenizer(plan.text)["input_ids"]
    text_of = lambda positions: clip_tokenizer.decode([ids[p] for p in positions]).replace(" ", "")  # noqa: E731
    assert text_of(plan.token_spans["cat"]) == "cat"
    assert text_of(plan.token_spans["red ball"]) == "redball"
    assert text_of(plan.token_spans["the ball"]) == "ball"  # the stop word is excluded
    assert 0 in plan.layout.special_tokens and len(ids) - 1 in plan.layout.special_tokens
    assert plan.layout.class_tokens[1] == [plan.token_spans["red ball"], plan.token_spans["the ball"]]
    assert not set(plan.layout.content_tokens) & set(plan.layout.special_tokens)


def test_word_level_tokenizer_spans():
    tok = word_level_tokenizer()
    plan = PromptBuilder(tok, 32).build(parse_classes(["cat", "red ball"]))[0]
    assert plan.text == "a photo of cat and red ball."
    ids = tok(plan.text)["input_ids"]
    assert [tok.convert_ids_to_tokens(ids[p]) for p in plan.token_spans["red ball"]] == ["red", "ball"]
    assert [tok.convert_ids_to_tokens(ids[p]) for p in plan.token_spans["cat"]] == ["cat"]


def test_t5_lone_boundary_piece_is_excluded():
    tok = t5_like_tokenizer()
    plan = PromptBuilder(tok, 64).build(parse_classes(["cats", "ball"]))[0]
    ids = tok(plan.text)["input_ids"]
    pieces = [tok.convert_ids_to_tokens(ids[p]) for p in plan.token_spans["cats"]]
    assert "▁" in tok.convert_ids_to_tokens(ids)  # the tokenizer did emit a lone boundary piece
    assert pieces == ["cat", "s"]
    assert [tok.convert_ids_to_tokens(ids[p]) for p in plan.token_spans["ball"]] == ["▁ball"]


def test_offset_shifts_positions(clip_tokenizer):
    plain = PromptBuilder(clip_tokenizer, 77).build(parse_classes(["cat"]))[0]
    shifted = PromptBuilder(clip_tokenizer, 77, position_offset=77).build(parse_classes(["cat"]))[0]
    assert shifted.token_spans["cat"] == [p + 77 for p in plain.token_spans["cat"]]


def test_too_many_classes_split_over_prompts(clip_tokenizer):
    names = ["cat", "grass", "wall", "sky", "tree", "road", "house", "bird"]
    plans = PromptBuilder(clip_tokenizer, 30).build(parse_classes(names))
    assert len(plans) > 1
    assert sorted(i for p in plans for i in p.class_indices) == list(range(len(names)))
    for plan in plans:
        assert len(clip_tokenizer(plan.text)["input_ids"]) <= 30
    keep = max(p.n_tokens for p in plans)
    assert all(keep in p.layout.special_tokens for p in plans)  # the rest column counts as special


def test_name_without_content_word_is_refused(clip_tokenizer):
    with pytest.raises(BadClassesError, match="no content word"):
        PromptBuilder(clip_tokenizer, 77).build(parse_classes(["cat", "the"]))


def test_background_words_in_every_prompt(clip_tokenizer):
    plans = PromptBuilder(clip_tokenizer, 30).build(
        parse_classes(["cat", "grass", "wall", "tree", "road"]), parse_classes(["sky"])
    )
    assert len(plans) > 1 and all("sky" in p.token_spans for p in plans)
    assert all(len(p.layout.background_tokens) == 1 for p in plans)


def test_reference_stop_words_keep_of_and_on_as_content():
    builder = PromptBuilder(word_level_tokenizer(), 77, template="{}.")
    specs = parse_classes(["photo of cat"])
    default = builder.build(specs)[0]
    reference = builder.with_stop_words("reference").build(specs)[0]
    assert default.text == reference.text == "photo of cat."
    # attnseg's list drops 'of'; the reference's (a, an, the, and) keeps it as a content token.
    assert default.token_spans["photo of cat"] == [1, 3]
    assert reference.token_spans["photo of cat"] == [1, 2, 3]
    assert builder.with_stop_words("attnseg") is builder
