"""Generation backends for `verl-avsd eval`: k sampled responses per prompt, from vLLM or transformers.

One job: given a HF model folder and the sampling settings, a `GenerateFn` that maps rendered
prompts to k `Generation`s each: vLLM on a GPU (`vllm_generator`), transformers `generate`
otherwise (`hf_generator`), chosen by `choose_backend`. The prompts are rendered exactly as verl's
rollout renders them (`render_prompt`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

from tqdm import tqdm

HF_BATCH_SIZE = 16  # prompts per transformers `generate` call (each with its k samples)


# -- prompts: exactly verl's ----------------------------------------------------------------------


def render_prompt(tokenizer, messages: list[dict], chat_template_kwargs: dict) -> str:
    """The student's prompt text as verl's rollout builds it (verl.utils.tokenizer.chat_template, the
    function its agent loop tokenizes with, `add_generation_prompt=True` and `data.apply_chat_template_kwargs`).

    Generators tokenize it with `add_special_tokens=False`, which gives verl's token ids.
    """
    from verl.utils.tokenizer.chat_template import apply_chat_template

    return apply_chat_template(tokenizer, messages, tokenize=False, add_generation_prompt=True, **chat_template_kwargs)


# -- generation -----------------------------------------------------------------------------------


@dataclass
class Generation:
    """One sampled response."""

    text: str  # decoded without special tokens (what verl's reward sees)
    num_tokens: int  # response tokens, the EOS included (verl's response length)
    truncated: bool  # stopped by the token limit, not by EOS


# generate_fn(prompts, k) -> for each prompt, its k responses
GenerateFn = Callable[[list[str], int], list[list[Generation]]]


def hf_generator(
    model_dir: str,
    *,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
    batch_size: int = HF_BATCH_SIZE,
    progress: bool = True,
) -> GenerateFn:
    """transformers `generate`: batches of left-padded prompts, k samples each (greedy once when
    temperature == 0), every batch seeded with `seed` + its first prompt's position."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32  # CPU: float32 is the fast and exact one
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"  # every prompt ends at the same column, so generation starts together
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos if eos is not None else tokenizer.eos_token_id])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids)
    greedy = temperature <= 0
    max_positions = getattr(model.config, "max_position_embeddings", None)

    @torch.no_grad()
    def generate(prompts: list[str], k: int) -> list[list[Generation]]:
        out: list[list[Generation]] = []
        bar = tqdm(total=len(prompts), desc="generating (hf)", unit="prompt", disable=not progress)
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(
                prompts[start : start + batch_size],
                add_special_tokens=False,  # the chat template already holds every special token verl's ids have
                padding=True,
                return_tensors="pt",
                return_token_type_ids=False,
            )
            width = batch["input_ids"].shape[1]  # P
            room = max_new_tokens if max_positions is None else max(1, min(max_new_tokens, max_positions - width))
            config = GenerationConfig(
                max_new_tokens=room,
                do_sample=not greedy,
                temperature=None if greedy else temperature,
                top_p=None if greedy else top_p,
                top_k=0,  # off, as vLLM's default (transformers would use 50)
                num_return_sequences=1 if greedy else k,
                eos_token_id=sorted(eos_ids),
                pad_token_id=pad_id,
            )
            torch.manual_seed(seed + start)
            sequences = model.generate(**batch.to(device), generation_config=config)  # [B * (k or 1), P + T]
            responses = []
            for tokens in sequences[:, width:].tolist():  # [T] each, padded after the EOS
                length = next((t + 1 for t, token in enumerate(tokens) if token in eos_ids), None)
                kept = tokens[: length or len(tokens)]
                text = tokenizer.decode(kept, skip_special_tokens=True)
                responses.append(Generation(text, num_tokens=len(kept), truncated=length is None))
            per_prompt = 1 if greedy else k
            for p in range(len(responses) // per_prompt):
                samples = responses[p * per_prompt : (p + 1) * per_prompt]
                out.append(samples * k if greedy else samples)  # greedy: the k samples are one response
            bar.update(len(responses) // per_prompt)
        bar.close()
        return out

    return generate


def vllm_generator(model_dir: str, *, temperature: float, top_p: float, max_new_tokens: int, seed: int) -> GenerateFn:
    """vLLM: all prompts in one `generate` call with n = k samples each (GPU)."""
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    llm = LLM(model=model_dir, seed=seed)

    def generate(prompts: list[str], k: int) -> list[list[Generation]]:
        params = SamplingParams(n=k, temperature=temperature, top_p=top_p, top_k=-1, max_tokens=max_new_tokens)
        # token ids, not text: vLLM would tokenize text with the special tokens (a BOS) verl never adds
        requests = [{"prompt_token_ids": tokenizer(p, add_special_tokens=False)["input_ids"]} for p in prompts]
        outputs = llm.generate(requests, params, use_tqdm=True)
        return [[Generation(o.text, len(o.token_ids), o.finish_reason == "length") for o in output.outputs] for output in outputs]

    return generate


def choose_backend(backend: str) -> str:
    if backend != "auto":
        return backend
    import torch

    return "vllm" if torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None else "hf"
