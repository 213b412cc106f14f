"""verl loads `verl_avsd.plugin` through the `verl.plugins` entry point and swallows any error it
raises, so a broken plugin would silently leave the estimators unregistered. Test both halves."""

import importlib
import json
import os
import subprocess
import sys
from importlib.metadata import entry_points

import pytest
import torch


def test_plugin_module_imports_on_its_own():
    importlib.import_module("verl_avsd.plugin")


def test_entry_point_is_declared():
    eps = {ep.name: ep.value for ep in entry_points(group="verl.plugins")}
    assert eps.get("avsd") == "verl_avsd.plugin"


def test_fresh_interpreter_finds_estimators_without_any_import_of_ours():
    code = (
        "from verl.trainer.ppo import core_algos\n"
        "for name in ('avsd', 'avsd_consensus', 'avsd_arithmetic', 'opsd', 'rlsd'):\n"
        "    fn = core_algos.get_adv_estimator_fn(name)\n"
        "    assert fn.__module__ == 'verl_avsd.estimators', fn\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


# `import verl` in a fresh interpreter, as every verl process starts: reports what verl and torch
# look like afterwards, and every change to os.environ with the file of the code that made it
# (verl itself sets some). With VERL_USE_EXTERNAL_PLUGINS=none (verl's switch) the plugin is
# not loaded, which gives the untouched state to compare with.
TOUCHED_PROBE = r"""
import json, os, sys
import torch

env_changes, Environ = [], type(os.environ)

def caller():  # innermost frame outside os / _collections_abc (setdefault, update, pop, ...)
    frame = sys._getframe(2)
    while frame.f_code.co_filename.startswith("<frozen") or frame.f_code.co_filename.endswith(("/os.py", "/_collections_abc.py")):
        frame = frame.f_back
    return frame.f_code.co_filename

def logged(method, what):
    def wrapper(self, key, *value):
        env_changes.append([what, key, *value, caller()])
        return method(self, key, *value)
    return wrapper

Environ.__setitem__ = logged(Environ.__setitem__, "set")
Environ.__delitem__ = logged(Environ.__delitem__, "del")
pin_memory = torch.Tensor.pin_memory
import verl
import verl.utils.distributed
import verl.workers.engine_workers
from verl.plugin.platform import PlatformRegistry, get_platform
from verl.workers.rollout.base import _ROLLOUT_REGISTRY
from verl.workers.rollout.replica import RolloutReplicaRegistry

def where(fn):
    return [fn.__module__, fn.__qualname__, fn.__code__.co_filename]

try:
    platform = type(get_platform()).__name__
except Exception as e:  # VERL_PLATFORM=cpu without the plugin
    platform = repr(e)
packages = [sys.modules[name] for name in ("verl_avsd", "verl_avsd.workers", "verl_avsd.data_prep") if name in sys.modules]
our_dirs = [os.path.dirname(package.__file__) + os.sep for package in packages]
by_us = [any(change[-1].startswith(d) for d in our_dirs) for change in env_changes]
print(json.dumps({
    "plugin_loaded": "verl_avsd.plugin" in sys.modules,
    "env_changes_by_us": [change[:-1] for change, ours in zip(env_changes, by_us) if ours],
    "env_changes_by_others": [change[:-1] for change, ours in zip(env_changes, by_us) if not ours],
    "pin_memory_is_torchs": torch.Tensor.pin_memory is pin_memory,
    "process_group_init": [
        where(verl.utils.distributed.initialize_global_process_group_ray),
        where(verl.workers.engine_workers.initialize_global_process_group_ray),
    ],
    "registered_platforms": list(PlatformRegistry.registered_names()),
    "platform": platform,
    "cpu_modules": sorted(name for name in sys.modules if name == "verl_avsd.cpu" or name.startswith("verl_avsd.cpu.")),
    "hf_rollout_registered": "hf" in RolloutReplicaRegistry._registry and ("hf", "async") in _ROLLOUT_REGISTRY,
}))
"""


def _probe_import_verl(host_env: dict[str, str], plugins: str) -> dict:
    # RAY_ENABLE_UV_RUN_RUNTIME_ENV: `import verl` sets it, and this pytest process may have
    # imported verl already; the probe must see verl set it afresh (its "the log works" check).
    dropped = ("VERL_PLATFORM", "VERL_ENGINE_DEVICE", "VERL_USE_EXTERNAL_MODULES", "RAY_ENABLE_UV_RUN_RUNTIME_ENV")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(host_env, VERL_USE_EXTERNAL_PLUGINS=plugins)
    out = subprocess.run([sys.executable, "-c", TOUCHED_PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def gpu_host_path(tmp_path_factory) -> str:
    """PATH of a GPU node as both verl and verl_avsd.cpu.platform detect one: an nvidia-smi that lists a GPU."""
    fake = tmp_path_factory.mktemp("gpu_host") / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-00000000-0000-0000-0000-000000000000)'\n")
    fake.chmod(0o755)
    return f"{fake.parent}{os.pathsep}{os.environ['PATH']}"


@pytest.fixture(scope="module")
def without_plugin(gpu_host_path) -> dict:
    """verl and torch after `import verl` with the plugin switched off (verl picks CUDA)."""
    return _probe_import_verl({"PATH": gpu_host_path}, plugins="none")


@pytest.mark.parametrize("how", ["nvidia-smi lists a GPU", "VERL_PLATFORM=nvidia"])
def test_gpu_machine_gets_no_cpu_patches(gpu_host_path, without_plugin, how):
    """On a GPU machine the plugin adds names to verl's registries and changes nothing else:
    torch's pin_memory, verl's process-group init, the environment and verl's platform are
    what they are without the plugin."""
    # VERL_PLATFORM is verl's documented override of its platform detection
    host = {"PATH": gpu_host_path} if how.startswith("nvidia-smi") else {"VERL_PLATFORM": "nvidia"}
    with_plugin = _probe_import_verl(host, plugins="auto")
    assert with_plugin["plugin_loaded"] and not without_plugin["plugin_loaded"]
    assert with_plugin["pin_memory_is_torchs"] and without_plugin["pin_memory_is_torchs"]
    assert with_plugin["process_group_init"] == without_plugin["process_group_init"]
    assert all(module == "verl.utils.distributed" for module, _, _ in with_plugin["process_group_init"])
    assert with_plugin["env_changes_by_us"] == []
    assert ["set", "RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0"] in without_plugin["env_changes_by_others"]  # the log works
    assert with_plugin["registered_platforms"] == without_plugin["registered_platforms"]
    assert "cpu" not in with_plugin["registered_platforms"]
    assert with_plugin["platform"] == without_plugin["platform"] == "PlatformCUDA"
    # the CPU port stays apart: only its platform module (which decides, and here only defines
    # things) is imported; the `hf` rollout is a name in verl's registries, its module unloaded
    assert with_plugin["cpu_modules"] == ["verl_avsd.cpu", "verl_avsd.cpu.platform"]
    assert with_plugin["hf_rollout_registered"] and not without_plugin["hf_rollout_registered"]


def test_cpu_platform_selected_gets_its_documented_changes(without_plugin):
    """The same probe sees every change where the CPU platform is selected (VERL_PLATFORM=cpu
    selects it on any host), so the test above would notice one of them on a GPU machine."""
    selected = _probe_import_verl({"VERL_PLATFORM": "cpu"}, plugins="auto")
    assert selected["platform"] == "PlatformCPU"
    assert selected["registered_platforms"] == without_plugin["registered_platforms"] + ["cpu"]
    assert selected["env_changes_by_us"] == [["set", "VERL_ENGINE_DEVICE", "cuda"]]
    assert all(module == "verl_avsd.cpu.platform" for module, _, _ in selected["process_group_init"])
    assert selected["pin_memory_is_torchs"] == torch.accelerator.is_available()
    assert selected["hf_rollout_registered"]
