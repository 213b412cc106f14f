"""The estimators as verl sees them: registered by name, reading algorithm.avsd.*, refusing to run
without teacher log-probs."""

import pytest
import torch
from omegaconf import OmegaConf
from verl.trainer.ppo import core_algos

import verl_avsd.estimators as est
from verl_avsd.estimator_facts import teacher_estimators
from verl_avsd.signals import avsd_signals, opsd_advantage


def _batch(B=4, M=3, T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        old_log_probs=-torch.rand(B, T, generator=g) * 3,
        view_logq=-torch.rand(B, M, T, generator=g) * 3,
        view_mask=torch.ones(B, M, dtype=torch.bool),
        response_mask=torch.ones(B, T),
        token_level_rewards=torch.zeros(B, T),
    )


def _algo(**avsd):
    return OmegaConf.create({"adv_estimator": "avsd", "avsd": avsd})


@pytest.mark.parametrize("name", teacher_estimators())
def test_registered_in_verl_and_refuse_without_teacher(name):
    fn = core_algos.get_adv_estimator_fn(name)
    b = _batch()
    with pytest.raises(est.TeacherLogprobsMissing, match="trainer.v1.trainer_mode=avsd_sync"):
        fn(token_level_rewards=b["token_level_rewards"], response_mask=b["response_mask"], config=_algo(), index=None)


def test_avsd_family_values():
    b = _batch()
    s = avsd_signals(b["old_log_probs"], b["view_logq"], b["view_mask"], b["response_mask"])
    kw = {k: b[k] for k in ("old_log_probs", "view_logq", "view_mask")}
    call = lambda name, cfg: core_algos.get_adv_estimator_fn(name)(  # noqa: E731
        token_level_rewards=b["token_level_rewards"], response_mask=b["response_mask"], config=cfg, index=None, **kw
    )
    adv, ret = call("avsd", _algo())
    assert torch.equal(adv, s.advantage) and torch.equal(ret, adv)
    assert torch.equal(call("avsd_consensus", _algo())[0], s.consensus)
    assert torch.equal(call("avsd_arithmetic", _algo())[0], s.arithmetic)
    # opsd reads the configured view only (here the second one, `partial`)
    opsd = call("opsd", _algo(opsd_view="partial"))[0]
    assert torch.allclose(opsd, opsd_advantage(b["old_log_probs"], b["view_logq"][:, 1], b["response_mask"]))


def test_epistemic_term_lowers_advantage_where_views_disagree():
    b = _batch()
    kw = dict(
        student_logp=b["old_log_probs"], view_logq=b["view_logq"], view_mask=b["view_mask"], response_mask=b["response_mask"]
    )
    plain, s = est.token_advantages("avsd", _algo(), **kw)
    tau = 0.3
    with_tau, _ = est.token_advantages("avsd", _algo(epistemic_tau=tau), **kw)
    assert torch.allclose(with_tau, plain - tau * (1 - s.gate))


def test_rlsd_uses_grpo_sign_per_group():
    b = _batch(B=4)
    rewards = torch.zeros(4, 6)
    rewards[0, -1] = 1.0  # group "a": rollout 0 right, rollout 1 wrong
    rewards[2, -1] = 1.0  # group "b": rollout 2 right, rollout 3 wrong
    index = ["a", "a", "b", "b"]
    adv, _ = est.token_advantages(
        "rlsd",
        _algo(rlsd_lam=0.5),
        student_logp=b["old_log_probs"],
        view_logq=b["view_logq"],
        view_mask=b["view_mask"],
        response_mask=b["response_mask"],
        token_level_rewards=rewards,
        index=index,
    )
    assert (adv[[0, 2]] > 0).all() and (adv[[1, 3]] < 0).all()


def test_config_typo_is_an_error_with_a_hint():
    b = _batch()
    with pytest.raises(ValueError, match=r"algorithm\.avsd\.epistemc_tau .*did you mean algorithm\.avsd\.epistemic_tau"):
        est.token_advantages(
            "avsd",
            _algo(epistemc_tau=0.1),
            student_logp=b["old_log_probs"],
            view_logq=b["view_logq"],
            view_mask=b["view_mask"],
            response_mask=b["response_mask"],
        )


@pytest.mark.parametrize("name", teacher_estimators())
def test_sentinel_teacher_logprob_gives_finite_advantages_in_every_estimator(name):
    # float32 finfo.min in one view of one token: dropped like a view the teacher could not
    # score (it gave NaN with two views); every estimator's advantage stays finite and sane
    b = _batch(B=4, M=3)
    b["view_logq"][0, :2, 0] = torch.finfo(torch.float32).min
    b["view_logq"][1, 1, 2] = torch.finfo(torch.float32).max
    rewards = torch.zeros(4, 6)
    rewards[0, -1] = 1.0
    adv, s = est.token_advantages(
        name,
        _algo(opsd_view="partial", epistemic_tau=0.1),
        student_logp=b["old_log_probs"],
        view_logq=b["view_logq"],
        view_mask=b["view_mask"],
        response_mask=b["response_mask"],
        token_level_rewards=rewards,
        index=["a", "a", "b", "b"],
    )
    assert torch.isfinite(adv).all() and adv.abs().max() < 10
    assert s.views_dropped == (2 if name == "opsd" else 3)  # opsd reads `partial` only


def test_epistemic_tau_outside_avsd_is_a_warning_not_silently_ignored(caplog, monkeypatch):
    monkeypatch.setattr(est, "_ignored_tau_warned", set())
    b = _batch()
    kw = dict(
        student_logp=b["old_log_probs"], view_logq=b["view_logq"], view_mask=b["view_mask"], response_mask=b["response_mask"]
    )
    with caplog.at_level("WARNING"):
        est.token_advantages("avsd", _algo(epistemic_tau=0.3), **kw)
        assert not caplog.records  # avsd applies it
        for _ in range(2):
            est.token_advantages("avsd_consensus", _algo(epistemic_tau=0.3), **kw)
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "epistemic_tau=0.3 has no effect with algorithm.adv_estimator=avsd_consensus" in warned[0]
