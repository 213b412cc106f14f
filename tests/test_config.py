import dataclasses

import pytest
from omegaconf import OmegaConf

from verl_avsd.config import AvsdConfigError, avsd_config, default_config


def test_defaults_when_absent():
    cfg = avsd_config(OmegaConf.create({"adv_estimator": "avsd"}))
    assert list(cfg.views) == ["full", "partial", "answer"] and cfg.teacher == "ref"
    assert cfg == default_config()


def test_defaults_pass_their_own_checks():
    assert avsd_config({"avsd": {}}) == default_config()


def test_override_and_custom_view_title():
    cfg = avsd_config({"avsd": {"views": ["full", "mine"], "view_titles": {"mine": "My view"}, "teacher": "current"}})
    assert list(cfg.views) == ["full", "mine"] and cfg.view_titles["mine"] == "My view" and cfg.teacher == "current"
    assert cfg.view_titles["full"] == default_config().view_titles["full"]


@pytest.mark.parametrize(
    "avsd,match",
    [
        ({"gate_open_treshold": 0.4}, "did you mean algorithm.avsd.gate_open_threshold"),
        ({"teacher": "reference"}, "teacher must be one of"),
        ({"views": []}, "non-empty list"),
        ({"views": ["full", "full"]}, "distinct"),
        ({"views": ["answer"]}, "opsd_view='full' is not in"),
        ({"token_budget": 0}, "token_budget must be a positive integer"),
        ({"share_prefix_min_tokens": -1}, "share_prefix_min_tokens must be an integer >= 0"),
        ({"rlsd_lam": 1.5}, "rlsd_lam"),
        ({"epistemic_tau": -1}, "epistemic_tau"),
        ({"view_template": "no placeholders"}, "view_template must contain"),
    ],
)
def test_bad_settings_name_the_key(avsd, match):
    with pytest.raises(AvsdConfigError, match=match):
        avsd_config({"avsd": avsd})


# ---- every key with wrong types, inf/nan, negatives and empty strings: a config-time error that
# names the key (before: 87 of these raised TypeError/ValueError/OverflowError tracebacks from
# int()/float()/str.replace deep in validation or later, and 160 ran silently) ----

INF, NAN = float("inf"), float("nan")
NOT_A_NUMBER = [None, "", "  ", "abc", "1", True, [1], {"a": 1}, INF, -INF, NAN]
BAD_VALUES = {
    "views": [None, "full", "", 3, INF, True, {"a": 1}, [], ["full", ""], ["full", 3], ["full", " partial"], [None]],
    "opsd_view": [None, "", 3, ["full"], "partail"],
    "teacher": [None, "", "reference", 1, True, ["ref"]],
    "teacher_placement": [None, "", "gpu", "Rollout", 1, ["rollout"]],
    "view_template": [
        None,
        "",
        3,
        INF,
        True,
        ["{prompt}{view}"],
        {"a": 1},
        "{prompt}",
        "{view}",
        "{prompt} {view} {veiw}",
        "{prompt} {view} }",
        "{prompt} {view} {",
        "{prompt.upper} {view}",
        "{} {prompt} {view}",
        "{prompt} {view:d}",
        "{prompt[0]} {view}",
    ],
    "view_titles": [None, "", "abc", 3, INF, True, [1], {"full": 3}, {"full": ""}, {"mine": None}],
    "teacher_chat_template_kwargs": [
        "",
        "enable_thinking=true",
        3,
        INF,
        True,
        [1],
        {"tokenize": True},
        {"add_generation_prompt": False},
        {"1x": 1},
    ],
    "max_view_tokens": NOT_A_NUMBER + [0, -1, 3.7, 1e30],
    "token_budget": NOT_A_NUMBER + [0, -5, 0.5, 2**40],
    "logprob_chunk_tokens": NOT_A_NUMBER + [0, -1, 1.5],
    "share_prefix_min_tokens": NOT_A_NUMBER + [-1, -0.5, 3.7],
    "teacher_stream_tokens": NOT_A_NUMBER + [-1, -0.5, 3.7],
    "teacher_group_by_prompt": [None, "", "yes", "true", 1, 0, INF, [True], {"a": 1}],
    "epistemic_tau": NOT_A_NUMBER + [-1, -1e-9],
    "epistemic_markers": [
        None,
        "",
        "wait",
        3,
        INF,
        True,
        {"a": 1},
        [],
        [""],
        ["  "],
        ["wait", None],
        ["wait", 3],
        ["wait", ["hmm"]],
        ["..."],
        ["wait", "Wait"],
        ["let me  check", "let me check"],
        ["it's", "it\u2019s"],
    ],
    "rlsd_lam": NOT_A_NUMBER + [-0.1, 1.5],
    "rlsd_eps_w": NOT_A_NUMBER + [-0.1, 1.0, 2],
    "wrong_below": NOT_A_NUMBER,
    "credit_top_k": NOT_A_NUMBER + [0, -20, 2.5],
    "gate_open_threshold": NOT_A_NUMBER + [-0.1, 1.5],
    "dump_rollouts_dir": ["", "  ", 3, -1, 0, INF, True, False, [1], {"a": 1}],
    "sandbox_isolation": [None, "", "docker", "BWRAP", 1, True, ["auto"]],
    "sandbox_max_concurrent": ["", "abc", "4", True, 0, -1, 2.5, INF, NAN, [1], {"a": 1}],
    "sandbox_fusion_url": ["", "localhost:8080", 8080, True, INF, ["http://x"]],
}
GOOD_VALUES = {
    "views": [["full"], ["reference", "hint", "feedback"]],
    "view_template": ["{view}{prompt}", "{prompt} {{literal}} {view_name}/{view_title}: {view}", "{prompt!s} {view:>3}"],
    "view_titles": [{"full": "Worked solution"}, {}],
    "teacher_chat_template_kwargs": [None, {"enable_thinking": True}, {}],
    "token_budget": [1, 16000.0],  # hydra reads 1.6e4 as a float
    "share_prefix_min_tokens": [0],
    "teacher_stream_tokens": [0, 8, 64.0],
    "teacher_group_by_prompt": [False],
    "teacher_placement": ["actor", "rollout"],
    "epistemic_tau": [0, 0.5],
    "epistemic_markers": [["wait"], ["hmm", "let me check", "peut-être", "vérifions", "2nd thought"]],
    "rlsd_lam": [0, 1],
    "rlsd_eps_w": [0, 0.99],
    "wrong_below": [-1, 0, 0.5],
    "gate_open_threshold": [0, 1],
    "dump_rollouts_dir": [None, "/tmp/rollouts"],
    "sandbox_isolation": ["bwrap", "unshare"],
    "sandbox_max_concurrent": [None, 4],
    "sandbox_fusion_url": [None, "http://host:8080/run_code"],
}


def test_every_default_key_is_fuzzed():
    assert set(BAD_VALUES) == {f.name for f in dataclasses.fields(default_config())}


@pytest.mark.parametrize("key,value", [(k, v) for k, vs in BAD_VALUES.items() for v in vs], ids=repr)
def test_bad_value_is_a_config_error_naming_the_key(key, value):
    with pytest.raises(AvsdConfigError) as e:
        avsd_config({"avsd": {key: value}})
    assert f"algorithm.avsd.{key}" in str(e.value)


@pytest.mark.parametrize("key,value", [(k, v) for k, vs in GOOD_VALUES.items() for v in vs], ids=repr)
def test_good_value_is_accepted(key, value):
    extra = {"opsd_view": value[0]} if key == "views" else {}
    cfg = avsd_config({"avsd": {key: value, **extra}})
    got = cfg.to_dict()[key]  # plain data: lists as lists
    if key == "view_titles":
        assert all(got[k] == v for k, v in value.items())
    else:  # typed as the field: counts int, numbers float
        field_type = {f.name: f.type for f in dataclasses.fields(cfg)}[key]
        assert got == value and type(got) is {"int": int, "float": float}.get(field_type, type(value))


def test_sandbox_fusion_needs_its_url():
    with pytest.raises(AvsdConfigError, match="sandbox_isolation=sandbox_fusion needs algorithm.avsd.sandbox_fusion_url"):
        avsd_config({"avsd": {"sandbox_isolation": "sandbox_fusion"}})
    cfg = avsd_config({"avsd": {"sandbox_isolation": "sandbox_fusion", "sandbox_fusion_url": "https://h/run_code"}})
    assert cfg.sandbox_isolation == "sandbox_fusion"


def test_isolations_match_the_sandbox():
    from verl_avsd.config import SANDBOX_ISOLATIONS
    from verl_avsd.sandbox.runner import ISOLATIONS

    assert SANDBOX_ISOLATIONS == ISOLATIONS


@pytest.mark.parametrize("avsd", [5, [1], "views=[full]"])
def test_avsd_itself_must_be_a_mapping(avsd):
    with pytest.raises(AvsdConfigError, match="algorithm.avsd must be a mapping"):
        avsd_config({"avsd": avsd})


def test_unresolvable_interpolation_is_a_config_error():
    algo = OmegaConf.create({"avsd": {"dump_rollouts_dir": "${trainer.default_local_dir}/rollouts"}})
    with pytest.raises(AvsdConfigError, match="algorithm.avsd"):
        avsd_config(algo)


def test_command_line_newline_in_template_becomes_a_newline():
    assert avsd_config({"avsd": {"view_template": "{prompt}\\n{view}"}}).view_template == "{prompt}\n{view}"
