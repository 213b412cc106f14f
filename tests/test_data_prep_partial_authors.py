r"""`prep math --partial-view authors`: the AVSD authors' partial view (ceil(n/2) segments, a
character prefix for one segment, their notice), so every row with a solution keeps M = 3 views;
the default (`ours`) is unchanged. Expected texts are worked out by hand from the rule in
data_prep/authors_partial.py, which follows duykhuongnguyen/AVSD@3233099
src/avsd/math/privileged_views.py (build_partial_solution, ratio 0.5)."""

import json
import math
import os

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_avsd.data_prep.authors_partial import PARTIAL_NOTICE, authors_partial_view, authors_segments, without_last_box
from verl_avsd.data_prep.cli import main
from verl_avsd.data_prep.math_views import math_views

# Their notice, copied from the source named above (a typo in our constant fails here).
THEIR_NOTICE = "[The reference above is incomplete and may omit later steps or the final answer.]"


def kept_part(view: str) -> str:
    assert view.endswith("\n\n" + THEIR_NOTICE), view
    return view[: -len("\n\n" + THEIR_NOTICE)]


def test_notice_is_theirs_verbatim():
    assert PARTIAL_NOTICE == THEIR_NOTICE


@pytest.mark.parametrize(
    "solution,segments,kept",
    [
        # paragraphs: 4 -> 2, 5 -> 3, 2 -> 1 (never all of them), the last box removed first
        ("A.\n\nB.\n\nC.\n\nD.\n\n$\\boxed{7}$", ["A.", "B.", "C.", "D.", "$$"], "A.\n\nB.\n\nC."),
        ("A.\n\nB.\n\nC.\n\nD. So \\boxed{7}", ["A.", "B.", "C.", "D. So"], "A.\n\nB."),
        ("A.\n\nB.\n\nC.\n\nD.\n\nE. \\boxed{7}", ["A.", "B.", "C.", "D.", "E."], "A.\n\nB.\n\nC."),
        ("First.\n\nThen \\boxed{3}", ["First.", "Then"], "First."),
        # no blank line: lines that open a numbered or bulleted step (text before them is one)
        (
            "We set up.\n1. add 2\n   carry\n2) times 3\n- so 12 \\boxed{12}",
            ["We set up.", "1. add 2\n   carry", "2) times 3", "- so 12"],
            "We set up.\n1. add 2\n   carry",
        ),
        # one line: sentences
        (
            "Add the tens. Add the ones! Carry? Total \\boxed{57}.",
            ["Add the tens.", "Add the ones!", "Carry?", "Total ."],
            "Add the tens. Add the ones!",
        ),
    ],
)
def test_keeps_ceil_half_of_the_segments_and_appends_the_notice(solution, segments, kept):
    found, _ = authors_segments(without_last_box(solution))
    assert found == segments
    view = authors_partial_view(solution)
    assert kept_part(view) == kept
    n = len(segments)
    assert len(authors_segments(kept)[0]) == min(math.ceil(n / 2), n - 1)


def test_only_the_last_box_is_removed_and_an_earlier_box_or_stated_answer_stays():
    # their rule, unlike ours, may show the answer: a documented departure
    view = authors_partial_view("Let y = \\boxed{2}.\n\nSo x = 5.\n\nHence \\boxed{5}")
    assert kept_part(view) == "Let y = \\boxed{2}.\n\nSo x = 5."


def test_one_segment_falls_back_to_a_character_prefix_and_keeps_three_views():
    solution = "Adding gives 42 \\boxed{42}"  # "Adding gives 42" after the box: one sentence, 15 chars
    assert kept_part(authors_partial_view(solution)) == "Adding g"  # ceil(15 / 2) = 8 characters
    authors = math_views(solution, "42", "authors")
    assert [v["name"] for v in authors] == ["full", "partial", "answer"]  # M = 3 kept
    ours = math_views(solution, "42")
    assert [v["name"] for v in ours] == ["full", "answer"]  # ours masks the view instead
    assert ours == math_views(solution, "42", "ours")


def test_prefix_never_takes_the_whole_text_and_a_lone_box_gives_the_notice_alone():
    assert kept_part(authors_partial_view("ab \\boxed{1}")) == "a"  # ceil(2/2) = 1 < 2
    assert kept_part(authors_partial_view("x \\boxed{1}")) == "x"  # one character: kept whole
    assert authors_partial_view("\\boxed{5}") == THEIR_NOTICE


def test_default_partial_view_is_unchanged():
    solution = "Step one.\n\nStep two.\n\nStep three.\n\nStep four.\n\nSo the answer is $\\boxed{91}$."
    assert math_views(solution, "91")[1] == {"name": "partial", "text": "Step one.\n\nStep two."}
    # theirs counts "So the answer is $$." as a fifth segment and keeps ceil(5 / 2) = 3
    assert math_views(solution, "91", "authors")[1] == {
        "name": "partial",
        "text": "Step one.\n\nStep two.\n\nStep three.\n\n" + THEIR_NOTICE,
    }


def _jsonl(path, rows):
    with open(path, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return str(path)


ROWS = [
    {"problem": "What is 40 + 2?", "solution": "Adding gives 42 \\boxed{42}"},
    {"problem": "What is 6 * 7?", "solution": "Six sevens.\n\nThat is 42.\n\n\\boxed{42}"},
    {"problem": "What is 50 - 8?", "solution": "Take away 8.\nSo 42.\nThus \\boxed{42}"},
]


def _partial_views(out):
    rows = pq.read_table(os.path.join(out, "train.parquet")).to_pylist()
    return {r["extra_info"]["problem"]: {v["name"]: v["text"] for v in r["extra_info"]["views"]} for r in rows}


def test_prep_math_authors_option_keeps_every_row_at_three_views(tmp_path):
    data = _jsonl(tmp_path / "rows.jsonl", ROWS)
    common = ["math", data, "--format", "generic", "--solution-key", "solution", "--val-size", "0", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "ours")]) == 0
    assert main([*common, "--out", str(tmp_path / "authors"), "--partial-view", "authors"]) == 0
    ours, authors = _partial_views(tmp_path / "ours"), _partial_views(tmp_path / "authors")
    assert "partial" not in ours["What is 40 + 2?"]  # default: one step, no partial view
    assert all(list(views) == ["full", "partial", "answer"] for views in authors.values())
    assert all(views["partial"].endswith(THEIR_NOTICE) for views in authors.values())
    assert kept_part(authors["What is 6 * 7?"]["partial"]) == "Six sevens."  # 2 segments -> 1
    assert kept_part(authors["What is 50 - 8?"]["partial"]) == "Take away 8. So 42."  # no step marks: 3 sentences -> 2
    manifest = json.loads((tmp_path / "authors" / "manifest.json").read_text())
    assert manifest["options"]["partial_view"] == "authors"


def test_authors_partial_view_needs_worked_solutions(tmp_path, capsys):
    data = _jsonl(tmp_path / "rows.jsonl", [{"problem": "What is 40 + 2?", "answer": "42"}])
    argv = ["math", data, "--format", "generic", "--answer-key", "answer", "--out", str(tmp_path / "o"), "--quiet"]
    assert main([*argv, "--partial-view", "authors"]) == 2
    err = capsys.readouterr().err
    assert "--partial-view authors" in err and "--format generic" in err and "--solution-key" in err
    assert main([*argv, "--partial-view", "theirs"]) == 2
    assert "--partial-view" in capsys.readouterr().err


# Random solutions from the pieces the rule reacts to: whatever the mix, a non-empty solution keeps
# all three views, the partial view ends with the notice, and what it keeps is the start of the
# solution (with its last box removed; whitespace aside), never all of it.
PIECES = ["a", "b c", " ", "\n", "\n\n", ".", "! ", "? ", "1.", "2)", "- ", "* ", "•", "\\boxed{", "{", "}", "\t", "3.5"]


@settings(max_examples=400, deadline=None)
@given(pieces=st.lists(st.sampled_from(PIECES), min_size=1, max_size=30))
def test_any_solution_keeps_three_views_and_a_strict_prefix(pieces):
    solution = "".join(pieces)
    if not solution.strip():
        return
    views = {v["name"]: v["text"] for v in math_views(solution, "1", "authors")}
    assert list(views) == ["full", "partial", "answer"]
    rest = without_last_box(solution)
    if not rest:
        assert views["partial"] == THEIR_NOTICE
        return
    kept = kept_part(views["partial"])
    compact = lambda text: "".join(text.split())  # noqa: E731
    assert kept and compact(rest).startswith(compact(kept))
    if len(rest) > 1:  # rest is stripped: dropping its last segment or character drops a visible one
        assert len(compact(kept)) < len(compact(rest))
