"""The generation tail of the `hf` rollout: each row of a `generate` batch is answered when it ends.

One `transformers.generate` call runs a whole batch until its longest row ends. A row that
emitted its EOS at step 3 would otherwise wait for a row running 30 steps, and so would
everything verl does with it next (rollout-side teacher scoring, workers/rollout_teacher.py,
starts when a sample's generation ends). `FinishedRows` is a stopping criterion that never
stops anything: generate calls every criterion right after appending a step's tokens, in the
worker thread that runs generate, and this one hands each newly finished row's
(tokens, log-probs) to a callback (the server resolves that request's future on its event
loop with `call_soon_threadsafe`). The answer is the same one the whole-batch path builds
from generate's output: the tokens up to and including the first EOS, and their log-probs
from the same recorder buffer (sampled_logprobs.py).

`ModelLocks` lets generation and prompt scoring run at the same time (both only read the
weights) while weight loading excludes both: a stale or half-loaded weight read is silently
wrong, so loading takes both locks and waits for any batch in flight.

`eos_token_ids` (which tokens end a row) and `response_length` (where a response ends) are
shared by both answer paths, so the early and the whole-batch answers cannot drift apart.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator, Callable, Optional, Sequence

import torch
from transformers import StoppingCriteria

from .sampled_logprobs import SampledTokenLogProbs

RowResult = tuple[list[int], list[float]]  # generated token ids, their log-probs


def eos_token_ids(model_config, tokenizer) -> list[int]:
    """Every token that ends a response: the generation config's EOS ids plus the tokenizer's."""
    ids: list[int] = []
    generation_config = model_config.generation_config
    configured = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    for candidate in (configured, tokenizer.eos_token_id):
        if candidate is None:
            continue
        for token in candidate if isinstance(candidate, (list, tuple)) else [candidate]:
            if int(token) not in ids:
                ids.append(int(token))
    if not ids:
        raise ValueError(f"hf rollout: model {model_config.path} defines no EOS token; generation would never stop")
    return ids


def response_length(tokens: Sequence[int], eos_token_ids: Sequence[int]) -> int:
    """How many generated tokens form the response: up to and including the first EOS (like vLLM)."""
    for position, token in enumerate(tokens):
        if token in eos_token_ids:
            return position + 1
    return len(tokens)


class FinishedRows(StoppingCriteria):
    """Reports each row of a `generate` batch as soon as its newest token ends it (EOS or max_tokens).

    Returns all-False: generate's own criteria decide when the batch stops; this one only
    watches. It records the newest step's log-probs first (the recorder would otherwise take
    them one forward later, when the next step calls it), so a finished row needs no further
    forward before it is answered.
    """

    def __init__(
        self,
        recorder: SampledTokenLogProbs,
        prompt_width: int,
        max_tokens: int,
        eos_token_ids: Sequence[int],
        on_finished: Callable[[int, RowResult], None],
        on_progress: Optional[Callable[[int, list[int]], None]] = None,
        progress_every: Optional[dict[int, int]] = None,
    ) -> None:
        self.recorder = recorder
        self.prompt_width = prompt_width  # the left-padded prompt columns of input_ids
        self.max_tokens = max_tokens
        self.eos_token_ids = torch.tensor(list(eos_token_ids), dtype=torch.long)  # [E]
        self.on_finished = on_finished
        self.finished: torch.Tensor | None = None  # [B] bool, rows already reported
        # rows whose tokens so far are handed to on_progress every so many steps (the teacher
        # views followed while they generate, view_follower.py)
        self.on_progress = on_progress
        self.progress_every = dict(progress_every or {})

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        batch_size = input_ids.shape[0]
        self.recorder.record(input_ids[:, -1])
        if self.finished is None:
            self.finished = torch.zeros(batch_size, dtype=torch.bool)
        newest = input_ids[:, -1].cpu()  # [B]
        ends = torch.isin(newest, self.eos_token_ids)  # [B]
        steps = input_ids.shape[1] - self.prompt_width
        if steps >= self.max_tokens:
            ends[:] = True
        rows = (ends & ~self.finished).nonzero().flatten().tolist()
        for row, every in self.progress_every.items():
            if steps % every == 0 and not self.finished[row] and not ends[row]:
                self.on_progress(row, input_ids[row, self.prompt_width :].tolist())
        if rows:
            self.finished[rows] = True
            generated = input_ids[rows, self.prompt_width :].cpu()  # [R, steps]
            log_probs = self.recorder.recorded()  # [B, steps]
            for index, row in enumerate(rows):
                # a row not finished before this step has no EOS before its newest token
                self.on_finished(row, (generated[index].tolist(), log_probs[row, :steps].tolist()))
        return torch.zeros(batch_size, dtype=torch.bool, device=input_ids.device)


class ModelLocks:
    """Generation and scoring each hold their own lock; weight loading takes both."""

    def __init__(self) -> None:
        self.generation = asyncio.Lock()
        self.scoring = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """For loading weights or dropping caches: waits for the batches in flight, blocks new ones."""
        # always in this order, and only here are both held, so two loaders cannot deadlock
        async with self.generation, self.scoring:
            yield


def resolve(future: asyncio.Future, result: RowResult) -> None:
    """Set a request's result on its event loop unless the caller gave up or it is already set."""
    if not future.done():
        future.set_result(result)


__all__ = ["FinishedRows", "ModelLocks", "RowResult", "eos_token_ids", "resolve", "response_length"]
