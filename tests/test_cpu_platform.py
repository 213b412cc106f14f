"""The CPU platform (verl_avsd.cpu.platform) and the shared CPU overrides (verl_avsd/cpu/cpu.yaml)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import verl

from verl_avsd.cpu import platform as cpu_platform
from verl_avsd.cpu.platform import PlatformCPU, cpu_overrides

# Runs in a fresh interpreter with the plugin named in VERL_USE_EXTERNAL_MODULES, exactly as
# verl loads it in the trainer and in every Ray worker.
PROBE = r"""
import json, os, torch
import verl
from verl.plugin.platform import get_platform
from verl.utils.device import get_device_id, get_torch_device
from verl.utils.distributed import initialize_global_process_group_ray
from verl.workers.engine import EngineRegistry
from verl.workers.engine.fsdp import FSDPEngineWithLMHead

platform = get_platform()
initialize_global_process_group_ray()  # verl's own call, as TrainingWorker makes it
total = torch.ones(3).to(get_device_id())
torch.distributed.all_reduce(total)
get_torch_device().empty_cache()
print(json.dumps({
    "platform": type(platform).__name__,
    "device": platform.device_name,
    "backend": torch.distributed.get_backend(),
    "all_reduce": total.tolist(),
    "engine_is_fsdp": EngineRegistry.get_engine_cls("language_model", "fsdp2") is FSDPEngineWithLMHead,
}))
torch.distributed.destroy_process_group()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_verl_runs_on_the_cpu_platform_in_a_fresh_process():
    env = dict(
        os.environ,
        VERL_USE_EXTERNAL_MODULES="verl_avsd.cpu.platform",
        RANK="0",
        WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
    )
    env.pop("VERL_PLATFORM", None)
    env.pop("VERL_ENGINE_DEVICE", None)
    result = subprocess.run(["timeout", "300", sys.executable, "-c", PROBE], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe == {
        "platform": "PlatformCPU",
        "device": "cpu",
        "backend": "cpu:gloo",
        "all_reduce": [1.0, 1.0, 1.0],
        "engine_is_fsdp": True,
    }


def test_only_chosen_when_the_host_has_no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(cpu_platform.shutil, "which", lambda name: None)
    monkeypatch.setattr(cpu_platform.os.path, "exists", lambda path: False)
    assert PlatformCPU().is_platform_available(use_smi_check=True)
    # a CPU-only actor on a GPU node: torch sees no GPU, but the driver does
    monkeypatch.setattr(cpu_platform.shutil, "which", lambda name: "/usr/bin/nvidia-smi" if name == "nvidia-smi" else None)
    assert not PlatformCPU().is_platform_available(use_smi_check=True)
    monkeypatch.setattr(cpu_platform.shutil, "which", lambda name: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert not PlatformCPU().is_platform_available(use_smi_check=True)


@pytest.mark.parametrize(
    ("verl_platform", "host_has_gpu", "selected"),
    [("", False, True), ("", True, False), ("cpu", True, True), (" CPU ", False, True), ("nvidia", False, False)],
)
def test_selected_by_verl_platform_else_by_a_host_without_accelerator(monkeypatch, verl_platform, host_has_gpu, selected):
    monkeypatch.setenv("VERL_PLATFORM", verl_platform)
    monkeypatch.setattr(cpu_platform, "_has_nvidia_gpu", lambda: host_has_gpu)
    assert cpu_platform.cpu_platform_selected() is selected


def test_registered_after_the_builtin_platforms():
    from verl.plugin.platform import PlatformRegistry

    names = PlatformRegistry.registered_names()
    assert PlatformRegistry.get("cpu") is PlatformCPU
    assert names.index("cpu") > names.index("nvidia")  # built-ins are probed first


def test_device_module_stands_in_for_torch_cuda():
    device = PlatformCPU().device_module
    state = device.get_rng_state()
    first = torch.rand(4)
    device.set_rng_state(state)
    assert torch.equal(torch.rand(4), first)
    assert device.memory_allocated() == 0 and device.max_memory_reserved() == 0
    free, total = device.mem_get_info()
    assert 0 < free <= total
    assert device.empty_cache() is None and device.synchronize() is None
    assert torch.zeros(2).to(PlatformCPU().current_device()).device.type == "cpu"


@pytest.mark.parametrize(
    ("backend", "expected"),
    [
        ("cpu:gloo,cpu:gloo", "cpu:gloo"),
        ("cpu:gloo,cuda:nccl", "cpu:gloo,cuda:nccl"),
        ("cpu:gloo", "cpu:gloo"),
    ],
)
def test_backend_string_drops_repeated_devices(backend, expected):
    assert cpu_platform._without_duplicate_devices(backend) == expected


def test_cpu_overrides_compose_with_verls_config(tmp_path):
    from hydra import compose, initialize_config_dir

    config_dir = str(Path(verl.__file__).parent / "trainer" / "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        config = compose(config_name="ppo_trainer", overrides=cpu_overrides())
    assert config.actor_rollout_ref.rollout.name == "hf"
    assert config.trainer.device == "cpu" and config.trainer.n_gpus_per_node == 1
    assert config.ray_kwargs.ray_init.num_gpus == 1
    assert config.actor_rollout_ref.actor.strategy == "fsdp2"
    assert config.actor_rollout_ref.model.override_config.attn_implementation == "sdpa"
    assert config.actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype == "fp32"


@pytest.mark.parametrize("content", ["overrides: trainer.device=cpu\n", "overrides:\n  - no_equals_sign\n", "- a=b\n"])
def test_malformed_overrides_file_is_named(tmp_path, monkeypatch, content):
    bad = tmp_path / "cpu.yaml"
    bad.write_text(content)
    monkeypatch.setattr(cpu_platform, "CPU_OVERRIDES_FILE", bad)
    with pytest.raises(ValueError, match=f"{bad}: field 'overrides'"):
        cpu_overrides()


def test_python_m_verl_avsd_cpu_prints_the_overrides_on_the_cpu_platform():
    """The shell scripts' command (launch/recipes/cpu_toy.sh): one override per line on stdout,
    and no "verl chose platform ... before verl_avsd.cpu.platform was imported" on stderr (a
    command that imported the platform module before the plugin once made verl pick "cuda")."""
    # VERL_PLATFORM unset: verl detects its platform as on a user's machine (CPU here and in CI)
    env = {k: v for k, v in os.environ.items() if k not in ("VERL_PLATFORM", "VERL_USE_EXTERNAL_MODULES")}
    out = subprocess.run([sys.executable, "-m", "verl_avsd.cpu"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines() == cpu_overrides()
    assert "verl chose platform" not in out.stderr
