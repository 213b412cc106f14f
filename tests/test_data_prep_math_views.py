"""Math views: full, partial (documented segmentation rule, answer removed) and answer."""

from hypothesis import given, settings
from hypothesis import strategies as st

from verl_avsd.data_prep.boxed import contains_box
from verl_avsd.data_prep.math_views import math_views, partial_view, reasoning_steps, reveals_answer


def views_by_name(views):
    return {view["name"]: view["text"] for view in views}


def test_partial_is_first_half_of_the_paragraphs_before_the_answer():
    solution = "Step one.\n\nStep two.\n\nStep three.\n\nStep four.\n\nSo the answer is $\\boxed{91}$."
    steps, joiner = reasoning_steps(solution, "91")
    assert steps == ["Step one.", "Step two.", "Step three.", "Step four."] and joiner == "\n\n"
    assert partial_view(solution, "91") == "Step one.\n\nStep two."


def test_odd_number_of_steps_rounds_down():
    solution = "A.\n\nB.\n\nC.\n\n$\\boxed{5}$"
    assert partial_view(solution, "5") == "A."


def test_falls_back_to_lines_when_there_are_no_paragraphs():
    solution = "Subtract 6: $2x = 8$.\nDivide by 2.\nSo $x = 4$.\nHence $\\fbox{4}$."
    assert partial_view(solution, "4") == "Subtract 6: $2x = 8$."


def test_falls_back_to_sentences_for_one_line_solutions():
    solution = "We add the tens. Then we add the ones. Then we carry. The total is $\\boxed{57}$."
    assert partial_view(solution, "57") == "We add the tens."


def test_an_intermediate_box_ends_the_reasoning():
    solution = "Recall the definition.\n\nAlso recall the rule.\n\nWe get $\\boxed{6}$ for later.\n\nMore work.\n\n$\\boxed{30}$"
    steps, _ = reasoning_steps(solution, "30")
    assert steps == ["Recall the definition.", "Also recall the rule."]
    assert partial_view(solution, "30") == "Recall the definition."


def test_a_long_answer_written_out_before_the_box_ends_the_reasoning():
    solution = "First we factor.\n\nThen we simplify.\n\nSo $\\sqrt{50} = 5\\sqrt{2}$.\n\nThus $\\boxed{5\\sqrt{2}}$."
    assert reveals_answer("So $\\sqrt{50} = 5 \\sqrt{2}$.", "5\\sqrt{2}")  # whitespace is ignored
    assert partial_view(solution, "5\\sqrt{2}") == "First we factor."


def test_short_answers_are_not_searched_for():
    # "2" occurs by chance in "x^2"; only boxes and answers of 3+ characters end the reasoning
    assert not reveals_answer("Square it: x^2.", "2")
    solution = "Square it: x^2.\n\nTake the root.\n\nAdd 2.\n\nGet 4.\n\n$\\boxed{2}$"
    assert partial_view(solution, "2") == "Square it: x^2.\n\nTake the root."


def test_fewer_than_two_reasoning_steps_gives_no_partial_view():
    solution = "Obvious. $\\boxed{1}$"
    assert partial_view(solution, "1") is None
    views = math_views(solution, "1")
    assert [v["name"] for v in views] == ["full", "answer"]


def test_views_in_contract_order_and_full_is_the_whole_solution():
    solution = "  A.\n\nB.\n\nC.\n\nD.\n\n$\\boxed{7}$  "
    views = math_views(solution, "7")
    assert [v["name"] for v in views] == ["full", "partial", "answer"]
    assert views_by_name(views) == {"full": solution.strip(), "partial": "A.\n\nB.", "answer": "7"}


def test_no_solution_gives_only_the_answer_view():
    assert math_views("", "30") == [{"name": "answer", "text": "30"}]
    assert math_views(None, "30") == [{"name": "answer", "text": "30"}]


# Random worked solutions: steps of prose and numbers, sometimes stating the answer or a box on
# the way, ending with the boxed answer. Whatever the mix, the partial view holds no box and no
# answer of 3+ characters, and is the solution's first steps.
answers = st.one_of(st.integers(0, 999).map(str), st.sampled_from(["\\frac{1}{2}", "5\\sqrt{2}", "x+1", "\\{1,2\\}"]))
words = st.sampled_from(["we", "add", "the", "terms", "so", "x", "=", "12", "3", "then", "multiply", "by", "2", "."])


@st.composite
def worked_solutions(draw):
    answer = draw(answers)
    steps = []
    for _ in range(draw(st.integers(1, 8))):
        step = " ".join(draw(st.lists(words, min_size=1, max_size=8)))
        kind = draw(st.sampled_from(["plain", "plain", "plain", "states_answer", "boxed_intermediate"]))
        if kind == "states_answer":
            step += f" giving {answer}"
        elif kind == "boxed_intermediate":
            step += " \\boxed{" + draw(st.integers(0, 99).map(str)) + "}"
        steps.append(step)
    separator = draw(st.sampled_from(["\n\n", "\n", ". "]))
    return separator.join(steps) + separator + "Hence \\boxed{" + answer + "}.", answer


@settings(max_examples=300, deadline=None)
@given(case=worked_solutions())
def test_partial_never_contains_a_box_or_the_answer(case):
    solution, answer = case
    partial = partial_view(solution, answer)
    if partial is None:
        return
    assert not contains_box(partial)
    assert "\\boxed{" + answer + "}" not in partial
    if len(answer.replace(" ", "")) >= 3:
        assert answer.replace(" ", "") not in partial.replace(" ", "")
    assert partial.strip() and len(partial) < len(solution)
    first_piece = partial.split("\n")[0].split(". ")[0]
    assert solution.lstrip().startswith(first_piece)
