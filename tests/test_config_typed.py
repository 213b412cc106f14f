"""AvsdConfig: typed, frozen, parsed once (the trainer), handed as the object to the estimator and
as plain data (to_dict / from_dict) across the worker transport."""

import dataclasses
import pickle
import re

import pytest
import torch
from omegaconf import OmegaConf

import verl_avsd.config as config_module
import verl_avsd.estimators as est
from verl_avsd.config import DEFAULTS_PATH, AvsdConfig, AvsdConfigError, avsd_config, default_config


def test_fields_are_the_yaml_keys_and_typed_as_the_defaults():
    yaml = OmegaConf.to_container(OmegaConf.load(DEFAULTS_PATH))
    cfg = default_config()
    assert [f.name for f in dataclasses.fields(AvsdConfig)] == list(yaml)  # same keys, yaml's order
    for f in dataclasses.fields(AvsdConfig):
        value = getattr(cfg, f.name)
        if f.type.startswith("tuple["):
            assert isinstance(value, tuple) and list(value) == yaml[f.name]
        elif f.type in ("int", "float", "bool", "str"):
            assert type(value) is {"int": int, "float": float, "bool": bool, "str": str}[f.type], f.name


def test_every_yaml_key_keeps_its_comment():
    """The yaml stays the documentation of each key: a comment above it or on its line."""
    lines = DEFAULTS_PATH.read_text().splitlines()
    for f in dataclasses.fields(AvsdConfig):
        i = next(i for i, line in enumerate(lines) if re.match(rf"{f.name}:", line))
        above = [line for line in lines[max(0, i - 3) : i] if line.startswith("#") or re.match(r"\w+:.*#", line)]
        assert "#" in lines[i] or above, f"{f.name} has no comment in {DEFAULTS_PATH}"


def test_frozen_assignment_raises():
    cfg = avsd_config({"avsd": {"views": ["full", "mine"], "view_titles": {"mine": "Mine"}}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.views = ("full",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.credit_top_k = 5
    with pytest.raises(TypeError, match="read-only"):
        cfg.view_titles["mine"] = "Other"
    with pytest.raises(TypeError, match="read-only"):
        cfg.view_titles.update(full="x")
    with pytest.raises(AttributeError):
        cfg.views.append("x")  # a tuple
    assert cfg.view_titles["mine"] == "Mine" and cfg.views == ("full", "mine")


def test_replace_is_how_a_run_changes_one():
    cfg = default_config()
    opsd = dataclasses.replace(cfg, views=(cfg.opsd_view,))
    assert opsd.views == ("full",) and cfg.views == ("full", "partial", "answer")
    assert default_config().views == ("full", "partial", "answer")  # the shared defaults untouched


def test_pickles_and_round_trips_through_plain_data():
    cfg = avsd_config({"avsd": {"views": ["full", "mine"], "view_titles": {"mine": "Mine"}, "epistemic_tau": 0.5}})
    assert pickle.loads(pickle.dumps(cfg)) == cfg  # Ray sends it this way
    plain = cfg.to_dict()
    assert plain["views"] == ["full", "mine"] and type(plain["view_titles"]) is dict
    assert OmegaConf.create(plain).views == ["full", "mine"]  # plain data: OmegaConf takes it
    assert AvsdConfig.from_dict(plain) == cfg
    assert AvsdConfig.from_dict(pickle.loads(pickle.dumps(plain))) == cfg


@pytest.mark.parametrize(
    "bad,match",
    [
        (None, "expected the mapping AvsdConfig.to_dict"),
        ("views=[full]", "expected the mapping"),
        ({"views": ["full"]}, r"missing \['opsd_view'"),
        ({**default_config().to_dict(), "gate_open_treshold": 0.5}, r"unknown \['gate_open_treshold'\]"),
    ],
)
def test_from_dict_names_what_is_wrong(bad, match):
    with pytest.raises(AvsdConfigError, match=match) as e:
        AvsdConfig.from_dict(bad)
    assert "algorithm.avsd" in str(e.value)


def test_a_parsed_config_passes_through_unparsed():
    cfg = avsd_config({"avsd": {"views": ["full"]}})
    assert avsd_config(cfg) is cfg and avsd_config({"avsd": cfg}) is cfg


def _inputs(M=3):
    g = torch.Generator().manual_seed(0)
    B, T = 4, 6
    return {
        "student_logp": -torch.rand(B, T, generator=g),
        "view_logq": -torch.rand(B, M, T, generator=g),
        "view_mask": torch.ones(B, M, dtype=torch.bool),
        "response_mask": torch.ones(B, T),
        "token_level_rewards": torch.zeros(B, T),
        "index": ["a", "a", "b", "b"],
    }


def test_estimator_given_the_object_does_not_parse(monkeypatch):
    cfg = avsd_config({"avsd": {"epistemic_tau": 0.1}})
    calls = []
    real = config_module._parsed_node
    monkeypatch.setattr(config_module, "_parsed_node", lambda user: calls.append(user) or real(user))
    for _ in range(3):  # three steps
        for name in ("avsd", "opsd", "rlsd"):
            est.token_advantages(name, cfg, **_inputs())
    assert calls == []
    # verl's own call path hands the raw `algorithm` config: parsed there, once per call
    est.ESTIMATORS["avsd"](
        torch.zeros(4, 6), torch.ones(4, 6), {"avsd": {"epistemic_tau": 0.1}},
        old_log_probs=_inputs()["student_logp"], view_logq=_inputs()["view_logq"], view_mask=_inputs()["view_mask"],
    )  # fmt: skip
    assert calls == [{"epistemic_tau": 0.1}]


def test_object_and_raw_config_give_the_same_advantages():
    raw = {"avsd": {"views": ["a", "b", "c"], "opsd_view": "b", "rlsd_lam": 0.3}}
    cfg = avsd_config(raw)
    for name in ("avsd", "opsd", "avsd_consensus", "avsd_arithmetic", "rlsd"):
        torch.testing.assert_close(
            est.token_advantages(name, raw, **_inputs())[0], est.token_advantages(name, cfg, **_inputs())[0]
        )


def test_trainer_parses_once_and_opsd_scores_its_one_view(monkeypatch):
    from verl_avsd import trainer as trainer_module
    from verl_avsd.estimator_facts import ESTIMATOR_FACTS, EstimatorFacts

    monkeypatch.setattr(trainer_module.PPOTrainerSync, "__init__", lambda self, config: None)
    monkeypatch.setattr(trainer_module, "failure_limit", lambda config: 3, raising=False)
    calls = []
    real = config_module._parsed_node
    monkeypatch.setattr(config_module, "_parsed_node", lambda user: calls.append(user) or real(user))

    def config(estimator):
        return OmegaConf.create({"algorithm": {"adv_estimator": estimator, "avsd": {"views": ["full", "answer"]}},
                                 "actor_rollout_ref": {"rollout": {"n": 1}}})  # fmt: skip

    t = trainer_module.AvsdTrainer(config("opsd"))
    assert isinstance(t.avsd, AvsdConfig) and t.avsd.views == ("full",) and t.needs_teacher
    assert len(calls) == 1
    assert not trainer_module.AvsdTrainer(config("grpo")).needs_teacher
    monkeypatch.setitem(ESTIMATOR_FACTS, "fake_est", EstimatorFacts("fake_est", True, False, False, False))
    assert trainer_module.AvsdTrainer(config("fake_est")).needs_teacher  # the table decides
