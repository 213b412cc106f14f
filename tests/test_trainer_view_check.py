"""The AVSD trainer checks the first batch's rows against algorithm.avsd.views before the teacher
step (a misspelt view trained with that view masked in every row), and only the first batch."""

import types

import pytest

import verl_avsd.verl_trainer_seam as seam
from verl_avsd.config import avsd_config
from verl_avsd.trainer import AvsdTrainer
from verl_avsd.workers.teacher_context import ViewDataError

VIEWS = [{"name": "full", "text": "12 + 30 = 42"}, {"name": "partial", "text": "12 + 30"}, {"name": "answer", "text": "42"}]


class TeacherStepReached(Exception):
    pass


def _trainer(views):
    t = object.__new__(AvsdTrainer)  # no Ray, no workers: only the advantage step's first lines run
    t.avsd = avsd_config({"avsd": {"views": views}})
    t.estimator, t.needs_teacher = "avsd", True
    t.timing_raw = {}

    def teacher_step(*_):
        raise TeacherStepReached

    t._compute_view_log_probs = teacher_step
    return t


@pytest.fixture
def rows(monkeypatch):
    rows = [{"index": i, "views": VIEWS} for i in range(4)]
    fetched = []

    def kv_batch_get(keys, partition_id, select_fields):
        fetched.append(select_fields)
        return {"extra_info": rows}

    monkeypatch.setattr(seam.tq, "kv_batch_get", kv_batch_get)
    return fetched


BATCH = types.SimpleNamespace(keys=["k0", "k1", "k2", "k3"], partition_id="train")


def test_misspelt_view_fails_before_the_teacher_step_naming_the_views_found(rows):
    with pytest.raises(ViewDataError, match=r"'partail'.*views found in the rows: \['answer', 'full', 'partial'\]"):
        _trainer(["full", "partail", "answer"])._compute_advantage(BATCH, {})


def test_good_views_reach_the_teacher_step_and_are_checked_once(rows):
    t = _trainer(["full", "partial", "answer"])
    for _ in range(2):
        with pytest.raises(TeacherStepReached):
            t._compute_advantage(BATCH, {})
    assert rows == [["extra_info"]]  # the rows were fetched for the check on the first batch only
