"""`verl-avsd eval`: Avg@k / pass@k on known answers, the unbiased estimator against math.comb, code
pass@1 through the sandbox, the hf backend end to end on a tiny random model (prompt = the chat
template rendering, seeded), verl checkpoints merged by verl's merger, and every input error."""

import json
import math
import shutil

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from verl_avsd.data_prep.errors import BadInputError
from verl_avsd.eval_backends import Generation
from verl_avsd.eval_benchmarks import read_benchmark
from verl_avsd.eval_metrics import evaluate, pass_at_k
from verl_avsd.evaluate import main
from verl_avsd.toy_run import random_toy_model, toy_data

MATH_PROBLEMS = [  # (question, ground truth)
    ("What is 1/2 + 1/4?", r"\frac{3}{4}"),
    ("What is 2 + 2?", "4"),
    ("Solve x^2 = 9 for x > 0.", "3"),
    ("What is 10% of 70?", "7"),
]
ADD_TESTS = json.dumps({"inputs": ["1 2\n", "3 4\n", "10 -3\n"], "outputs": ["3\n", "7\n", "7\n"]})
CODE_ROW_INFO = {"index": 0, "split": "eval", "time_limit_s": 2.0, "memory_mb": 256.0, "language": "python"}
ADD_PROGRAMS = {  # program -> share of ADD_TESTS it passes
    "a, b = map(int, input().split())\nprint(a + b)": 1.0,
    "a, b = map(int, input().split())\nprint(a - b)": 0.0,
    "a, b = map(int, input().split())\nprint(a + b if b > 0 else 0)": 2 / 3,
}


def write_parquet(path, rows):
    pd.DataFrame(rows).to_parquet(path, index=False)
    return str(path)


def math_row(question, answer, data_source="math/fixture"):
    return {
        "prompt": [{"role": "user", "content": question}],
        "data_source": data_source,
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": answer},
        "extra_info": {"index": 0, "split": "eval"},
    }


def code_row(question):
    return {
        "prompt": [{"role": "user", "content": question}],
        "data_source": "code/fixture",
        "ability": "code",
        "reward_model": {"style": "rule", "ground_truth": ADD_TESTS},
        "extra_info": CODE_ROW_INFO,
    }


def generator(answer_of_sample):
    """generate_fn whose j-th sample for a prompt is answer_of_sample(prompt, j)."""

    def generate(prompts, k):
        return [[Generation(answer_of_sample(p, j), num_tokens=5, truncated=False) for j in range(k)] for p in prompts]

    return generate


@pytest.fixture(scope="module")
def math_bench(tmp_path_factory):
    path = write_parquet(tmp_path_factory.mktemp("math") / "fixture.parquet", [math_row(*p) for p in MATH_PROBLEMS])
    rows = read_benchmark(path)
    prompts = [row.messages[-1]["content"] for row in rows]
    return rows, prompts, dict(MATH_PROBLEMS)


# -- math: Avg@k and pass@k on known answers --------------------------------------------------------


def test_right_and_wrong_generators_score_one_and_zero(math_bench):
    rows, prompts, answer = math_bench
    right = evaluate(rows, prompts, generator(lambda p, j: rf"So \boxed{{{answer[p]}}}."), k=4, progress=False)
    assert right.metrics["avg_at_k"] == right.metrics["pass_at_1"] == right.metrics["pass_at_k"] == 1.0
    assert [p["correct"] for p in right.problems] == [4, 4, 4, 4]
    wrong = evaluate(rows, prompts, generator(lambda p, j: r"\boxed{12345}"), k=4, progress=False)
    assert wrong.metrics["avg_at_k"] == wrong.metrics["pass_at_1"] == wrong.metrics["pass_at_k"] == 0.0
    assert wrong.metrics["num_problems"] == 4 and wrong.metrics["truncated_share"] == 0.0


def test_right_on_j_of_k_samples_gives_j_over_k(math_bench):
    rows, prompts, answer = math_bench
    k = 4
    right_count = {p: j for p, j in zip(prompts, [0, 1, 3, 4])}  # problem i is right on its first j samples

    def sample(p, j):
        return rf"\boxed{{{answer[p]}}}" if j < right_count[p] else r"\boxed{12345}"

    result = evaluate(rows, prompts, generator(sample), k=k, progress=False)
    assert [p["correct"] for p in result.problems] == [0, 1, 3, 4]
    assert result.metrics["avg_at_k"] == pytest.approx((0 + 1 + 3 + 4) / (4 * k))
    assert result.metrics["pass_at_1"] == pytest.approx(result.metrics["avg_at_k"])
    assert result.metrics["pass_at_k"] == pytest.approx(3 / 4)  # n = k: a problem counts once it has one right sample


@pytest.mark.parametrize(
    "n, c, k",
    [(4, 1, 1), (4, 1, 2), (8, 3, 4), (8, 0, 8), (8, 8, 1), (10, 2, 9), (16, 5, 8), (200, 7, 50), (1000, 3, 10)],
)
def test_unbiased_pass_at_k_equals_the_binomial_reference(n, c, k):
    reference = 1.0 - math.comb(n - c, k) / math.comb(n, k)  # float64
    assert pass_at_k(n, c, k) == pytest.approx(reference, rel=1e-12, abs=1e-12)


def test_pass_at_k_rejects_impossible_counts():
    for n, c, k in [(4, 5, 1), (4, 1, 5), (4, -1, 1), (4, 1, 0)]:
        with pytest.raises(ValueError, match="pass@k needs"):
            pass_at_k(n, c, k)


# -- code: pass@1 through the sandbox ------------------------------------------------------------------


def test_code_pass_at_1_and_test_pass_rate_through_the_sandbox(tmp_path):
    path = write_parquet(tmp_path / "code.parquet", [code_row("Print the sum of two integers.")])
    rows = read_benchmark(path)
    for program, share in ADD_PROGRAMS.items():
        response = f"Here it is.\n```python\n{program}\n```\n"
        result = evaluate(rows, ["prompt"], generator(lambda p, j, response=response: response), k=2, progress=False)
        assert result.metrics["pass_at_1"] == (1.0 if share == 1.0 else 0.0), program
        assert result.metrics["test_pass_rate"] == pytest.approx(share), program
        assert result.problems[0]["test_pass_rate"] == pytest.approx(share)
    no_program = evaluate(rows, ["prompt"], generator(lambda p, j: "I would add them."), k=1, progress=False)
    assert no_program.metrics["pass_at_1"] == 0.0 and no_program.metrics["test_pass_rate"] == 0.0


# -- the hf backend end to end ----------------------------------------------------------------------

# The toy chat template plus a thinking switch, so the test sees template kwargs reach the rendering.
THINKING_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking is not defined or enable_thinking %}{{ '<think>\n' }}{% endif %}{% endif %}"
)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("toy")
    model_dir = random_toy_model(str(root / "model"))
    (root / "model" / "chat_template.jinja").write_text(THINKING_TEMPLATE)
    data = toy_data(str(root / "data"), n_train=4, n_val=8)
    return model_dir, data["val"]


def run_eval_cli(model, data, out, *extra):
    argv = ["--model", str(model), "--data", str(data), "--output", str(out), "--quiet"]
    assert main(argv + ["--k", "3", "--limit", "4", "--max-new-tokens", "8", "--temperature", "1.0", *extra]) == 0
    with open(out / "eval.json") as f:
        report = json.load(f)
    with open(out / "generations.jsonl") as f:
        generations = [json.loads(line) for line in f]
    return report, generations


def test_hf_backend_end_to_end_records_the_training_prompt(toy, tmp_path, capsys):
    model_dir, val = toy
    no_thinking = ["--chat-template-kwargs", '{"enable_thinking": false}']
    report, generations = run_eval_cli(model_dir, val, tmp_path / "a", "--seed", "0", *no_thinking)
    printed = capsys.readouterr().out
    assert "| val | 4 |" in printed and "Avg@3" in printed

    assert report["backend"] == "hf" and report["k"] == 3 and report["seed"] == 0 and report["checkpoint"] is None
    assert report["chat_template_kwargs"] == {"enable_thinking": False}
    bench = report["benchmarks"]["val"]
    assert bench["metrics"]["num_problems"] == 4 and len(bench["problems"]) == 4
    assert all(problem["samples"] == 3 for problem in bench["problems"])
    assert len(generations) == 4 and all(len(g["responses"]) == 3 for g in generations)
    assert all(1 <= r["num_tokens"] <= 8 for g in generations for r in g["responses"])
    lengths = [r["num_tokens"] for g in generations for r in g["responses"]]
    assert bench["metrics"]["mean_response_tokens"] == pytest.approx(sum(lengths) / len(lengths))

    # the recorded prompt is the chat template's rendering with the same kwargs, and tokenizes to verl's ids
    from verl.utils.tokenizer.chat_template import apply_chat_template
    from verl.utils.tokenizer.tokenizer import normalize_token_ids

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    messages = read_benchmark(val)[0].messages
    template = dict(add_generation_prompt=True, enable_thinking=False)
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, **template)
    assert bench["example_prompt"] == report["example_prompt"] == rendered
    assert "<think>" not in rendered and rendered.endswith("<|im_start|>assistant\n")
    verl_ids = apply_chat_template(tokenizer, messages, tokenize=True, **template)
    assert tokenizer(rendered, add_special_tokens=False)["input_ids"] == normalize_token_ids(verl_ids)
    markdown = (tmp_path / "a" / "eval.md").read_text()
    assert "## val" in markdown and "| Avg@3 | pass@1 | pass@3 |" in markdown and rendered in markdown

    # same seed, same generations; another seed, others; without the kwarg the template thinks
    _, same = run_eval_cli(model_dir, val, tmp_path / "b", "--seed", "0", *no_thinking)
    assert same == generations
    other_report, other = run_eval_cli(model_dir, val, tmp_path / "c", "--seed", "1")
    assert [g["responses"] for g in other] != [g["responses"] for g in generations]
    assert other_report["chat_template_kwargs"] == {} and other_report["example_prompt"].endswith("<think>\n")


def test_greedy_gives_k_copies_of_one_response(toy, tmp_path):
    model_dir, val = toy
    _, generations = run_eval_cli(model_dir, val, tmp_path, "--temperature", "0")
    for g in generations:
        assert g["responses"][0] == g["responses"][1] == g["responses"][2]


# -- verl checkpoints: merged by verl.model_merger, cached beside the checkpoint ---------------------


def fake_fsdp_checkpoint(model, tokenizer, actor, state_dict=None):
    """What verl's FSDPCheckpointManager writes for one rank: the shard, fsdp_config.json, huggingface/."""
    actor.mkdir(parents=True)
    torch.save(state_dict if state_dict is not None else model.state_dict(), actor / "model_world_size_1_rank_0.pt")
    (actor / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 2, "world_size": 1}))
    model.config.save_pretrained(actor / "huggingface")
    model.generation_config.save_pretrained(actor / "huggingface")
    tokenizer.save_pretrained(actor / "huggingface")


def test_verl_checkpoint_is_merged_once_beside_it(toy, tmp_path):
    model_dir, val = toy
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    actor = tmp_path / "checkpoints" / "global_step_3" / "actor"
    fake_fsdp_checkpoint(model, AutoTokenizer.from_pretrained(model_dir), actor)

    report, _ = run_eval_cli(actor, val, tmp_path / "a")
    merged = actor.parent / "actor_hf"
    assert report["checkpoint"] == str(actor) and report["model_dir"] == str(merged)
    weights = load_file(merged / "model.safetensors")
    for name, tensor in model.state_dict().items():
        if name in weights:  # the tied lm_head is stored once
            assert torch.equal(weights[name], tensor.to(torch.bfloat16)), name
    record = (merged / "merged_from.json").stat().st_mtime_ns

    report, _ = run_eval_cli(actor.parent, val, tmp_path / "b")  # global_step_3 itself names the same checkpoint
    assert report["checkpoint"] == str(actor) and (merged / "merged_from.json").stat().st_mtime_ns == record


def test_lora_checkpoint_is_evaluated_with_its_adapter(toy, tmp_path):
    from peft import LoraConfig, get_peft_model

    model_dir, val = toy
    torch.manual_seed(0)
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"])
    )
    for name, parameter in peft_model.named_parameters():
        if "lora_B" in name:  # peft starts B at 0 (no change); a trained adapter is not
            parameter.data.normal_(std=0.5)
    actor = tmp_path / "global_step_1" / "actor"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    fake_fsdp_checkpoint(peft_model.base_model.model, tokenizer, actor, peft_model.state_dict())
    (actor / "lora_train_meta.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, "task_type": "CAUSAL_LM"}))

    run_eval_cli(actor, val, tmp_path / "out")
    weights = load_file(actor.parent / "actor_hf" / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    trained = peft_model.merge_and_unload().state_dict()[name]
    base = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()[name]
    assert (trained - base).abs().max() > 0.1
    assert torch.allclose(weights[name].float(), trained, atol=0.02)


# -- bad input: an error naming the file, row and field -------------------------------------------


@pytest.mark.parametrize(
    "bad_row, message",
    [
        ({**math_row("q", "1"), "prompt": None}, "row 1: field 'prompt': missing"),
        (
            {**math_row("q", "1"), "reward_model": {"style": "rule"}},
            "row 1: field 'reward_model.ground_truth': missing",
        ),
        (
            math_row("q", "1", data_source="gsm8k/main"),
            "row 1: field 'data_source': unknown data_source 'gsm8k/main'; known data sources: "
            "math/<name>, code/<name>, avsd_toy/arith",
        ),
        (
            {**code_row("q"), "reward_model": {"style": "rule", "ground_truth": "{oops"}},
            "row 1: field 'reward_model.ground_truth': not valid JSON",
        ),
    ],
)
def test_bad_rows_name_the_file_row_and_field(toy, tmp_path, capsys, bad_row, message):
    path = write_parquet(tmp_path / "bench.parquet", [math_row("What is 2 + 2?", "4"), bad_row])
    assert main(["--model", toy[0], "--data", path, "--output", str(tmp_path / "out"), "--quiet"]) == 2
    assert f"{path}: {message}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_bad_benchmark_file_is_named(tmp_path):
    not_parquet = tmp_path / "bench.parquet"
    not_parquet.write_text("not parquet")
    lines = tmp_path / "bench.jsonl"
    lines.write_text(json.dumps(math_row("What is 2 + 2?", "4")) + "\n{oops\n")
    for path, message in [
        (tmp_path / "missing.parquet", "no such file"),
        (not_parquet, "cannot read as parquet"),
        (tmp_path / "bench.csv", "no such file"),
        (lines, "row 1 (line 2): not valid JSON"),
    ]:
        with pytest.raises(BadInputError) as error:
            read_benchmark(str(path))
        assert str(error.value).startswith(f"{path}: ") and message in str(error.value), str(error.value)
    assert [row.ground_truth for row in read_benchmark(str(lines), limit=1)] == ["4"]  # JSONL rows read alike


def test_a_model_path_that_is_neither_a_hf_folder_nor_a_checkpoint_says_so(toy, tmp_path, capsys):
    not_a_model = tmp_path / "notes"
    not_a_model.mkdir()
    weightless = tmp_path / "config_only"
    shutil.copytree(toy[0], weightless, ignore=shutil.ignore_patterns("*.safetensors"))
    for model, message in [
        (not_a_model, "neither a Hugging Face model folder (config.json + weights) nor a verl FSDP checkpoint"),
        (tmp_path / "missing", "the path does not exist"),
        (weightless, "has config.json but no weights"),
    ]:
        assert main(["--model", str(model), "--data", toy[1], "--output", str(tmp_path / "out"), "--quiet"]) == 2
        assert f"--model {model}: " in (err := capsys.readouterr().err) and message in err


def test_chat_template_kwargs_must_be_a_json_object(toy, tmp_path, capsys):
    argv = ["--model", toy[0], "--data", toy[1], "--output", str(tmp_path), "--chat-template-kwargs", "enable_thinking"]
    assert main(argv) == 2
    assert "not valid JSON" in capsys.readouterr().err
