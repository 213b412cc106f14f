"""The `hf` rollout's adapter inside verl's trainer worker: forwards lifecycle calls and weights
to the replica's server actor (hf_rollout.py::HFRolloutServer), found by its Ray name."""

from __future__ import annotations

import os
from typing import Any, Generator, Optional

import ray
import torch
from verl.workers.config import HFModelConfig, RolloutConfig
from verl.workers.rollout import base as rollout_base

from .hf_rollout import server_actor_name


class HFServerAdapter(rollout_base.BaseRollout):
    """verl's in-worker handle on the `hf` server of this worker's replica."""

    def __init__(self, config: RolloutConfig, model_config: HFModelConfig, device_mesh, replica_rank: int = -1, **kwargs):
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ.get("RANK", "0"))
        # one process per replica (checked in HFReplica), so trainer rank r feeds replica r
        self.replica_rank = rank if replica_rank == -1 else replica_rank
        self.server_handle: Optional[ray.actor.ActorHandle] = None

    def _server(self) -> ray.actor.ActorHandle:
        # looked up lazily: verl builds this adapter before the replica launches its server
        if self.server_handle is None:
            self.server_handle = ray.get_actor(server_actor_name(self.replica_rank))
        return self.server_handle

    async def resume(self, tags: list[str]):
        await self._server().wake_up.remote(tags=tags)

    async def release(self):
        await self._server().sleep.remote()

    async def update_weights(
        self,
        weights: Generator[tuple[str, torch.Tensor], None, None],
        wire_format: str = "named_tensors",
        global_steps: Optional[int] = None,
        peft_config: Any = None,
        **kwargs,
    ):
        if wire_format != "named_tensors":
            raise NotImplementedError(f"hf rollout receives full weights only (wire_format={wire_format!r})")
        if peft_config is not None:
            raise NotImplementedError("hf rollout cannot load a LoRA adapter; set actor_rollout_ref.model.lora.merge=True")
        # The generator may run collectives (FSDP full_tensor), so it is always consumed in full.
        named_tensors = [(name, tensor.detach().to("cpu").clone()) for name, tensor in weights]
        await self._server().update_weights.remote(named_tensors, global_steps)


__all__ = ["HFServerAdapter"]
