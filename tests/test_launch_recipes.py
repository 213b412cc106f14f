"""launch/: every recipe, run with --dry-run, prints a main_ppo command whose overrides compose into
verl's real hydra config (as `python -m verl.trainer.main_ppo` would see it) and pass verl's own
pre-flight checks and `algorithm.avsd` validation, with the settings the recipe promises; the
baselines differ from AVSD only where they should; the cluster scripts (Ray start, job submit,
SLURM) print or run the right commands. Nothing trains and no Ray starts."""

from __future__ import annotations

import copy
import functools
import importlib
import importlib.util
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

import verl_avsd.plugin  # noqa: F401  registers the estimators and the avsd_sync trainer, as in a run
from verl_avsd.config import AvsdConfigError, avsd_config
from verl_avsd.data_prep.code_prep import CODE_VIEW_NAMES
from verl_avsd.toy import task as toy_task
from verl_avsd.toy_run import ToyRun
from verl_avsd.verl_config import compose_verl_config

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
RECIPES = LAUNCH / "recipes"
RECIPE_NAMES = sorted(p.name for p in RECIPES.glob("*.sh") if p.name != "common.sh")
SCRIPTS = sorted(LAUNCH.rglob("*.sh")) + sorted(LAUNCH.glob("*.sbatch"))
MATH_BUDGET = {"rollouts_per_step": 32, "steps": 200}  # the paper's 200 steps (launch/paper_settings.yaml)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any launch setting a developer may have exported."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AVSD_", "SLURM_", "RAY_AUTH_")) and k not in ("RAY_ADDRESS", "RECIPE")
    }
    env["AVSD_PYTHON"] = sys.executable
    env.update(extra)
    return env


def run_bash(*args: str, env: dict | None = None, cwd: Path = REPO, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["bash", *args], check=False, cwd=cwd, env=env or clean_env(), capture_output=True, text=True, timeout=120
    )
    if check:
        assert result.returncode == 0, f"bash {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
    return result


def split_main_ppo(text: str) -> tuple[list[str], list[str]]:
    """(the words up to `-m verl.trainer.main_ppo`, the overrides after it) of a printed command."""
    words = shlex.split(text.replace("\\\n", " "))
    i = words.index("verl.trainer.main_ppo")
    assert words[i - 1] == "-m", words[: i + 1]
    return words[: i + 1], words[i + 1 :]


def printed_main_ppo(stdout: str) -> str:
    """The main_ppo command (its first line and the continued ones) among other output lines."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if "verl.trainer.main_ppo" in line)
    end = next(i for i in range(start, len(lines)) if not lines[i].endswith("\\"))
    return "\n".join(lines[start : end + 1])


def dry_run(recipe: str, *extra: str, env: dict | None = None, cwd: Path = REPO) -> tuple[list[str], list[str]]:
    return split_main_ppo(run_bash(str(RECIPES / recipe), "--dry-run", *extra, env=env, cwd=cwd).stdout)


@pytest.fixture(scope="module")
def cpu_toy(tmp_path_factory):
    """The CPU toy recipe's dry run, once (it runs python for the CPU overrides): no model at
    AVSD_MODEL, so it falls back to an untrained one in the run directory."""
    root = tmp_path_factory.mktemp("cpu_toy")
    env = clean_env(AVSD_MODEL=str(root / "missing"), AVSD_OUTPUT_DIR=str(root / "runs"))
    result = run_bash(str(RECIPES / "cpu_toy.sh"), "--dry-run", env=env)
    launcher, overrides = split_main_ppo(result.stdout)
    return {"result": result, "launcher": launcher, "overrides": overrides, "run_dir": root / "runs" / "cpu_toy"}


@functools.cache
def recipe_config(recipe: str):
    """The composed verl config of a recipe with no extra arguments and a clean environment."""
    return compose_verl_config(dry_run(recipe)[1])


def flat(cfg) -> dict[str, object]:
    """{dotted key: value} of a config, interpolations left as written (so a baseline that changes
    one key shows one difference, not every key that refers to it)."""
    out = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return out


def config_diff(a, b) -> dict[str, tuple]:
    fa, fb = flat(a), flat(b)
    return {k: (fa.get(k), fb.get(k)) for k in sorted(fa.keys() | fb.keys()) if fa.get(k) != fb.get(k)}


def verl_preflight(cfg) -> None:
    """The checks main_ppo runs on the config before it starts Ray: batch sizes against the GPU
    count, micro-batch settings, validation sampling. verl's last check imports vLLM to look up
    its LoRA rank limit; where vLLM is not installed (CPU CI) that one is skipped by naming another
    rollout (LoRA rank 64 is within vLLM's limit of 512)."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    cfg = copy.deepcopy(cfg)
    if cfg.actor_rollout_ref.rollout.name == "vllm" and importlib.util.find_spec("vllm") is None:
        cfg.actor_rollout_ref.rollout.name = "hf"
    validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))


# ---------------------------------------------------------------- every script -------------


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(LAUNCH)))
def test_script_parses_and_has_help(script):
    run_bash("-n", str(script))
    if script.name in ("common.sh", "lib.sh"):
        return  # sourced by the scripts, never run
    help_text = run_bash(str(script), "--help").stdout
    assert "Usage" in help_text or "sbatch" in help_text
    if script.parent == RECIPES:
        # a baseline prints its own help, not the AVSD recipe's it runs
        assert f"launch/recipes/{script.name}" in help_text


def test_recipe_rejects_what_is_not_an_override():
    for bad, message in (
        ("foo", "argument 'foo' is not a hydra override"),
        ("--frobnicate", "unknown option '--frobnicate'"),
    ):
        result = run_bash(str(RECIPES / "math_opsd_qwen3_8b.sh"), "--dry-run", bad, check=False)
        assert result.returncode == 2
        assert message in result.stderr and "math_opsd_qwen3_8b.sh" in result.stderr


# ---------------------------------------------------------------- recipes compose ----------


@pytest.mark.parametrize("recipe", RECIPE_NAMES)
def test_recipe_composes_into_a_valid_verl_config(recipe, request):
    if recipe == "cpu_toy.sh":
        cfg = compose_verl_config(request.getfixturevalue("cpu_toy")["overrides"])
    else:
        cfg = recipe_config(recipe)
    avsd = avsd_config(cfg.algorithm)  # unknown keys or bad values raise
    verl_preflight(cfg)

    from verl.trainer.ppo.core_algos import get_adv_estimator_fn
    from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY

    assert cfg.trainer.v1.trainer_mode == "avsd_sync" and "avsd_sync" in TRAINER_REGISTRY
    assert callable(get_adv_estimator_fn(cfg.algorithm.adv_estimator))
    module = cfg.reward.custom_reward_function.path.removeprefix("pkg://")
    assert callable(getattr(importlib.import_module(module), cfg.reward.custom_reward_function.name))
    assert avsd.opsd_view in avsd.views
    # one on-policy update per step: the mini-batch is the whole batch
    assert cfg.actor_rollout_ref.actor.ppo_mini_batch_size == cfg.data.train_batch_size
    assert cfg.actor_rollout_ref.actor.ppo_epochs == 1
    # the run directory is absolute (Ray actors run elsewhere) and holds the metrics and checkpoints
    metrics_file = Path(cfg.ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH)
    assert metrics_file.is_absolute() and metrics_file.name == "verl_metrics.jsonl"
    assert Path(cfg.trainer.default_local_dir) == metrics_file.parent / "checkpoints"
    assert metrics_file.parent.name == cfg.trainer.experiment_name


def test_math_avsd_recipe_is_the_paper_setting():
    cfg = recipe_config("math_avsd_qwen3_8b.sh")
    model, actor, rollout = cfg.actor_rollout_ref.model, cfg.actor_rollout_ref.actor, cfg.actor_rollout_ref.rollout
    assert model.path == "Qwen/Qwen3-8B"
    assert (model.lora_rank, model.lora_alpha, model.target_modules) == (64, 128, "all-linear")
    assert actor.optim.lr == 5e-6
    assert (cfg.data.train_batch_size, rollout.n) == (32, 1)
    assert cfg.trainer.total_training_steps == MATH_BUDGET["steps"]
    assert cfg.data.max_response_length == 4096 and rollout.response_length == 4096  # rollout reads data's
    assert rollout.temperature == 0.7 and rollout.name == "vllm"
    assert cfg.data.apply_chat_template_kwargs == {"enable_thinking": False}
    assert cfg.algorithm.adv_estimator == "avsd"
    assert list(avsd_config(cfg.algorithm).views) == ["full", "partial", "answer"]
    assert avsd_config(cfg.algorithm).teacher == "ref"
    assert (cfg.reward.custom_reward_function.path, cfg.reward.custom_reward_function.name) == (
        "pkg://verl_avsd.rewards",
        "compute_score",
    )
    # paths as `verl-avsd prep math --out data/math --eval aime2024=...` writes them
    assert (cfg.data.train_files, cfg.data.val_files) == ("data/math/train.parquet", "data/math/eval_aime2024.parquet")
    assert (cfg.trainer.nnodes, cfg.trainer.n_gpus_per_node) == (1, 8)
    assert not actor.use_kl_loss and not cfg.algorithm.use_kl_in_reward


def test_environment_sets_model_data_and_gpus(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "train.parquet").write_bytes(b"")  # exists here: made absolute for the Ray actors
    env = clean_env(
        AVSD_MODEL="/models/qwen3-8b",
        AVSD_TRAIN_FILES="mine/train.parquet",
        AVSD_VAL_FILES="hdfs://cluster/aime.parquet",  # not a local path: passed unchanged
        AVSD_NNODES="4",
        AVSD_GPUS_PER_NODE="8",
        AVSD_OUTPUT_DIR="out",
    )
    cfg = compose_verl_config(dry_run("math_avsd_qwen3_8b.sh", env=env, cwd=tmp_path)[1])
    assert cfg.actor_rollout_ref.model.path == "/models/qwen3-8b"
    assert cfg.data.train_files == str(tmp_path / "mine" / "train.parquet")
    assert cfg.data.val_files == "hdfs://cluster/aime.parquet"
    assert (cfg.trainer.nnodes, cfg.trainer.n_gpus_per_node) == (4, 8)
    assert cfg.trainer.default_local_dir == str(tmp_path / "out" / "math_avsd_qwen3_8b" / "checkpoints")
    verl_preflight(cfg)  # 32 rollouts over 32 GPUs still divide


def test_appended_overrides_win_through_a_baseline():
    cfg = compose_verl_config(
        dry_run("math_opsd_qwen3_8b.sh", "actor_rollout_ref.actor.optim.lr=1e-6", "trainer.total_training_steps=10")[1]
    )
    assert cfg.actor_rollout_ref.actor.optim.lr == 1e-6
    assert cfg.trainer.total_training_steps == 10
    assert cfg.algorithm.adv_estimator == "opsd"  # the baseline's own setting still holds


def test_a_typo_in_an_appended_override_fails_composition():
    _, overrides = dry_run("math_avsd_qwen3_8b.sh", "algorithm.adv_estimatr=avsd")
    with pytest.raises(ConfigCompositionException, match="adv_estimatr"):
        compose_verl_config(overrides)


def test_an_unknown_avsd_key_fails_validation():
    cfg = compose_verl_config(dry_run("math_avsd_qwen3_8b.sh", "+algorithm.avsd.viewz=[full]")[1])
    with pytest.raises(AvsdConfigError, match="did you mean algorithm.avsd.views"):
        avsd_config(cfg.algorithm)


# ---------------------------------------------------------------- baselines -----------------

# GRPO and RLSD sample and average their loss as the paper's GRPO baseline (launch/paper_settings.yaml).
GRPO_SAMPLING = {
    "actor_rollout_ref.rollout.temperature": 1.0,
    "actor_rollout_ref.rollout.top_p": 1.0,
    "actor_rollout_ref.rollout.top_k": -1,
    "actor_rollout_ref.actor.loss_agg_mode": "seq-mean-token-mean",
}

# What each math baseline changes relative to math_avsd_qwen3_8b.sh, and nothing else.
BASELINE_CHANGES = {
    "math_opsd_qwen3_8b.sh": {"algorithm.adv_estimator": "opsd", "algorithm.avsd.views": ["full"]},
    "math_consensus_qwen3_8b.sh": {"algorithm.adv_estimator": "avsd_consensus"},
    "math_arithmetic_qwen3_8b.sh": {"algorithm.adv_estimator": "avsd_arithmetic"},
    "math_grpo_qwen3_8b.sh": {
        "algorithm.adv_estimator": "grpo",
        "data.train_batch_size": 4,
        "actor_rollout_ref.rollout.n": 8,
        "actor_rollout_ref.actor.ppo_mini_batch_size": 4,
        **GRPO_SAMPLING,
    },
    "math_rlsd_qwen3_8b.sh": {
        "algorithm.adv_estimator": "rlsd",
        "algorithm.avsd.views": ["full"],
        "algorithm.avsd.rlsd_lam": 0.5,
        "algorithm.avsd.rlsd_eps_w": 0.2,
        "algorithm.avsd.teacher": "current",
        "data.train_batch_size": 4,
        "actor_rollout_ref.rollout.n": 8,
        "actor_rollout_ref.actor.ppo_mini_batch_size": 4,
        **GRPO_SAMPLING,
    },
}


@pytest.mark.parametrize("baseline", sorted(BASELINE_CHANGES))
def test_baseline_differs_from_avsd_only_where_it_should(baseline):
    avsd, cfg = recipe_config("math_avsd_qwen3_8b.sh"), recipe_config(baseline)
    experiment = baseline.removesuffix(".sh")
    expected = dict(BASELINE_CHANGES[baseline])
    expected["trainer.experiment_name"] = experiment
    expected["trainer.default_local_dir"] = str(REPO / "runs" / experiment / "checkpoints")
    expected["ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH"] = str(
        REPO / "runs" / experiment / "verl_metrics.jsonl"
    )
    diff = config_diff(avsd, cfg)
    assert {key: new for key, (old, new) in diff.items()} == expected
    # the same budget: rollouts per step and steps
    assert cfg.data.train_batch_size * cfg.actor_rollout_ref.rollout.n == MATH_BUDGET["rollouts_per_step"]
    assert cfg.trainer.total_training_steps == MATH_BUDGET["steps"]
    if cfg.algorithm.adv_estimator in ("grpo", "rlsd"):
        assert cfg.actor_rollout_ref.rollout.n > 1  # a group-relative advantage needs a group


def test_small_recipe_is_one_gpu_even_when_the_shell_says_eight():
    cfg = compose_verl_config(dry_run("small_qwen3_1p7b_1gpu.sh", env=clean_env(AVSD_GPUS_PER_NODE="8"))[1])
    assert (cfg.trainer.nnodes, cfg.trainer.n_gpus_per_node) == (1, 1)
    assert cfg.actor_rollout_ref.model.path == "Qwen/Qwen3-1.7B"
    assert cfg.actor_rollout_ref.model.lora_rank > 0
    paper = recipe_config("math_avsd_qwen3_8b.sh")
    assert cfg.data.train_batch_size < paper.data.train_batch_size
    assert cfg.data.max_response_length < paper.data.max_response_length
    assert cfg.data.train_files == paper.data.train_files and cfg.algorithm.adv_estimator == "avsd"
    verl_preflight(cfg)


def test_code_recipe_has_the_code_views_and_the_sandbox():
    cfg = recipe_config("code_avsd_qwen3_8b.sh")
    avsd = avsd_config(cfg.algorithm)
    assert list(avsd.views) == list(CODE_VIEW_NAMES)  # what prep code stores, plus the trainer's feedback
    assert avsd.opsd_view == "reference" and avsd.sandbox_isolation == "auto"
    kwargs = cfg.reward.custom_reward_function.reward_kwargs
    assert (kwargs.code_reward, kwargs.sandbox_isolation, kwargs.sandbox_fusion_url) == ("fraction", "auto", None)
    assert (cfg.data.train_files, cfg.data.val_files) == ("data/code/train.parquet", "data/code/eval_lcb.parquet")
    paper = recipe_config("math_avsd_qwen3_8b.sh")
    assert cfg.actor_rollout_ref.model.lora_rank == paper.actor_rollout_ref.model.lora_rank
    assert cfg.data.train_batch_size * cfg.actor_rollout_ref.rollout.n == MATH_BUDGET["rollouts_per_step"]

    env = clean_env(AVSD_SANDBOX_ISOLATION="sandbox_fusion", AVSD_SANDBOX_FUSION_URL="http://sandbox:8080/run_code")
    cfg = compose_verl_config(dry_run("code_avsd_qwen3_8b.sh", env=env)[1])
    avsd, kwargs = avsd_config(cfg.algorithm), cfg.reward.custom_reward_function.reward_kwargs
    # the feedback view (trainer) and the reward use the same sandbox
    assert avsd.sandbox_isolation == kwargs.sandbox_isolation == "sandbox_fusion"
    assert avsd.sandbox_fusion_url == kwargs.sandbox_fusion_url == "http://sandbox:8080/run_code"


# ---------------------------------------------------------------- CPU toy -------------------


def test_cpu_toy_recipe_is_the_toy_run(cpu_toy):
    run_dir, result = cpu_toy["run_dir"], cpu_toy["result"]
    assert not run_dir.exists()  # a dry run builds nothing, and says what the run would build first
    assert "untrained tiny model" in result.stderr and "verl_avsd.toy.task --out" in result.stderr
    assert cpu_toy["launcher"][:4] == [
        "env",
        "HF_HUB_OFFLINE=1",
        "TRANSFORMERS_OFFLINE=1",
        "TOKENIZERS_PARALLELISM=false",
    ]
    assert cpu_toy["launcher"][4:8] == ["timeout", "-k", "30", "1800"]

    cfg = compose_verl_config(cpu_toy["overrides"])
    toy = ToyRun(
        model_dir=str(run_dir / "model"),  # the fallback: AVSD_MODEL holds no model
        train_file=str(run_dir / "data" / "train.parquet"),
        val_file=str(run_dir / "data" / "val.parquet"),
        run_dir=str(run_dir),
        steps=20,
        prompts_per_step=16,
    )
    # the same run as the demo's recipe (verl_avsd.toy_run), except its name and where metrics go
    diff = config_diff(compose_verl_config(toy.overrides()), cfg)
    assert set(diff) == {"trainer.experiment_name", "ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH"}
    assert cfg.trainer.device == "cpu" and cfg.actor_rollout_ref.rollout.name == "hf"
    # the teacher sees the views in the wording the toy model was warmed up on
    assert avsd_config(cfg.algorithm).view_template == toy_task.TEACHER_TEMPLATE.replace("{view_text}", "{view}")


def test_printed_command_reads_the_same_in_bash(cpu_toy):
    """The dry run is a command to paste into a shell: bash splits it into the same words as the test
    does (the CPU toy's view template holds quotes, braces and backslash-n)."""
    text = cpu_toy["result"].stdout
    bash_words = run_bash("-c", 'eval "words=( $1 )"; printf "%s\\0" "${words[@]}"', "_", text).stdout.split("\0")[:-1]
    assert bash_words == cpu_toy["launcher"] + cpu_toy["overrides"]
    assert len(text.strip().splitlines()) == len(cpu_toy["overrides"]) + 1  # one override a line


# ---------------------------------------------------------------- Ray and job scripts -------


def ray_start(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_bash(str(LAUNCH / "ray_start.sh"), *args, check=check)


def test_ray_start_head_and_worker_commands():
    head = ray_start("head", "--dry-run")
    assert shlex.split(head.stdout) == shlex.split("ray start --head --port=6379 --dashboard-host=0.0.0.0 --dashboard-port=8265")
    options = shlex.split("--node-ip 10.1.2.3 --port 6380 --num-gpus 8 --num-cpus 32 --object-store-gb 100 --block")
    head = ray_start("head", *options, "--dry-run")
    words = shlex.split(head.stdout)
    for flag in ("--port=6380", "--node-ip-address=10.1.2.3", "--num-gpus=8", "--num-cpus=32", "--block"):
        assert flag in words
    assert f"--object-store-memory={100 * 1024**3}" in words
    assert "launch/ray_start.sh worker --address 10.1.2.3:6380" in head.stderr  # how to connect
    assert "RAY_ADDRESS=http://10.1.2.3:8265 launch/submit_job.sh" in head.stderr

    worker = ray_start("worker", "--address", "10.1.2.3:6380", "--num-gpus", "4", "--dry-run")
    assert shlex.split(worker.stdout) == ["ray", "start", "--address=10.1.2.3:6380", "--num-gpus=4"]


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "Usage"),
        (["leader"], "'head' or 'worker'"),
        (["worker"], "worker needs --address"),
        (["worker", "--address", "10.0.0.1"], "HOST:PORT"),
        (["head", "--num-gpus", "eight"], "--num-gpus must be a whole number"),
        (["head", "--port"], "--port needs a value"),
        (["head", "--bogus"], "unknown option '--bogus'"),
    ],
)
def test_ray_start_rejects_bad_arguments(args, message):
    result = ray_start(*args, *(["--dry-run"] if args else []), check=False)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_submit_job_command_and_its_entrypoint(tmp_path):
    env = clean_env(RAY_ADDRESS="http://head:8265", AVSD_MODEL="/shared/qwen3-8b", AVSD_OUTPUT_DIR="/shared/runs")
    recipe = RECIPES / "math_avsd_qwen3_8b.sh"  # absolute, and called from another directory
    template = "+algorithm.avsd.view_template='{view} then {prompt}'"
    overrides = ["trainer.total_training_steps=3", template]
    result = run_bash(str(LAUNCH / "submit_job.sh"), "--dry-run", "--no-wait", str(recipe), *overrides, env=env, cwd=tmp_path)
    words = shlex.split(result.stdout)
    split = words.index("--")
    assert words[:split] == shlex.split("ray job submit --address http://head:8265 --working-dir . --no-wait")
    entrypoint = words[split + 1 :]
    forwarded = ["AVSD_MODEL=/shared/qwen3-8b", "AVSD_OUTPUT_DIR=/shared/runs"]  # not AVSD_PYTHON
    assert entrypoint == ["env", *forwarded, "bash", "launch/recipes/math_avsd_qwen3_8b.sh", *overrides]
    assert "warning" not in result.stderr

    # The entrypoint, run as the job would (from the checkout's root, nothing else set), is the recipe
    # with the forwarded settings.
    job = subprocess.run(
        entrypoint + ["--dry-run"], check=False, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=60
    )
    assert job.returncode == 0, job.stderr
    cfg = compose_verl_config(split_main_ppo(job.stdout)[1])
    assert cfg.actor_rollout_ref.model.path == "/shared/qwen3-8b"
    assert cfg.trainer.default_local_dir == "/shared/runs/math_avsd_qwen3_8b/checkpoints"
    assert cfg.trainer.total_training_steps == 3
    assert avsd_config(cfg.algorithm).view_template == "{view} then {prompt}"


def test_submit_job_defaults_and_errors(tmp_path):
    result = run_bash(str(LAUNCH / "submit_job.sh"), "launch/recipes/math_grpo_qwen3_8b.sh", "--dry-run")
    words = shlex.split(result.stdout)
    assert words[:5] == ["ray", "job", "submit", "--address", "http://127.0.0.1:8265"]
    assert words[words.index("--") + 1 :] == ["bash", "launch/recipes/math_grpo_qwen3_8b.sh"]  # nothing to forward
    assert "AVSD_OUTPUT_DIR is unset" in result.stderr  # outputs would vanish with the job's copy

    outside = tmp_path / "recipe.sh"
    outside.write_text("#!/usr/bin/env bash\n")
    for args, message in (
        ([], "which recipe?"),
        (["launch/recipes/nope.sh"], "recipe 'launch/recipes/nope.sh' not found"),
        ([str(outside)], "is not inside this checkout"),
        (["--frob", "launch/recipes/math_avsd_qwen3_8b.sh"], "unknown option '--frob'"),
    ):
        result = run_bash(str(LAUNCH / "submit_job.sh"), *args, "--dry-run", check=False)
        assert result.returncode == 2 and message in result.stderr, result.stderr


# ---------------------------------------------------------------- SLURM ---------------------

FAKE_SRUN = """\
#!/usr/bin/env bash
# srun stand-in: log the call, skip srun's own options, answer `hostname`, and run every other step
# (the Ray starts and the recipe) as a dry run.
echo "srun $* | RAY_ADDRESS=${RAY_ADDRESS:-} AVSD_NNODES=${AVSD_NNODES:-} AVSD_GPUS_PER_NODE=${AVSD_GPUS_PER_NODE:-}" >> "$FAKE_LOG"
node=""
while [[ $1 == -* ]]; do
    if [[ $1 == -w ]]; then node=$2; shift 2; else shift; fi
done
# the head's address (launch/lib.sh routable_ip); FAKE_NO_IP: a node with only loopback
if [[ $* == *routable_ip* ]]; then [[ -n ${FAKE_NO_IP:-} ]] || echo "10.0.0.${node#node}"; exit 0; fi
# --dry-run goes before a `--` (after it, ray_start.sh passes words on to `ray start`)
args=() dry=0
for arg in "$@"; do
    if [[ $arg == -- && $dry == 0 ]]; then args+=(--dry-run); dry=1; fi
    args+=("$arg")
done
((dry)) || args+=(--dry-run)
"${args[@]}"
status=$?
# a node's GPUs join Ray once its `ray start` ran (FAKE_RAY counts them with FAKE_GPUS=joined)
if [[ $* == *ray_start.sh* ]]; then echo "$node" >> "$FAKE_LOG.joined"; fi
exit $status
"""
FAKE_SCONTROL = """\
#!/usr/bin/env bash
[[ "$1 $2 $3" == "show hostnames node[1-2]" ]] && printf 'node1\\nnode2\\n'
[[ "$1 $2 $3" == "show hostnames node1" ]] && printf 'node1\\n'
"""
FAKE_RAY = """\
#!/usr/bin/env bash
echo "ray $* | RAY_AUTH_MODE=${RAY_AUTH_MODE:-}" >> "$FAKE_LOG.ray"
# FAKE_RAY_ERROR: `ray status` fails as a real one does, with its error on stderr
if [[ -n ${FAKE_RAY_ERROR:-} ]]; then echo "$FAKE_RAY_ERROR" >&2; exit 1; fi
[[ $1 == status && ($3 == 10.0.0.1:6379 || $3 == 127.0.0.1:6379) ]] || exit 1
gpus=$FAKE_GPUS
if [[ $gpus == joined ]]; then gpus=$((${FAKE_GPUS_PER_NODE:-8} * $(cat "$FAKE_LOG.joined" 2>/dev/null | wc -l))); fi
printf 'Resources\\n------\\nUsage:\\n 0.0/32.0 CPU\\n 0.0/%s.0 GPU\\n' "$gpus"
"""


def fake_slurm(tmp_path: Path, gpus_in_cluster: int | str, **extra: str) -> dict[str, str]:
    """A fake SLURM allocation of node1 + node2 with 8 GPUs a node. `gpus_in_cluster`: what
    `ray status` reports, a fixed count or "joined" (FAKE_GPUS_PER_NODE, 8, for each node whose
    Ray start step has finished, as on a real cluster, so the script cannot run ahead of a node's
    start step). An `extra` value None removes that variable."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL), ("ray", FAKE_RAY)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = clean_env(
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        FAKE_LOG=str(tmp_path / "srun.log"),
        FAKE_GPUS=str(gpus_in_cluster),
        SLURM_JOB_NODELIST="node[1-2]",
        SLURM_SUBMIT_DIR=str(REPO),
        SLURM_GPUS_ON_NODE="8",
        SLURM_CPUS_PER_TASK="16",
        AVSD_VENV=str(tmp_path / "no-venv"),  # keep the fake ray first on PATH
        RAY_AUTH_MODE="disabled",
    )
    env.update({k: v for k, v in extra.items() if v is not None})
    for k in [k for k, v in extra.items() if v is None]:
        env.pop(k, None)
    return env


def test_slurm_script_starts_head_and_workers_then_the_recipe_on_the_head(tmp_path):
    env = fake_slurm(tmp_path, gpus_in_cluster="joined", RECIPE="launch/recipes/math_rlsd_qwen3_8b.sh")
    result = run_bash(str(LAUNCH / "slurm_avsd.sbatch"), "trainer.total_training_steps=7", env=env, cwd=tmp_path)
    calls = (tmp_path / "srun.log").read_text().splitlines()

    head_start = [c for c in calls if "ray_start.sh head" in c]
    assert len(head_start) == 1 and "-w node1" in head_start[0]
    assert "--node-ip 10.0.0.1 --port 6379" in head_start[0] and "--num-gpus 8 --num-cpus 16 --block" in head_start[0]
    worker_start = [c for c in calls if "ray_start.sh worker" in c]
    assert len(worker_start) == 1 and "-w node2" in worker_start[0] and "--address 10.0.0.1:6379" in worker_start[0]
    # the ray start commands the steps would run
    ray_starts = [shlex.split(line) for line in result.stdout.splitlines() if line.startswith("ray start")]
    assert ["ray", "start", "--address=10.0.0.1:6379", "--num-gpus=8", "--num-cpus=16", "--block"] in ray_starts

    recipe_run = [c for c in calls if "math_rlsd_qwen3_8b.sh" in c]
    assert len(recipe_run) == 1 and "--overlap" in recipe_run[0] and "-w node1" in recipe_run[0]
    assert "RAY_ADDRESS=10.0.0.1:6379 AVSD_NNODES=2 AVSD_GPUS_PER_NODE=8" in recipe_run[0]
    cfg = compose_verl_config(split_main_ppo(printed_main_ppo(result.stdout))[1])
    assert (cfg.trainer.nnodes, cfg.trainer.n_gpus_per_node) == (2, 8)
    assert cfg.algorithm.adv_estimator == "rlsd" and cfg.trainer.total_training_steps == 7
    verl_preflight(cfg)


def test_slurm_script_stops_when_the_gpus_never_join(tmp_path):
    env = fake_slurm(tmp_path, gpus_in_cluster=8, AVSD_RAY_WAIT_S="0")  # only the head's 8 of 16
    result = run_bash(str(LAUNCH / "slurm_avsd.sbatch"), env=env, cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert "Ray has 8 GPUs after 0s, expected 16" in result.stderr
    assert not any("math_avsd" in c for c in (tmp_path / "srun.log").read_text().splitlines())


def test_slurm_script_outside_an_allocation_says_so():
    result = run_bash(str(LAUNCH / "slurm_avsd.sbatch"), check=False)
    assert result.returncode == 2 and "not inside a SLURM allocation" in result.stderr


# ---------------------------------------------------------------- joining real clusters -----
# tests/test_real_ray.py and tests/test_real_slurm.py run these paths on a real Ray cluster and a
# real SLURM; the cases below check what those cannot reach cheaply (bad values, other modes).


def test_ray_start_passes_ray_flags_and_takes_a_worker_temp_dir():
    head = ray_start("head", "--port", "6390", "--temp-dir", "/tmp/r", "--dry-run", "--", "--dashboard-agent-listen-port=52370")
    assert shlex.split(head.stdout)[-2:] == ["--temp-dir=/tmp/r", "--dashboard-agent-listen-port=52370"]
    worker = ray_start(
        "worker", "--address", "10.1.2.3:6390", "--temp-dir", "/tmp/w", "--dry-run", "--", "--min-worker-port=20000"
    )
    assert shlex.split(worker.stdout) == [
        "ray",
        "start",
        "--address=10.1.2.3:6390",
        "--temp-dir=/tmp/w",
        "--min-worker-port=20000",
    ]


def test_ray_start_prints_the_address_ray_itself_picks():
    """Without --node-ip, the head's notes name the address Ray binds (its route-out address),
    not `hostname`'s first guess."""
    from ray._common.network_utils import node_ip_address_from_perspective

    head = ray_start("head", "--port", "6390", "--dry-run")
    assert f"launch/ray_start.sh worker --address {node_ip_address_from_perspective()}:6390" in head.stderr


def test_every_launch_script_picks_token_auth_when_a_token_exists(tmp_path):
    """Ray 2.60's `ray start --head` turns token auth on when a token exists, its other commands do
    not: the scripts export one RAY_AUTH_MODE for all of them."""
    token = tmp_path / "token"
    token.write_text("0" * 64)
    no_token = clean_env(HOME=str(tmp_path / "home"))
    with_token = clean_env(HOME=str(tmp_path / "home"), RAY_AUTH_TOKEN_PATH=str(token))
    assert "auth disabled" in run_bash(str(LAUNCH / "ray_start.sh"), "head", "--dry-run", env=no_token).stderr
    head = run_bash(str(LAUNCH / "ray_start.sh"), "head", "--dry-run", env=with_token).stderr
    assert "auth token" in head and "RAY_AUTH_MODE=token ray status" in head
    bad = run_bash(str(LAUNCH / "ray_start.sh"), "head", "--dry-run", env={**no_token, "RAY_AUTH_MODE": "yes"}, check=False)
    assert bad.returncode == 2 and "RAY_AUTH_MODE must be 'token' or 'disabled', got 'yes'" in bad.stderr

    # submit_job.sh runs `ray job submit` with the mode the head chose
    fake_ray = tmp_path / "ray"
    fake_ray.write_text('#!/usr/bin/env bash\necho "RAY_AUTH_MODE=$RAY_AUTH_MODE"\n')
    fake_ray.chmod(0o755)
    for env, mode in ((no_token, "disabled"), (with_token, "token")):
        job = run_bash(str(LAUNCH / "submit_job.sh"), "launch/recipes/cpu_toy.sh", env={**env, "AVSD_RAY": str(fake_ray)})
        assert job.stdout.strip() == f"RAY_AUTH_MODE={mode}"
        # a recipe run on a node of the cluster (RAY_ADDRESS): its driver's ray.init joins in that mode
        # too (ray.init with an explicit address never turns token auth on by itself)
        driver = run_bash(
            str(RECIPES / "math_opsd_qwen3_8b.sh"), env={**env, "AVSD_PYTHON": str(fake_ray), "RAY_ADDRESS": "10.0.0.1:6379"}
        )
        assert driver.stdout.strip() == f"RAY_AUTH_MODE={mode}"


def test_cpu_toy_joins_a_cluster_with_ranks_from_the_environment(tmp_path):
    env = clean_env(RAY_ADDRESS="10.0.0.1:6379", AVSD_NNODES="2", AVSD_GPUS_PER_NODE="1", AVSD_OUTPUT_DIR=str(tmp_path))
    cfg = compose_verl_config(dry_run("cpu_toy.sh", env=env)[1])
    assert (cfg.trainer.nnodes, cfg.trainer.n_gpus_per_node) == (2, 1)
    # ray.init refuses num_cpus/num_gpus when it joins a cluster
    assert cfg.ray_kwargs.ray_init.num_cpus is None and cfg.ray_kwargs.ray_init.num_gpus is None
    # 16 prompts over 2 ranks: 8 a rank, in one micro-batch
    assert cfg.actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu == 8
    assert cfg.actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu == 8
    verl_preflight(cfg)
    # on its own Ray (no RAY_ADDRESS): one placeholder GPU a rank
    alone = compose_verl_config(dry_run("cpu_toy.sh", env=clean_env(AVSD_GPUS_PER_NODE="2", AVSD_OUTPUT_DIR=str(tmp_path)))[1])
    assert alone.ray_kwargs.ray_init.num_gpus == 2 and alone.ray_kwargs.ray_init.num_cpus == 16

    for extra, message in (
        ({"AVSD_NNODES": "2"}, "AVSD_NNODES=2 needs a Ray cluster of 2 nodes"),
        ({"AVSD_NNODES": "3", "RAY_ADDRESS": "x:1"}, "3 ranks must divide the 16 prompts"),
        ({"AVSD_GPUS_PER_NODE": "0"}, "AVSD_GPUS_PER_NODE must be a whole number >= 1, got '0'"),
    ):
        result = run_bash(str(RECIPES / "cpu_toy.sh"), "--dry-run", env=clean_env(**extra), check=False)
        assert result.returncode == 2 and message in result.stderr, result.stderr


def test_slurm_cpu_mode_runs_the_toy_recipe_on_placeholder_gpus(tmp_path):
    env = fake_slurm(
        tmp_path, gpus_in_cluster="joined", FAKE_GPUS_PER_NODE="1", SLURM_GPUS_ON_NODE=None, AVSD_CPU="1",
        RECIPE="launch/recipes/cpu_toy.sh", AVSD_OUTPUT_DIR=str(tmp_path / "runs"),
        CUDA_VISIBLE_DEVICES="0", ROCR_VISIBLE_DEVICES="0",
    )  # fmt: skip
    result = run_bash(str(LAUNCH / "slurm_avsd.sbatch"), env=env, cwd=tmp_path)
    calls = (tmp_path / "srun.log").read_text().splitlines()
    assert "CPU mode: 1 placeholder GPUs and 16 CPUs per node" in result.stdout
    assert sum("ray_start.sh" in c and "--num-gpus 1 " in c for c in calls) == 2  # head and worker
    recipe_run = [c for c in calls if "cpu_toy.sh" in c]
    assert len(recipe_run) == 1 and "RAY_ADDRESS=10.0.0.1:6379 AVSD_NNODES=2 AVSD_GPUS_PER_NODE=1" in recipe_run[0]
    # SLURM sets both for some gres setups; verl's workers refuse both
    assert "env -u ROCR_VISIBLE_DEVICES bash launch/recipes/cpu_toy.sh" in recipe_run[0]
    cfg = compose_verl_config(split_main_ppo(printed_main_ppo(result.stdout))[1])
    assert (cfg.trainer.nnodes, cfg.trainer.n_gpus_per_node) == (2, 1) and cfg.ray_kwargs.ray_init.num_cpus is None

    # without AVSD_CPU an allocation with no GPUs is refused, saying how to run on CPUs
    env = fake_slurm(tmp_path / "gpu", gpus_in_cluster="joined", SLURM_GPUS_ON_NODE=None)
    result = run_bash(str(LAUNCH / "slurm_avsd.sbatch"), env=env, cwd=tmp_path, check=False)
    assert result.returncode == 2 and "--gpus-per-node=N" in result.stderr and "AVSD_CPU=1" in result.stderr
    for name, value, message in (
        ("AVSD_CPU", "yes", "AVSD_CPU must be 0 or 1, got 'yes'"),
        ("AVSD_GPUS_PER_NODE", "two", "AVSD_GPUS_PER_NODE must be a whole number >= 1, got 'two'"),
    ):
        bad = run_bash(str(LAUNCH / "slurm_avsd.sbatch"), env={**env, "AVSD_CPU": "1", name: value}, cwd=tmp_path, check=False)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr


def test_local_slurm_rejects_bad_arguments(tmp_path):
    for args, message in (
        ([], "Usage"),
        (["start"], "must be up, down or status, got 'start'"),
        (["up", "--dir"], "--dir needs a value"),
        (["up", "--frob"], "unknown option '--frob'"),
    ):
        result = run_bash(str(LAUNCH / "local_slurm.sh"), *args, check=False)
        assert result.returncode == 2 and message in result.stderr, result.stderr
    # no cluster in that folder: status says so and fails, starting nothing
    result = run_bash(str(LAUNCH / "local_slurm.sh"), "status", "--dir", str(tmp_path / "none"), check=False)
    assert result.returncode == 1 and "not running" in result.stdout
    assert not (tmp_path / "none").exists()


def test_slurm_script_shows_why_ray_status_fails(tmp_path):
    error = "ray.exceptions.AuthenticationError: InvalidAuthToken: token mismatch"
    env = fake_slurm(tmp_path, gpus_in_cluster=16, FAKE_RAY_ERROR=error, AVSD_RAY_WAIT_S="0")
    result = run_bash(str(LAUNCH / "slurm_avsd.sbatch"), env=env, cwd=tmp_path, check=False)
    assert result.returncode == 2 and error in result.stderr
    assert "`ray status` still fails after 0s" in result.stderr and "RAY_AUTH_MODE=disabled" in result.stderr


def test_slurm_script_head_address_and_auth(tmp_path):
    # a node with only loopback: fine alone, refused when other nodes must reach it
    (tmp_path / "a").mkdir()
    env = fake_slurm(tmp_path / "a", gpus_in_cluster="joined", FAKE_NO_IP="1", SLURM_JOB_NODELIST="node1")
    result = run_bash(str(LAUNCH / "slurm_avsd.sbatch"), env=env, cwd=tmp_path)
    assert "head node1 (127.0.0.1:6379)" in result.stdout
    (tmp_path / "b").mkdir()
    env = fake_slurm(tmp_path / "b", gpus_in_cluster="joined", FAKE_NO_IP="1")
    result = run_bash(str(LAUNCH / "slurm_avsd.sbatch"), env=env, cwd=tmp_path, check=False)
    assert result.returncode == 2 and "node1 has no IPv4 address but loopback" in result.stderr

    # a Ray token here: every `ray status` of the script runs in token mode, as the head does
    (tmp_path / "c").mkdir()
    token = tmp_path / "token"
    token.write_text("0" * 64)
    env = fake_slurm(tmp_path / "c", gpus_in_cluster="joined", RAY_AUTH_MODE=None, RAY_AUTH_TOKEN_PATH=str(token))
    result = run_bash(str(LAUNCH / "slurm_avsd.sbatch"), env=env, cwd=tmp_path)
    ray_calls = (tmp_path / "c" / "srun.log.ray").read_text().splitlines()
    assert ray_calls and all(c.endswith("RAY_AUTH_MODE=token") for c in ray_calls)
    assert "Ray auth token" in result.stdout
