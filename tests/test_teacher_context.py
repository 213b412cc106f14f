"""Teacher contexts: the student's prompt + one view in the user turn, same chat template; bad view
data is an error naming the row and field."""

import pytest

from verl_avsd.config import avsd_config
from verl_avsd.toy.tiny_model import build_tokenizer
from verl_avsd.workers.teacher_context import ViewDataError, build_teacher_contexts, check_view_coverage, views_of_row


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
    assert views_of_row(_row(0, [{"name": "full", "text": "  "}, {"name": "answer", "text": "7"}]), ["full", "answer"], 0) == [
        None,
        "7",
    ]


@pytest.mark.parametrize(
    "extra_info,match",
    [
        ({"index": 7, "split": "train"}, r"train row 7 \[batch position 0\].*extra_info\.views is missing"),
        ({"index": 7, "views": "full"}, r"row 7.*extra_info\.views must be a list"),
        ({"index": 7, "views": [{"name": "full"}]}, r"row 7.*extra_info\.views\[0\] must be a dict with keys name and text"),
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
    with pytest.raises(ViewDataError, match=r"row 3.*raw_prompt"):
        build_teacher_contexts(tokenizer, [[{"role": "system", "content": "hi"}]], rows, _cfg())


def test_batch_whose_views_all_have_empty_text_says_so_naming_row_and_view(tokenizer):
    # the views are there, their text is empty: not a naming problem, so no "set algorithm.avsd.views"
    rows = [_row(4, [{"name": "full", "text": ""}, {"name": "answer", "text": "  "}])]
    with pytest.raises(ViewDataError) as e:
        build_teacher_contexts(tokenizer, [PROMPT], rows, _cfg())
    msg = str(e.value)
    assert "empty text" in msg and "row 4" in msg and "'full'" in msg and "'answer'" in msg
    assert "no row has ['partial']" in msg
    assert "set algorithm.avsd.views" not in msg


# ---- the first batch against algorithm.avsd.views ----

MATH_VIEWS = [{"name": "full", "text": "12 + 30 = 42"}, {"name": "partial", "text": "12 + 30"}, {"name": "answer", "text": "42"}]


def test_misspelt_view_is_an_error_naming_the_views_found():
    rows = [_row(i, MATH_VIEWS) for i in range(4)]
    with pytest.raises(ViewDataError) as e:
        check_view_coverage(rows, ["full", "partail", "answer"])
    msg = str(e.value)
    assert "'partail'" in msg and "['answer', 'full', 'partial']" in msg and "did you mean 'partial'" in msg


def test_view_present_only_with_empty_text_is_an_error_naming_a_row():
    rows = [_row(i, MATH_VIEWS[:2] + [{"name": "answer", "text": ""}]) for i in (8, 9)]
    with pytest.raises(ViewDataError, match=r"'answer'.*empty.*row 8"):
        check_view_coverage(rows, ["full", "answer"])


def test_view_missing_in_most_rows_is_a_warning_with_the_counts(caplog):
    rows = [_row(0, MATH_VIEWS)] + [_row(i, MATH_VIEWS[:1]) for i in range(1, 4)]
    with caplog.at_level("WARNING"):
        share = check_view_coverage(rows, ["full", "answer"])
    assert share == {"full": 1.0, "answer": 0.25}
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "'answer' is missing (absent or empty) in 3 of the 4 rows" in warned[0]


def test_views_every_row_has_pass_quietly(caplog):
    with caplog.at_level("WARNING"):
        assert check_view_coverage([_row(i, MATH_VIEWS) for i in range(3)], ["full", "partial", "answer"]) == dict.fromkeys(
            ["full", "partial", "answer"], 1.0
        )
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_feedback_view_is_there_where_the_row_has_public_tests():
    code = [{"name": "reference", "text": "print(1)"}]
    with_tests = {**_row(0, code), "public_tests": '{"inputs": [""], "outputs": ["1"]}'}
    assert check_view_coverage([with_tests, _row(1, code)], ["reference", "feedback"]) == {"reference": 1.0, "feedback": 0.5}
    with pytest.raises(ViewDataError, match=r"'feedback'.*extra_info\.public_tests"):
        check_view_coverage([_row(1, code)], ["reference", "feedback"])


def test_malformed_first_batch_row_is_an_error_naming_it():
    with pytest.raises(ViewDataError, match=r"row 2.*extra_info\.views is missing"):
        check_view_coverage([_row(1, MATH_VIEWS), {"index": 2}], ["full"])


def test_feedback_only_batch_without_programs_is_a_step_without_views_not_an_error(tokenizer):
    # views=[feedback]: rows with public tests, but no rollout wrote a program (no feedback text)
    rows = [{**_row(i, [{"name": "reference", "text": "print(1)"}]), "public_tests": "[]"} for i in range(2)]
    ctx = build_teacher_contexts(tokenizer, [PROMPT] * 2, rows, _cfg(views=["feedback"], opsd_view="feedback"))
    assert not ctx.view_mask.any()
    # without public tests the feedback view can never exist: still an error
    with pytest.raises(ViewDataError, match="no row of this batch has any of the views"):
        build_teacher_contexts(
            tokenizer, [PROMPT], [_row(0, [{"name": "reference", "text": "x"}])], _cfg(views=["feedback"], opsd_view="feedback")
        )
