"""One table of estimator facts (verl_avsd/estimator_facts.py) drives the trainer, the toy runs, the
demo and the report's credit view: the lists they used to keep each equal a read of it, and a row
added to the table shows up in each."""

import dataclasses

import pytest
from verl.trainer.ppo import core_algos

import verl_avsd.credit_view as credit_view
import verl_avsd.estimator_facts as facts
import verl_avsd.estimators as est
from verl_avsd import demo
from verl_avsd.estimator_facts import ESTIMATOR_FACTS, EstimatorFacts
from verl_avsd.toy_run import GROUP_SIZE, ToyRun, rollouts_per_prompt


def test_the_table_holds_what_the_old_lists_held():
    assert set(facts.teacher_estimators()) == {"avsd", "avsd_consensus", "avsd_arithmetic", "opsd", "rlsd"}
    assert facts.demo_estimators() == ("avsd", "opsd", "avsd_consensus", "avsd_arithmetic", "rlsd", "grpo")
    assert facts.credit_methods() == ("avsd", "opsd", "avsd_consensus", "avsd_arithmetic")
    assert facts.estimator_names(needs_groups=True) == ("rlsd", "grpo")
    assert not facts.needs_teacher("gae") and not facts.needs_groups("gae")  # verl's own, not in the table


def test_every_teacher_row_is_registered_into_verl():
    assert set(est.ESTIMATORS) == set(facts.teacher_estimators())
    for name in facts.teacher_estimators():
        assert core_algos.get_adv_estimator_fn(name) is est.ESTIMATORS[name]


@pytest.fixture
def fake_row(monkeypatch):
    """A new estimator in the table: a teacher, groups, offered by the demo, not a credit method."""
    row = EstimatorFacts("fake_est", needs_teacher=True, needs_groups=True, credit_method=False, in_demo=True)
    monkeypatch.setitem(ESTIMATOR_FACTS, row.name, row)
    return row


def test_a_new_row_reaches_the_demo_and_the_toy_runs(fake_row):
    assert demo.parse_args(["--estimator", "fake_est"]).estimator == "fake_est"
    assert rollouts_per_prompt("fake_est") == GROUP_SIZE
    run = ToyRun(model_dir="m", train_file="t", val_file="v", run_dir="r", estimator="fake_est")
    overrides = run.overrides()
    assert f"actor_rollout_ref.rollout.n={GROUP_SIZE}" in overrides
    assert any(o.startswith("+algorithm.avsd.view_template") for o in overrides)  # a teacher run: the views' template
    assert facts.needs_teacher("fake_est") and "fake_est" in facts.teacher_estimators()


def test_a_row_off_the_demo_is_refused_by_it(monkeypatch, capsys):
    monkeypatch.setitem(ESTIMATOR_FACTS, "grpo", dataclasses.replace(ESTIMATOR_FACTS["grpo"], in_demo=False))
    with pytest.raises(SystemExit):
        demo.parse_args(["--estimator", "grpo"])
    assert "invalid choice: 'grpo'" in capsys.readouterr().err
    assert rollouts_per_prompt("grpo") == GROUP_SIZE  # its other facts unchanged


def test_the_credit_view_draws_the_credit_methods_of_the_table(monkeypatch):
    row = {
        "views": ["full", "answer"],
        "view_mask": [1, 1],
        "response_ids": [5, 6, 7],
        "response_mask": [1, 1, 1],
        "student_logp": [-1.0, -0.5, -2.0],
        "view_logq": [[-0.5, -0.6, -1.0], [-0.7, -0.4, -3.0]],
        "reward": 0.0,
    }
    advantages, _ = credit_view.credit_advantages(row, {})
    assert tuple(advantages) == facts.credit_methods()
    monkeypatch.setitem(ESTIMATOR_FACTS, "rlsd", dataclasses.replace(ESTIMATOR_FACTS["rlsd"], credit_method=True))
    monkeypatch.setitem(ESTIMATOR_FACTS, "opsd", dataclasses.replace(ESTIMATOR_FACTS["opsd"], credit_method=False))
    with pytest.raises(ValueError, match="rlsd needs token_level_rewards"):  # the table asked for it: it was run
        credit_view.credit_advantages(row, {})
    monkeypatch.setitem(ESTIMATOR_FACTS, "rlsd", dataclasses.replace(ESTIMATOR_FACTS["rlsd"], credit_method=False))
    advantages, _ = credit_view.credit_advantages(row, {})
    assert tuple(advantages) == ("avsd", "avsd_consensus", "avsd_arithmetic")
