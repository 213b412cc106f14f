r"""Final-answer extraction from \boxed{...}: balanced braces, \fbox, several boxes, failures by reason."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_avsd.data_prep.boxed import (
    EMPTY_BOXED_ANSWER,
    NO_BOXED_ANSWER,
    UNBALANCED_BOXED,
    contains_box,
    find_boxes,
    last_boxed_answer,
)


@pytest.mark.parametrize(
    "text, answer",
    [
        (r"so the answer is $\boxed{91}$.", "91"),
        (r"$\boxed{\frac{1}{2}}$", r"\frac{1}{2}"),
        (r"$\boxed{\frac{\sqrt{3}}{2^{n+1}}}$ done", r"\frac{\sqrt{3}}{2^{n+1}}"),
        (r"Hence $\fbox{4}$.", "4"),
        (r"first $\boxed{6}$ then $\boxed{30}$", "30"),  # the last box wins
        (r"$\fbox{1}$ and finally \boxed{2}", "2"),
        (r"the set $\boxed{\{1, 2\}}$", r"\{1, 2\}"),  # escaped braces are text
        (r"$\boxed {  7 }$", "7"),  # space before the brace, content stripped
        (r"\boxed 5$ is it", "5"),  # brace-less form runs to `$`
        (r"\boxed{\text{N}}", r"\text{N}"),
        ("\\boxed{a\\\\{b}}", "a\\\\{b}"),  # `\\` is a line break, then a real group {b}
    ],
)
def test_last_boxed_answer_finds_the_answer(text, answer):
    assert last_boxed_answer(text) == (answer, None)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("no box at all, the answer is 3", NO_BOXED_ANSWER),
        (r"a macro \boxedanswer{3} is not a box", NO_BOXED_ANSWER),
        (r"So the value is $\boxed{7$.", UNBALANCED_BOXED),
        (r"first \boxed{6} then \boxed{30", UNBALANCED_BOXED),  # never falls back to an earlier box
        (r"So $\boxed{}$.", EMPTY_BOXED_ANSWER),
        (r"So $\boxed{   }$.", EMPTY_BOXED_ANSWER),
    ],
)
def test_last_boxed_answer_reports_why_it_failed(text, reason):
    assert last_boxed_answer(text) == (None, reason)


def test_find_boxes_spans_cover_the_whole_box():
    text = r"a \boxed{x^{2}} b \fbox{y} c"
    boxes = find_boxes(text)
    assert [text[b.start : b.end] for b in boxes] == [r"\boxed{x^{2}}", r"\fbox{y}"]
    assert [b.content for b in boxes] == ["x^{2}", "y"]


def test_nested_box_is_part_of_the_outer_one():
    boxes = find_boxes(r"\boxed{1 + \boxed{2}}")
    assert len(boxes) == 1 and boxes[0].content == r"1 + \boxed{2}"


def test_contains_box():
    assert contains_box(r"x \fbox{1}") and contains_box(r"\boxed{2}")
    assert not contains_box(r"\boxedanswer and boxed{3}")


# Balanced brace strings without backslashes: wrapping one in \boxed{} and surrounding it with
# brace-free prose must give it back exactly (after strip).
balanced = st.recursive(
    st.text(alphabet="abc123+-^ ", min_size=1, max_size=6),
    lambda inner: st.builds(
        lambda parts: "".join("{" + p + "}" if i % 2 else p for i, p in enumerate(parts)),
        st.lists(inner, min_size=1, max_size=3),
    ),
    max_leaves=8,
)
prose = st.text(alphabet="xyz .,=$0123456789\n", max_size=20)


@settings(max_examples=200, deadline=None)
@given(before=prose, content=balanced, after=prose)
def test_any_balanced_content_round_trips(before, content, after):
    if not content.strip():
        assert last_boxed_answer(before + r"\boxed{" + content + "}" + after) == (None, EMPTY_BOXED_ANSWER)
        return
    answer, reason = last_boxed_answer(before + r"\boxed{" + content + "}" + after)
    assert reason is None and answer == content.strip()
