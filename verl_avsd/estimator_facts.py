"""What each advantage estimator the project runs needs and offers, in one table.

Every place that branches on the estimator's name reads it here: the trainer (does it score the
views with a teacher?), the toy runs (does it sample a group of rollouts per prompt?), the report's
token-credit view (which methods it recomputes from a rollout dump) and the demo (`--estimator`
choices). The AVSD family is registered into verl from the teacher rows (verl_avsd.estimators);
`grpo` is verl's own.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EstimatorFacts:
    name: str  # algorithm.adv_estimator
    needs_teacher: bool  # the trainer scores every rollout under each view (a teacher forward pass)
    needs_groups: bool  # a group-relative baseline: actor_rollout_ref.rollout.n > 1 rollouts per prompt
    credit_method: bool  # recomputed from a dump in the report's token-credit view (needs only the dump)
    in_demo: bool  # offered by `verl-avsd demo --estimator`


# In the order the demo lists them and the credit view draws them.
ESTIMATOR_FACTS: dict[str, EstimatorFacts] = {
    facts.name: facts
    for facts in (
        EstimatorFacts("avsd", needs_teacher=True, needs_groups=False, credit_method=True, in_demo=True),
        EstimatorFacts("opsd", needs_teacher=True, needs_groups=False, credit_method=True, in_demo=True),
        EstimatorFacts("avsd_consensus", needs_teacher=True, needs_groups=False, credit_method=True, in_demo=True),
        EstimatorFacts("avsd_arithmetic", needs_teacher=True, needs_groups=False, credit_method=True, in_demo=True),
        # rlsd scales a GRPO advantage (needs the group and the rewards) by the teacher's gap
        EstimatorFacts("rlsd", needs_teacher=True, needs_groups=True, credit_method=False, in_demo=True),
        EstimatorFacts("grpo", needs_teacher=False, needs_groups=True, credit_method=False, in_demo=True),
    )
}


def estimator_names(**wanted: bool) -> tuple[str, ...]:
    """The table's names whose facts match, in table order, e.g. estimator_names(needs_teacher=True)."""
    return tuple(name for name, facts in ESTIMATOR_FACTS.items() if all(getattr(facts, k) == v for k, v in wanted.items()))


def needs_teacher(estimator: str) -> bool:
    """False for any estimator not in the table (verl's own: gae, reinforce_plus_plus, ...)."""
    facts = ESTIMATOR_FACTS.get(estimator)
    return facts is not None and facts.needs_teacher


def needs_groups(estimator: str) -> bool:
    facts = ESTIMATOR_FACTS.get(estimator)
    return facts is not None and facts.needs_groups


def teacher_estimators() -> tuple[str, ...]:
    return estimator_names(needs_teacher=True)


def credit_methods() -> tuple[str, ...]:
    return estimator_names(credit_method=True)


def demo_estimators() -> tuple[str, ...]:
    return estimator_names(in_demo=True)
