"""The model `verl-avsd eval` loads: a HF folder, or a verl FSDP checkpoint merged by verl's own merger.

One job: resolve `--model` to a HF model folder. A verl checkpoint (`.../global_step_N/actor`) is
merged once by `verl.model_merger` into `global_step_N/actor_hf` (a LoRA adapter folded in) and
reused while its shards are unchanged; a folder we did not write is never deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

MERGED_FOLDER = "actor_hf"  # global_step_N/actor_hf: the merged HF model of global_step_N/actor
MERGE_RECORD = "merged_from.json"


class ModelPathError(ValueError):
    """--model is neither a HF model folder nor a verl checkpoint folder."""


def resolve_model(path: str) -> tuple[str, str | None]:
    """(HF model folder to load, verl checkpoint folder or None)."""
    folder = Path(path)
    for actor in (folder, folder / "actor"):
        if (actor / "fsdp_config.json").is_file():
            return str(merged_hf_folder(actor)), str(actor)
    if (folder / "config.json").is_file():
        if not any(folder.glob("*.safetensors")) and not any(folder.glob("pytorch_model*.bin")):
            raise ModelPathError(f"--model {path}: has config.json but no weights (*.safetensors, pytorch_model*.bin)")
        return str(folder), None
    raise ModelPathError(
        f"--model {path}: neither a Hugging Face model folder (config.json + weights) nor a verl FSDP checkpoint "
        "folder (.../global_step_N/actor with fsdp_config.json and model_world_size_*_rank_*.pt)"
        + ("" if folder.exists() else "; the path does not exist")
    )


def merged_hf_folder(actor: Path) -> Path:
    """The HF model of a verl FSDP checkpoint, merged once by `verl.model_merger` into
    global_step_N/actor_hf and reused while the checkpoint's shards are unchanged.

    A LoRA checkpoint comes out of the merger as base weights plus `lora_adapter/`; the adapter is
    folded into the weights (peft `merge_and_unload`) so that both backends load the trained model.
    """
    target = actor.parent / MERGED_FOLDER
    shards = sorted(actor.glob("model_world_size_*_rank_*.pt"))
    source = {shard.name: [shard.stat().st_size, shard.stat().st_mtime_ns] for shard in shards}
    record_file = target / MERGE_RECORD
    if record_file.is_file() and json.loads(record_file.read_text()).get("shards") == source:
        return target
    if target.exists() and not record_file.is_file():  # not a merge of ours: never delete it
        raise ModelPathError(
            f"{target} exists and was not written by verl-avsd eval (no {MERGE_RECORD}); move it away to merge {actor}"
        )

    from verl.model_merger.base_model_merger import ModelMergerConfig
    from verl.model_merger.fsdp_model_merger import FSDPModelMerger

    work = actor.parent / f".{MERGED_FOLDER}.tmp-{os.getpid()}"  # a merge cut short never looks like a cache
    shutil.rmtree(work, ignore_errors=True)
    print(f"merging verl checkpoint {actor} -> {target} (verl.model_merger, fsdp)", file=sys.stderr)
    config = ModelMergerConfig(
        operation="merge",
        backend="fsdp",
        local_dir=str(actor),
        target_dir=str(work),
        hf_model_config_path=str(actor / "huggingface"),
    )
    merger = FSDPModelMerger(config)
    merger.merge_and_save()
    merger.cleanup()
    lora_folded = (work / "lora_adapter").is_dir()
    if lora_folded:
        _fold_lora_adapter(work)
    record = {"checkpoint": str(actor), "shards": source, "lora_folded": lora_folded}
    (work / MERGE_RECORD).write_text(json.dumps(record))
    shutil.rmtree(target, ignore_errors=True)  # an older merge of ours (checked above)
    os.replace(work, target)
    return target


def _fold_lora_adapter(folder: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    PeftModel.from_pretrained(base, folder / "lora_adapter").merge_and_unload().save_pretrained(folder)
