import pytest
from omegaconf import OmegaConf

from verl_avsd.config import AvsdConfigError, avsd_config, default_config


def test_defaults_when_absent():
    cfg = avsd_config(OmegaConf.create({"adv_estimator": "avsd"}))
    assert list(cfg.views) == ["full", "partial", "answer"] and cfg.teacher == "ref"
    assert cfg == default_config()


def test_override_and_custom_view_title():
    cfg = avsd_config({"avsd": {"views": ["full", "mine"], "view_titles": {"mine": "My view"}, "teacher": "current"}})
    assert list(cfg.views) == ["full", "mine"] and cfg.view_titles.mine == "My view" and cfg.teacher == "current"
    assert cfg.view_titles.full == default_config().view_titles.full


@pytest.mark.parametrize(
    "avsd,match",
    [
        ({"gate_open_treshold": 0.4}, "did you mean algorithm.avsd.gate_open_threshold"),
        ({"teacher": "reference"}, "teacher must be one of"),
        ({"views": []}, "non-empty list"),
        ({"views": ["full", "full"]}, "distinct"),
        ({"views": ["answer"]}, "opsd_view='full' is not in"),
        ({"token_budget": 0}, "token_budget must be positive"),
        ({"share_prefix_min_tokens": -1}, "share_prefix_min_tokens must be >= 0"),
        ({"rlsd_lam": 1.5}, "rlsd_lam"),
        ({"epistemic_tau": -1}, "epistemic_tau"),
        ({"view_template": "no placeholders"}, "view_template must contain"),
    ],
)
def test_bad_settings_name_the_key(avsd, match):
    with pytest.raises(AvsdConfigError, match=match):
        avsd_config({"avsd": avsd})
