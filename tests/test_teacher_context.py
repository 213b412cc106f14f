"""Teacher contexts: the student's prompt + one view in the user turn, same chat template; bad view
data is an error naming the row and field."""

import pytest
import torch
from omegaconf import OmegaConf

from verl_avsd.config import avsd_config
from verl_avsd.toy.tiny_model import build_tokenizer
from verl_avsd.workers.teacher_context import ViewDataError, build_teacher_contexts, views_of_row


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(["Compute 12 + 30.", "12 + 30 = 42\nAnswer: 42", "Reference (full):"] * 20)


def _cfg(**kw):
    return avsd_config({"avsd": {"view_template": "{prompt}\\n\\nReference ({view_name}):\\n{view}", **kw}})


PROMPT = [{"role": "user", "content": "Compute 12 + 30."}]


def _row(index, views):
    return {"index": index, "split": "train", "views": views}


def test_context_is_student_chat_with_view_in_user_turn(tokenizer):
    cfg = _cfg()
    rows = [_row(0, [{"name": "full", "text": "12 + 30 = 42\nAnswer: 42"}, {"name": "answer", "text": "42"}])]
    ctx = build_teacher_contexts(tokenizer, [PROMPT], rows, cfg)
    assert ctx.view_mask.tolist() == [[True, False, True]]  # partial is missing from the row
    want = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Compute 12 + 30.\n\nReference (answer):\n42"}], add_generation_prompt=True, tokenize=True
    )
    want = want["input_ids"] if hasattr(want, "keys") else want
    assert ctx.context_ids[0][2].tolist() == list(want)
    assert ctx.context_ids[0][1] is None
    # the student's own prompt is a prefix-compatible chat: the same template with no view
    student = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True)
    student = student["input_ids"] if hasattr(student, "keys") else student
    assert len(ctx.context_ids[0][0]) > len(student)


def test_long_view_is_truncated_and_flagged(tokenizer):
    cfg = _cfg(max_view_tokens=3)
    rows = [_row(5, [{"name": "full", "text": "12 + 30 = 42\nAnswer: 42"}, {"name": "answer", "text": "42"}])]
    ctx = build_teacher_contexts(tokenizer, [PROMPT], rows, cfg)
    assert ctx.truncated.tolist() == [[True, False, False]]
    short = build_teacher_contexts(tokenizer, [PROMPT], rows, _cfg())
    assert len(ctx.context_ids[0][0]) < len(short.context_ids[0][0])


def test_empty_view_text_is_masked_not_passed_off_as_a_view():
    assert views_of_row(_row(0, [{"name": "full", "text": "  "}, {"name": "answer", "text": "7"}]), ["full", "answer"], 0) == [None, "7"]


@pytest.mark.parametrize(
    "extra_info,match",
    [
        ({"index": 7, "split": "train"}, r"row index=7 \(split train\).*extra_info\.views is missing"),
        ({"index": 7, "views": "full"}, r"row index=7.*extra_info\.views must be a list"),
        ({"index": 7, "views": [{"name": "full"}]}, r"row index=7.*extra_info\.views\[0\] must be a dict with keys name and text"),
        ({"index": 7, "views": [{"name": "full", "text": 3}]}, r"extra_info\.views\[0\] needs a str name and a str text"),
        ({"index": 7, "views": [{"name": "full", "text": "a"}, {"name": "full", "text": "b"}]}, "view 'full' twice"),
    ],
)
def test_malformed_views_name_row_and_field(extra_info, match):
    with pytest.raises(ViewDataError, match=match):
        views_of_row(extra_info, ["full"], 0)


def test_batch_without_any_configured_view_is_an_error(tokenizer):
    rows = [_row(0, [{"name": "solution", "text": "42"}])]
    with pytest.raises(ViewDataError, match=r"views found in the rows: \['solution'\]"):
        build_teacher_contexts(tokenizer, [PROMPT], rows, _cfg())


def test_prompt_without_user_turn_names_the_row(tokenizer):
    rows = [_row(3, [{"name": "full", "text": "x"}])]
    with pytest.raises(ViewDataError, match=r"row index=3.*raw_prompt"):
        build_teacher_contexts(tokenizer, [[{"role": "system", "content": "hi"}]], rows, _cfg())
