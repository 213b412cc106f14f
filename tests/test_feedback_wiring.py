"""How the trainer turns rollouts into the `feedback` view and the worker adds it to a row's views."""

from verl_avsd.config import avsd_config
from verl_avsd.data_prep.contract import tests_json as make_tests  # aliased: pytest collects test*
from verl_avsd.feedback_view import feedback_for_rollouts
from verl_avsd.workers.teacher_context import views_of_row, with_rollout_view

PUBLIC = make_tests(["2 3\n"], ["5\n"])


def _info(i, public=PUBLIC):
    return {
        "index": i,
        "views": [{"name": "reference", "text": "print(sum(map(int, input().split())))"}],
        "public_tests": public,
        "time_limit_s": 2.0,
        "memory_mb": 256,
        "language": "python",
    }


def test_feedback_per_rollout_and_no_view_without_program():
    cfg = avsd_config({"avsd": {"views": ["reference", "feedback"], "opsd_view": "reference"}})
    responses = [
        "```python\nprint(sum(map(int, input().split())))\n```",  # passes
        "```python\nprint(7)\n```",  # wrong answer
        "I don't know.",  # no program: no feedback view
        "```python\nprint(1)\n```",  # a row with no public tests: no feedback view
    ]
    infos = [_info(0), _info(1), _info(2), _info(3, public=None)]
    views, metrics = feedback_for_rollouts(responses, infos, cfg)
    assert "pass" in views[0].lower()
    assert "5" in views[1] and "7" in views[1]  # expected and actual output of the failing input
    assert views[2] == "" and views[3] == ""
    assert 0.0 < metrics["feedback/view_rate"] < 1.0
    # the worker's side: the rollout's feedback joins the row's views; "" adds none (masked)
    rows = [with_rollout_view(i, "feedback", v) for i, v in zip(infos, views)]
    assert views_of_row(rows[1], ["reference", "feedback"], 1)[1] == views[1]
    assert views_of_row(rows[2], ["reference", "feedback"], 2)[1] is None
    assert infos[1]["views"] == _info(1)["views"]  # the shared row is not modified
