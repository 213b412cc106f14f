"""A CPU "device" for verl, so `python -m verl.trainer.main_ppo` runs on a machine with no GPU.

verl 0.9.1 reaches every accelerator through one platform object (`verl.plugin.platform`:
`get_platform()` picks the first registered `PlatformBase` whose `is_platform_available`
says yes, in registration order: nvidia, huawei, amd, then plugins). This module registers
one more, named "cpu", for hosts with no accelerator.

Importing this module changes verl, torch or the environment only where the CPU platform is
selected (`cpu_platform_selected()`): `VERL_PLATFORM=cpu`, or `VERL_PLATFORM` unset and no
accelerator on the host (no NVIDIA GPU, even one this process cannot see; no ROCm, no NPU).
There, and only there, it
- registers the "cpu" platform with verl (`PlatformRegistry`);
- sets `VERL_ENGINE_DEVICE=cuda` unless already set (why: `_select_cpu_platform`);
- wraps verl's `initialize_global_process_group_ray` (`_dedupe_process_group_devices`);
- makes `torch.Tensor.pin_memory` a no-op when torch sees no accelerator (`_patch_pin_memory`).
On a GPU machine (or with `VERL_PLATFORM` naming another platform) it only defines things.

What the CPU platform answers:
- device "cpu", process groups over gloo (FSDP2 and all collectives work on gloo);
- `device_module` (what verl calls `get_torch_device()`): `torch.cpu` plus the memory
  and RNG calls that `torch.cuda` has and `torch.cpu` lacks, as no-ops or zeros;
- Ray resource "GPU": verl's resource pools require a GPU (or NPU) count
  (`verl.single_controller.ray.base.ResourcePoolManager._check_resource_available`),
  so a CPU run gives Ray one placeholder GPU (`ray_init.num_gpus=1`, see `cpu_overrides()`).
  No code here or in torch touches it: the CPU torch build has no CUDA.

Selection and registration happen on import. verl imports plugins at `import verl` in every
process, Ray workers included: from `VERL_USE_EXTERNAL_MODULES=verl_avsd.plugin`
(driver's environment, inherited by the Ray workers it starts) or from the `verl.plugins`
entry point (`verl_avsd.plugin`, which imports this module first).

`cpu_overrides()` returns the hydra overrides a CPU run needs (from `cpu.yaml` next to this file), so
the demo, the tests and the docs share one list.
"""

from __future__ import annotations

import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, Optional

import torch
import yaml
from verl.plugin.platform import PlatformBase, PlatformRegistry

from verl_avsd.workers.verl_worker_seam import (
    ENGINE_DEVICE_ENV,
    chosen_platform,
    disable_pin_memory,
    wrap_process_group_init,
)

CPU_PLATFORM_NAME = "cpu"
CPU_OVERRIDES_FILE = Path(__file__).parent / "cpu.yaml"


def _no_op(*args, **kwargs) -> None:
    return None


def _zero(*args, **kwargs) -> int:
    return 0


def _build_cpu_device_module() -> SimpleNamespace:
    """`torch.cpu` with the extra `torch.cuda`-style calls verl makes through `get_torch_device()`.

    verl calls e.g. `get_torch_device().empty_cache()` after every stage and reads memory
    statistics for its logs; on CPU there is no caching allocator, so those are no-ops / 0.
    RNG state is the CPU generator's (there is no other).
    """
    calls: dict[str, Any] = {name: getattr(torch.cpu, name) for name in dir(torch.cpu) if not name.startswith("_")}
    calls.update(
        # memory: no device allocator on CPU
        empty_cache=_no_op,
        ipc_collect=_no_op,
        set_per_process_memory_fraction=_no_op,
        reset_peak_memory_stats=_no_op,
        reset_accumulated_memory_stats=_no_op,
        memory_allocated=_zero,
        memory_reserved=_zero,
        max_memory_allocated=_zero,
        max_memory_reserved=_zero,
        # (free, total) bytes: report the host's memory so free-memory checks pass sensibly
        mem_get_info=lambda *args, **kwargs: _host_memory_free_total(),
        get_device_name=lambda *args, **kwargs: "cpu",
        # RNG: the CPU generator is the only one
        manual_seed=torch.manual_seed,
        manual_seed_all=torch.manual_seed,
        get_rng_state=lambda *args, **kwargs: torch.get_rng_state(),
        set_rng_state=lambda state, *args, **kwargs: torch.set_rng_state(state),
    )
    return SimpleNamespace(**calls)


def _host_memory_free_total() -> tuple[int, int]:
    pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    free_pages = os.sysconf("SC_AVPHYS_PAGES")
    return free_pages * page_size, pages * page_size


def _host_has_accelerator() -> bool:
    """An NVIDIA GPU (see `_has_nvidia_gpu`), a ROCm build of torch or an Ascend NPU."""
    return _has_nvidia_gpu() or torch.version.hip is not None or hasattr(torch, "npu")


def cpu_platform_selected() -> bool:
    """Whether this process runs verl on the CPU platform (and so gets this module's patches).

    `VERL_PLATFORM` is verl's own override of its platform detection: when it is set, "cpu"
    selects this platform and any other name does not. Unset, verl detects, and this platform
    is the one it finds exactly when the host has no accelerator.
    """
    forced = os.environ.get("VERL_PLATFORM", "").strip().lower()
    if forced:
        return forced == CPU_PLATFORM_NAME
    return not _host_has_accelerator()


def _has_nvidia_gpu() -> bool:
    """True if this host has an NVIDIA GPU, even when this process cannot see it.

    A CPU-only Ray actor on a GPU node has `torch.cuda.is_available() == False`; the driver's
    `nvidia-smi` or `/dev/nvidia0` still say the node has GPUs, and then verl must stay on
    its CUDA platform.
    """
    return torch.cuda.is_available() or shutil.which("nvidia-smi") is not None or os.path.exists("/dev/nvidia0")


class PlatformCPU(PlatformBase):
    """verl platform for hosts without any accelerator: torch CPU tensors, gloo collectives."""

    def __init__(self) -> None:
        super().__init__()
        self._device_module = _build_cpu_device_module()

    # --- core device management -------------------------------------------------------

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> ModuleType:
        return self._device_module  # duck-typed like torch.cuda

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        # verl tries the built-in platforms first; this one only answers when no accelerator
        # exists, so a GPU host (or a CPU-only actor on one) never falls back to CPU.
        return not _host_has_accelerator()

    def current_device(self) -> str:
        # verl moves tensors with `.to(get_device_id())`; an int would mean "cuda:<int>",
        # while "cpu" is what `torch.cpu.current_device()` itself returns.
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: Optional[int] = None) -> None:
        return None

    # --- random number generator ------------------------------------------------------

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    # --- memory management ------------------------------------------------------------

    def set_allocator_settings(self, settings: str) -> None:
        return None  # no device caching allocator on CPU

    def empty_cache(self) -> None:
        return None

    # --- device properties ------------------------------------------------------------

    def get_device_capability(self, device_index: int = 0) -> tuple[Optional[int], Optional[int]]:
        return None, None

    # --- distributed communication ----------------------------------------------------

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        # Ray sets CUDA_VISIBLE_DEVICES for the placeholder GPU; nothing on CPU reads it.
        return "CUDA_VISIBLE_DEVICES"

    # --- profiling (none on CPU) ------------------------------------------------------

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    # --- Ray integration --------------------------------------------------------------

    def ray_resource_name(self) -> str:
        return "GPU"  # the placeholder GPU, see the module docstring

    def ray_noset_envvars(self) -> list[str]:
        return []

    # --- IPC / low-level runtime --------------------------------------------------------

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None


def _without_duplicate_devices(backend: str) -> str:
    """'cpu:gloo,cpu:gloo' -> 'cpu:gloo': keep the first backend named for each device type."""
    kept: dict[str, str] = {}
    for entry in backend.split(","):
        device, _, name = entry.partition(":")
        kept.setdefault(device.strip(), entry.strip())
    return ",".join(kept.values())


def _dedupe_process_group_devices(original, device_name, nccl_backend):
    """verl's `initialize_global_process_group_ray`, valid when the device itself is the CPU.

    verl builds the backend string `f"cpu:gloo,{device}:{backend}"`
    (`verl.utils.distributed.initialize_global_process_group_ray`), which for device "cpu" is
    "cpu:gloo,cpu:gloo", and torch rejects a device named twice. The wrapper drops the repeat;
    any string without a repeated device (every GPU setup) passes unchanged. The seam
    (`wrap_process_group_init`) installs it under both names verl calls it by.
    """

    def initialize_global_process_group_ray(timeout_second=None, backend=None):
        backend = backend or f"cpu:gloo,{device_name()}:{nccl_backend()}"
        return original(timeout_second=timeout_second, backend=_without_duplicate_devices(backend))

    return initialize_global_process_group_ray


def _warn_if_platform_chosen_too_early() -> None:
    """verl picks its platform once per process, at the first `get_platform()` call; modules
    such as `verl.workers.engine.fsdp.transformer_impl` (its `device_name`) even cache the device name at
    import. If that happened before this module registered "cpu", this process runs with
    the wrong platform, so say so loudly (verl swallows plugin errors silently)."""
    chosen = chosen_platform()
    if chosen is not None and not isinstance(chosen, PlatformCPU):
        logging.getLogger(__name__).warning(
            "verl chose platform %r before verl_avsd.cpu.platform was imported, so this process "
            "will not run on the CPU platform. Import verl_avsd.cpu.platform before anything that "
            "imports verl.workers (first line of the plugin, or first in VERL_USE_EXTERNAL_MODULES).",
            chosen.device_name,
        )


def _patch_pin_memory() -> None:
    """Page-locked memory exists only for an accelerator; with none, pinning is a no-op.

    verl's FSDP2 reference model (forward only) always uses `CPUOffloadPolicy(pin_memory=True)`
    (`verl.workers.engine.fsdp.transformer_impl.FSDPEngine._build_fsdp_module`), and torch's FSDP2 then calls
    `Tensor.pin_memory()`, which raises "Cannot access accelerator device" when there is none.
    Where torch sees an accelerator (`VERL_PLATFORM=cpu` on a GPU host) pinning works: untouched.
    """
    if torch.accelerator.is_available():
        return
    disable_pin_memory()


def _select_cpu_platform() -> None:
    """Everything this module changes outside itself, in one place: run only where the CPU
    platform is selected, before verl picks its platform (see the module docstring)."""
    PlatformRegistry.register(platform=CPU_PLATFORM_NAME)(PlatformCPU)
    # verl's FSDP engine is plain torch and device-agnostic (it places tensors on
    # `get_device_name()`), but it is registered only for devices "cuda" and "npu"
    # (`EngineRegistry.register` on `verl.workers.engine.fsdp.transformer_impl.FSDPEngineWithLMHead`).
    # verl's own knob VERL_ENGINE_DEVICE (read by `verl.workers.engine.base.EngineRegistry.get_engine_cls`)
    # picks the engine by another device's registration; this runs in each process that selects the CPU platform.
    os.environ.setdefault(ENGINE_DEVICE_ENV, "cuda")
    wrap_process_group_init(_dedupe_process_group_devices)
    _patch_pin_memory()
    _warn_if_platform_chosen_too_early()


# Run as a script (`python -m verl_avsd.cpu.platform`) this file would execute a second time, next
# to the copy the plugin imported (which already did the selection); only the imported copy selects.
if __name__ != "__main__" and cpu_platform_selected():
    _select_cpu_platform()


def cpu_overrides() -> list[str]:
    """The hydra overrides every CPU run of `verl.trainer.main_ppo` needs (cpu.yaml).

    Append run-specific overrides (model path, data, batch sizes, steps) after these.
    """
    with open(CPU_OVERRIDES_FILE) as f:
        spec = yaml.safe_load(f)
    overrides = spec.get("overrides") if isinstance(spec, dict) else None
    if not isinstance(overrides, list) or not all(isinstance(item, str) and "=" in item for item in overrides):
        raise ValueError(f"{CPU_OVERRIDES_FILE}: field 'overrides' must be a list of 'key=value' strings")
    return list(overrides)
