"""Math and code rewards: equivalent answers agree, programs are judged on hidden tests in the
sandbox, bad rows are clear errors, and verl's own reward path calls the function correctly."""

import json
import shutil

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from verl_avsd.rewards import REWARD_KEYS, code_score, compute_score, math_score
from verl_avsd.sandbox.judge import MalformedTests, extract_program, normalize_output

HAS_GXX = shutil.which("g++") is not None
ROW = {"index": 7, "split": "train", "problem_id": "p-7", "time_limit_s": 2.0, "memory_mb": 256.0, "language": "python"}
ADD_TESTS = json.dumps({"inputs": ["1 2\n", "3 4\n", "10 -3\n"], "outputs": ["3\n", "7\n", "7\n"]})


def fenced(code: str, tag: str = "python") -> str:
    return f"Here is my solution.\n```{tag}\n{code}\n```\n"


# -- math ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "response, ground_truth",
    [
        (r"The answer is $\boxed{\frac{1}{2}}$.", "0.5"),
        (r"\boxed{0.5}", r"\frac{1}{2}"),
        (r"\boxed{1/2}", r"\dfrac{1}{2}"),
        (r"So we get \boxed{\dfrac12}", "1/2"),
        (r"$\boxed{x^2+2x+1}$", "(x+1)^2"),
        (r"\boxed{\sqrt{2}/2}", r"\frac{\sqrt{2}}{2}"),
        (r"\boxed{(1,2)}", "(1, 2)"),
        (r"\boxed{\{1,2\}}", r"\{2,1\}"),
        (r"Therefore \boxed{3}.", r"\boxed{3}"),
        (r"\boxed{2\pi}", r"2\pi"),
        ("After simplifying, the result is 7", "7"),
    ],
)
def test_equivalent_math_answers_score_one(response, ground_truth):
    result = math_score(response, ground_truth)
    assert result == {"score": 1.0, "acc": 1.0, "pass_rate": 1.0, "status": "correct"}


@pytest.mark.parametrize(
    "response, ground_truth",
    [
        (r"\boxed{3}", "4"),
        (r"\boxed{0.333}", "1/3"),
        (r"\boxed{x+1}", "x-1"),
        (r"maybe \boxed{3} or \boxed{4}", "4"),  # hedging with two answers is not the answer
    ],
)
def test_different_math_answers_score_zero(response, ground_truth):
    result = math_score(response, ground_truth)
    assert result["score"] == 0.0 and result["acc"] == 0.0 and result["status"] == "wrong"


def test_a_response_without_an_answer_says_so():
    assert math_score("I am not sure how to proceed.", "4") == {
        "score": 0.0,
        "acc": 0.0,
        "pass_rate": 0.0,
        "status": "no_answer",
    }


# -- code ----------------------------------------------------------------------------------


def test_correct_program_passes_every_hidden_test():
    result = code_score(fenced("a, b = map(int, input().split())\nprint(a + b)"), ADD_TESTS, ROW)
    assert result == {"score": 1.0, "acc": 1.0, "pass_rate": 1.0, "status": "ok"}


def test_wrong_program_fails():
    result = code_score(fenced("a, b = map(int, input().split())\nprint(a - b)"), ADD_TESTS, ROW)
    assert result == {"score": 0.0, "acc": 0.0, "pass_rate": 0.0, "status": "wrong_answer"}


def test_partial_program_gets_the_share_or_nothing():
    code = fenced("a, b = map(int, input().split())\nprint(a + b if b > 0 else 0)")
    share = code_score(code, ADD_TESTS, ROW)
    assert share == {
        "score": pytest.approx(2 / 3),
        "acc": 0.0,
        "pass_rate": pytest.approx(2 / 3),
        "status": "wrong_answer",
    }
    strict = code_score(code, ADD_TESTS, ROW, all_or_nothing=True)
    assert strict["score"] == 0.0 and strict["acc"] == 0.0 and strict["status"] == "wrong_answer"


def test_output_comparison_tolerates_trailing_spaces_and_line_ends():
    sloppy = fenced("a, b = map(int, input().split())\nprint(str(a + b) + '   ', end='\\r\\n\\r\\n\\n')")
    assert code_score(sloppy, ADD_TESTS, ROW)["acc"] == 1.0
    inner_spaces = json.dumps({"inputs": [""], "outputs": ["1 2\n"]})
    assert code_score(fenced("print('1  2')"), inner_spaces, ROW)["acc"] == 0.0  # only trailing space is free
    assert normalize_output("a \r\nb\t\r\n\n") == normalize_output("a\nb") == "a\nb"


def test_the_last_program_block_is_the_program():
    response = (
        fenced("print('draft')") + fenced("a, b = map(int, input().split())\nprint(a + b)") + "Example run:\n```text\n3\n```\n"
    )
    assert code_score(response, ADD_TESTS, ROW)["acc"] == 1.0
    assert extract_program("```python\nprint(1)\n", "python") is None  # cut off before the fence closed
    assert code_score("a, b = map(int, input().split())\nprint(a + b)", ADD_TESTS, ROW)["status"] == "no_program"
    untagged = extract_program("```\nint main(){}\n```", default_language="cpp")
    assert untagged.language == "cpp" and untagged.code == "int main(){}\n"


def test_cpp_program_is_judged_where_gxx_exists():
    response = fenced("#include <iostream>\nint main(){long long a,b;std::cin>>a>>b;std::cout<<a+b<<'\\n';}", "cpp")
    result = code_score(response, ADD_TESTS, ROW)
    if HAS_GXX:
        assert result["acc"] == 1.0, result
        broken = code_score(fenced("int main( {", "cpp"), ADD_TESTS, ROW)
        assert broken["status"] == "compile_error" and broken["score"] == 0.0
    else:
        assert result["status"].startswith("unsupported_language") and result["score"] == 0.0


def test_the_rows_time_and_memory_limits_apply():
    one_test = json.dumps({"inputs": ["1 2\n"], "outputs": ["3\n"]})
    busy = fenced("x = 0\nfor i in range(1_500_000):\n    x += i\nprint(3)")  # ~0.15 s of CPU
    assert code_score(busy, one_test, {**ROW, "time_limit_s": 10})["acc"] == 1.0
    assert code_score(busy, one_test, {**ROW, "time_limit_s": 0.05})["status"] == "timeout"
    hungry = fenced("block = bytearray(100 << 20)\nprint(3)")
    assert code_score(hungry, one_test, {**ROW, "memory_mb": 512})["acc"] == 1.0
    assert code_score(hungry, one_test, {**ROW, "memory_mb": 64})["status"] == "memory_limit"


def test_call_based_problems_call_the_named_function():
    tests = json.dumps({"inputs": ["[3, 1, 2]\n2", "[5]\n1"], "outputs": ["[1, 2]", "[5]"], "fn_name": "smallest"})
    solution = "class Solution:\n    def smallest(self, nums, k):\n        return sorted(nums)[:k]"
    assert code_score(fenced(solution), tests, ROW)["acc"] == 1.0
    assert code_score(fenced("def smallest(nums, k):\n    return sorted(nums)[:k]"), tests, ROW)["acc"] == 1.0
    assert code_score(fenced("def smallest(nums, k):\n    return nums[:k]"), tests, ROW)["pass_rate"] == 0.5


@pytest.mark.parametrize(
    "ground_truth, extra, message",
    [
        ("{not json", {}, "field reward_model.ground_truth: not valid JSON"),
        ('["1", "2"]', {}, "field reward_model.ground_truth: expected a JSON object"),
        ('{"inputs": ["1"]}', {}, "missing 'outputs'"),
        ('{"inputs": ["1", "2"], "outputs": ["1"]}', {}, "2 inputs but 1 outputs"),
        ('{"inputs": [1], "outputs": ["1"]}', {}, "inputs[0] must be a string, got int"),
        ('{"inputs": [], "outputs": []}', {}, "has no tests"),
        ('{"inputs": ["1"], "outputs": ["1"], "fn_name": "not a name"}', {}, "fn_name must be a Python identifier"),
        (ADD_TESTS, {"time_limit_s": -1}, "field extra_info.time_limit_s: expected a positive number, got -1"),
        (ADD_TESTS, {"memory_mb": "lots"}, "field extra_info.memory_mb: expected a positive number, got 'lots'"),
    ],
)
def test_malformed_rows_name_the_row_and_field(ground_truth, extra, message):
    with pytest.raises(MalformedTests) as caught:
        code_score(fenced("print(1)"), ground_truth, {**ROW, **extra}, data_source="code/toy")
    assert message in str(caught.value)
    assert str(caught.value).startswith("code/toy train row 7 (problem p-7)")


# -- the verl entry point --------------------------------------------------------------------


def test_compute_score_routes_by_data_source():
    assert compute_score("math/competition", r"\boxed{\frac{3}{4}}", "0.75", {})["acc"] == 1.0
    code = fenced("a, b = map(int, input().split())\nprint(a + b)")
    assert compute_score("code/toy", code, ADD_TESTS, ROW)["acc"] == 1.0
    # verl's own code sources are judged here too: verl's scorer would run them unsandboxed
    assert compute_score("apps", code, ADD_TESTS, ROW)["acc"] == 1.0
    # anything else goes to verl's default scorer, with the same keys
    gsm8k = compute_score("openai/gsm8k", "so the total is #### 42", "42", {})
    assert set(gsm8k) == set(REWARD_KEYS) and gsm8k["score"] == 1.0
    with pytest.raises(ValueError, match="code_reward must be one of"):
        compute_score("code/toy", code, ADD_TESTS, ROW, code_reward="most")


class _CharTokenizer:
    """Token id = character code; enough for verl's reward manager to decode responses."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(int(i)) for i in ids if int(i) > 0)


def _reward_batch(responses: list[str], data_sources: list[str], ground_truths: list[str], extra_infos: list[dict]):
    from verl import DataProto

    width = max(len(r) for r in responses)
    prompt = torch.full((len(responses), 4), ord("p"))
    response_ids = torch.zeros(len(responses), width, dtype=torch.long)
    for i, text in enumerate(responses):
        response_ids[i, : len(text)] = torch.tensor([ord(c) for c in text])
    attention = torch.cat([torch.ones_like(prompt), (response_ids > 0).long()], dim=1)
    return DataProto.from_dict(
        tensors={"prompts": prompt, "responses": response_ids, "attention_mask": attention},
        non_tensors={
            "data_source": np.array(data_sources, dtype=object),
            "reward_model": np.array([{"ground_truth": g, "style": "rule"} for g in ground_truths], dtype=object),
            "extra_info": np.array(extra_infos, dtype=object),
        },
    )


def test_verl_reward_manager_calls_it_with_reward_kwargs():
    from verl.trainer.ppo.reward import load_reward_manager

    config = OmegaConf.create(
        {
            "reward": {
                "custom_reward_function": {
                    "path": "pkg://verl_avsd.rewards",
                    "name": "compute_score",
                    "reward_kwargs": {"code_reward": "all_or_nothing"},
                },
                "reward_manager": {"source": "register", "name": "naive"},
            }
        }
    )
    manager = load_reward_manager(config, _CharTokenizer())
    partial = fenced("a, b = map(int, input().split())\nprint(a + b if b > 0 else 0)")
    batch = _reward_batch([partial, r"so \boxed{12}"], ["code/toy", "math/arith"], [ADD_TESTS, "12"], [dict(ROW), {"index": 0}])
    outputs = [manager.loop.run_until_complete(manager.run_single(batch[i : i + 1])) for i in range(len(batch))]
    code_out, math_out = outputs
    assert code_out["reward_score"] == 0.0  # all-or-nothing reached the function through verl
    assert code_out["reward_extra_info"]["pass_rate"] == pytest.approx(2 / 3)
    assert math_out["reward_score"] == 1.0 and math_out["reward_extra_info"]["status"] == "correct"
    assert set(code_out["reward_extra_info"]) == set(math_out["reward_extra_info"]) == set(REWARD_KEYS)
