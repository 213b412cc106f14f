"""`algorithm.avsd.teacher=ref` with `teacher_placement=rollout`: the views are scored on replicas
of the actor's initial model that verl's teacher_loop builds on a pool of their own
(workers/ref_teacher_pool.py), while verl's own distillation (its loss) stays off.

- The config the trainer produces: verl's distillation off in the run's config (so the actor's
  loss is verl's `ppo_loss` and the agent loop scores nothing of its own), the manager that builds
  the pool, and the teacher described to verl's teacher_loop in a copy (the actor's model path,
  the rollout's inference settings, one replica by default or verl's distillation pool keys).
- What the path cannot do is refused at config time, naming the keys.
- End to end (slow): 2 steps of the real trainer on the CPU; the teacher log-probs of both steps
  are the INITIAL model's (a float64 forward), while the policy itself moved after step 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

from verl_avsd.config import avsd_config
from verl_avsd.teacher_placement import MANAGER_KEY, REF_MANAGER_FQN, check_rollout_placement, use_rollout_teacher
from verl_avsd.toy_run import TOY_VIEW_TEMPLATE, ToyRun, random_toy_model, run_main_ppo, toy_data
from verl_avsd.verl_config import compose_verl_config
from verl_avsd.workers.teacher_context import build_teacher_contexts

TIMEOUT_S = 900
MODEL = "/models/toy"  # composing the config loads nothing


def ref_run_config(*extra: str):
    run = ToyRun(model_dir=MODEL, train_file="t.parquet", val_file="v.parquet", run_dir="/tmp/unused",
                 teacher_placement="rollout", teacher="ref", extra_overrides=list(extra))  # fmt: skip
    config = compose_verl_config(run.overrides())
    OmegaConf.resolve(config)  # as verl's task runner hands it to the trainer
    return config


def checked(config):
    avsd = avsd_config(config.algorithm)
    check_rollout_placement(config, avsd)
    use_rollout_teacher(config)
    return config


def test_the_trainer_keeps_verls_distillation_off_and_describes_the_reference_teacher_to_its_teacher_loop():
    from verl.trainer.distillation import is_distillation_enabled
    from verl.utils.config import omega_conf_to_dataclass
    from verl.utils.import_utils import load_class_from_fqn

    from verl_avsd.workers.ref_teacher_pool import ref_pool_shape, ref_teacher_config

    config = checked(ref_run_config())
    # the run's own config: verl's distillation off (no distillation loss, no teacher log-probs of
    # its own in the agent loop, no teacher pool of the trainer's), the manager that builds the pool
    assert is_distillation_enabled(config.distillation) is False
    assert OmegaConf.select(config, MANAGER_KEY) == REF_MANAGER_FQN
    assert load_class_from_fqn(REF_MANAGER_FQN, "AgentLoopManager").__name__ == "RefTeacherAgentLoopManager"

    before = OmegaConf.to_container(config)
    teacher = ref_teacher_config(config)
    assert OmegaConf.to_container(config) == before  # a copy: the run's config is untouched
    distillation = omega_conf_to_dataclass(teacher.distillation)  # verl's own checks pass
    assert distillation.enabled and list(distillation.teacher_models) == ["default"]
    model = distillation.teacher_models["default"]
    assert model.model_path == MODEL  # the reference = the actor's initial model
    assert (model.num_replicas, distillation.n_gpus_per_node, distillation.nnodes) == (1, 1, 1)
    rollout = config.actor_rollout_ref.rollout
    assert (model.inference.name, model.inference.dtype) == ("hf", rollout.dtype) == ("hf", "float32")
    assert model.inference.enable_prefix_caching == rollout.enable_prefix_caching
    assert ref_pool_shape(config) == (1, 1)
    # verl's teacher-pool keys size the pool when set
    wider = checked(ref_run_config("distillation.nnodes=1", "distillation.n_gpus_per_node=2"))
    assert omega_conf_to_dataclass(ref_teacher_config(wider).distillation).teacher_models["default"].num_replicas == 2


@pytest.mark.parametrize(
    "extra, match",
    [
        (["distillation.enabled=true"], "distillation.enabled=true also turns on verl's own on-policy distillation"),
        (["distillation.teacher_models.teacher_model.model_path=/models/big"], "teacher_model.model_path=/models/big is set"),
        (
            ["+distillation.teacher_models.other.model_path=/models/toy"],
            "distillation.teacher_models.other.model_path=/models/toy is set",
        ),
        (
            ["distillation.nnodes=1", "distillation.n_gpus_per_node=3", "actor_rollout_ref.rollout.tensor_model_parallel_size=2"],
            r"pool distillation.n_gpus_per_node x distillation.nnodes=\(3, 1\)\), which refuses it: .*must divide",
        ),
        (
            ["+actor_rollout_ref.model.override_config.rope_theta=5000", "actor_rollout_ref.model.trust_remote_code=true"],
            "without actor_rollout_ref.model.override_config.rope_theta, actor_rollout_ref.model.trust_remote_code=true",
        ),
        (
            [
                "+actor_rollout_ref.rollout.agent.agent_loop_manager_class=verl_avsd.workers.rollout_teacher.RolloutTeacherAgentLoopManager"
            ],
            "brings its own agent-loop manager \\(verl_avsd.workers.ref_teacher_pool.RefTeacherAgentLoopManager\\)",
        ),
    ],
)
def test_what_the_reference_pool_cannot_do_is_refused_naming_the_keys(extra, match):
    with pytest.raises(ValueError, match=match) as error:
        checked(ref_run_config(*extra))
    assert "teacher_placement" in str(error.value)


def test_the_model_path_may_name_the_actors_model():
    checked(ref_run_config(f"distillation.teacher_models.teacher_model.model_path={MODEL}"))


def test_the_worker_scores_a_ref_teacher_on_the_pools_client_and_current_on_the_rollouts():
    from verl_avsd.workers.rollout_teacher import RolloutTeacherAgentLoopWorker

    worker = RolloutTeacherAgentLoopWorker.__new__(RolloutTeacherAgentLoopWorker)  # no Ray, no model
    worker.llm_client, worker.teacher_client = "rollout replicas", {"default": "reference replicas"}
    worker.avsd = avsd_config({"avsd": {"teacher": "ref"}})
    assert worker._teacher_client() == "reference replicas"
    worker.avsd = avsd_config({"avsd": {"teacher": "current"}})
    assert worker._teacher_client() == "rollout replicas"
    worker.avsd, worker.teacher_client = avsd_config({"avsd": {"teacher": "ref"}}), None
    with pytest.raises(RuntimeError, match="got teacher clients \\[\\], expected the one reference teacher pool"):
        worker._teacher_client()


def test_the_hf_server_uses_sdpa_where_verls_teacher_config_asks_for_flash_attention_it_cannot_have():
    """verl's teacher_loop gives a teacher replica only its model path, so verl's HFModelConfig
    asks for flash_attention_2; the hf server falls back to sdpa when flash-attn is missing."""
    from types import SimpleNamespace

    from transformers.utils import is_flash_attn_2_available

    from verl_avsd.cpu.hf_rollout import _attention_fallback

    wanted = {} if is_flash_attn_2_available() else {"attn_implementation": "sdpa"}
    assert _attention_fallback(SimpleNamespace(_attn_implementation="flash_attention_2")) == wanted
    assert _attention_fallback(SimpleNamespace(_attn_implementation="sdpa")) == {}  # the actor's cpu.yaml choice
    assert _attention_fallback(SimpleNamespace(_attn_implementation="eager")) == {}


# ---- end to end ----


def float64_response_logprobs(model, sequence: list[int], response_len: int) -> torch.Tensor:
    """[R] float64: log p(sequence[-R:][t] | sequence[:-R + t]) from one plain forward."""
    ids = torch.tensor([sequence])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()  # [S, V]
    logp = torch.log_softmax(logits[:-1], dim=-1).gather(1, ids[0, 1:, None])[:, 0]  # [S-1] scores token j+1
    return logp[-response_len:]


@pytest.fixture(scope="module")
def ref_rollout_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("rollout_teacher_ref")
    model_dir = random_toy_model(str(root / "model"))
    data = toy_data(str(root / "data"), n_train=48, n_val=8)
    # lr high enough that one update visibly moves the policy (a `current` teacher would then differ)
    run = ToyRun(model_dir=model_dir, train_file=data["train"], val_file=data["val"], run_dir=str(root / "run"),
                 estimator="avsd", steps=2, prompts_per_step=4, max_response_length=16, dump_rollouts=True, lr=5e-3,
                 teacher_placement="rollout", teacher="ref",
                 # the reference pool needs a (placeholder) GPU of its own beside the actor's
                 extra_overrides=["ray_kwargs.ray_init.num_gpus=2"])  # fmt: skip
    result = run_main_ppo(run.overrides(), run.run_dir, timeout_s=TIMEOUT_S)
    assert result.returncode == 0, f"main_ppo exited {result.returncode} after {result.seconds:.0f}s:\n{result.log_tail()}"
    return model_dir, data, run, result


@pytest.mark.slow
def test_the_reference_teacher_scores_with_the_initial_weights_at_every_step(ref_rollout_run):
    model_dir, data, run, result = ref_rollout_run
    assert sorted(result.metrics) == [1, 2]
    for m in result.metrics.values():
        assert m["avsd/teacher_scoring_s"] > 0 and m["avsd/teacher_tokens"] > 0 and m["avsd/views_scored"] == 3.0
        assert not any(k.startswith("distillation/") for k in m)  # verl's distillation loss never ran

    df = pd.read_parquet(data["train"])
    rows = {e["index"]: r for e, (_, r) in zip(df["extra_info"], df.iterrows())}
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    initial = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval()
    cfg = avsd_config({"avsd": {"view_template": TOY_VIEW_TEMPLATE}})
    student_moved = {}
    for step in (1, 2):
        path = Path(run.run_dir) / "rollouts" / f"rollouts_step{step}.jsonl"
        dumps = [d for d in map(json.loads, path.read_text().splitlines()) if not d["is_padding"]]
        assert len(dumps) == 4
        student_moved[step] = 0.0
        for d in dumps:
            row, response = rows[d["index"]], list(d["response_ids"])
            R = len(response)
            contexts = build_teacher_contexts(tokenizer, [list(row["prompt"])], [row["extra_info"]], cfg)
            got = torch.tensor([[x if x is not None else 0.0 for x in v] for v in d["view_logq"]], dtype=torch.float64)
            for m in range(3):
                want = float64_response_logprobs(initial, contexts.context_ids[0][m].tolist() + response, R)
                assert torch.allclose(got[m, :R], want, atol=1e-4), (step, m, (got[m, :R] - want).abs().max())
            # the student's own log-probs: the initial model at step 1, the updated policy at step 2
            prompt = tokenizer.apply_chat_template(
                list(row["prompt"]), add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"]
            student = float64_response_logprobs(initial, list(prompt) + response, R)
            gap = (torch.tensor(d["student_logp"][:R], dtype=torch.float64) - student).abs().max()
            student_moved[step] = max(student_moved[step], float(gap))
    # step 1 checks this test's own prompt rebuild; step 2 shows the policy the rollout servers hold
    # had moved: a `current` teacher would not have matched the initial model there
    assert student_moved[1] < 1e-4 and student_moved[2] > 1e-2, student_moved


@pytest.mark.parametrize("placement, builds", [("actor", True), ("rollout", False)])
def test_the_actor_workers_hold_the_ref_model_only_where_they_score_it(monkeypatch, placement, builds):
    """With rollout placement the ref teacher has replicas of its own: a second copy of the
    initial model on the actor workers would be memory for nothing (verl builds one anyway for a KL term)."""
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    from verl_avsd import trainer as trainer_module
    from verl_avsd.config import avsd_config

    built = []
    monkeypatch.setattr(PPOTrainer, "_init_resource_pool_mgr", lambda self: None)
    monkeypatch.setattr(trainer_module, "build_ref_model_with_actor", lambda t: built.append(t))
    monkeypatch.setattr(trainer_module, "has_separate_actor", lambda t: False)
    monkeypatch.setattr(trainer_module, "use_actor_worker_class", lambda t, cls: None)
    t = object.__new__(trainer_module.AvsdTrainer)
    t.config = OmegaConf.create({"actor_rollout_ref": {"model": {}, "hybrid_engine": True}})
    t.needs_teacher = True
    t.avsd = avsd_config({"avsd": {"teacher": "ref", "teacher_placement": placement}})
    t._init_resource_pool_mgr()
    assert (built == [t]) is builds
