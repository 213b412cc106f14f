"""`row_name`: the one way a message names a row, for a row of an input file (data prep), of a
training batch (teacher contexts) and of a scored response (rewards)."""

import pytest

from verl_avsd.data_prep.errors import BadInputError, row_name
from verl_avsd.rewards import code_score
from verl_avsd.sandbox.judge import MalformedTests
from verl_avsd.workers.teacher_context import ViewDataError, views_of_row


@pytest.mark.parametrize(
    "args,kwargs,name",
    [
        # a row of a file data prep reads (0-based row, 1-based JSONL line)
        ((), {"row": 3}, "row 3"),
        ((), {"row": 3, "line": 4}, "row 3 (line 4)"),
        # a row of a batch, from its extra_info
        (({"index": 7, "split": "train"}, 3), {}, "train row 7 [batch position 3]"),
        (
            ({"index": 7, "split": "train", "problem_id": "p-7"},),
            {"data_source": "code/toy"},
            "code/toy train row 7 (problem p-7)",
        ),
        (({"index": 7},), {"data_source": "code/x"}, "code/x row 7"),  # no split: no "row row 7"
        (({"split": "eval"},), {"data_source": "math/x"}, "math/x eval row ?"),  # no index
        (({}, 3), {}, "batch position 3"),
        ((None, 0), {}, "batch position 0"),  # extra_info that is not a struct
        (("views",), {}, "row ?"),
        ((), {}, "row ?"),
    ],
)
def test_row_name(args, kwargs, name):
    assert row_name(*args, **kwargs) == name


def test_every_caller_names_rows_with_it():
    error = BadInputError("data.jsonl", "expected text", row=3, line=4, field="prompt")
    assert str(error) == "data.jsonl: row 3 (line 4): field 'prompt': expected text"
    with pytest.raises(ViewDataError, match=r"^train row 7 \[batch position 2\]: field extra_info\.views is missing"):
        views_of_row({"index": 7, "split": "train"}, ["full"], 2)
    with pytest.raises(MalformedTests, match=r"^code/x row 7: field reward_model\.ground_truth: has no tests"):
        code_score("print(1)", '{"inputs": [], "outputs": []}', {"index": 7}, data_source="code/x")
