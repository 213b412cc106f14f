"""Teacher views scored while their sample is still generating: the `hf` server's side of
`algorithm.avsd.teacher_stream_tokens` (rollout placement, `teacher: current`).

Rollout placement scores a sample's M view sequences (view context + response) when its
generation ends (workers/rollout_teacher.py). The `hf` server generates a static batch: rows cut
at max_tokens all end at its last step, together, so scoring that starts at a row's end has no
generation left to hide behind. A causal teacher's log-prob of response token t depends only on
the view context and the tokens before t, though, so the views can be scored as the response
grows. As generation starts the server scores each view's context alone, then every `every`
generated tokens each view's context + the response so far (the results go into its prefix
cache, prompt_logprobs.py, and are otherwise dropped); when the row ends, the request for
context + the whole response finds all but its last few tokens cached (their keys/values and
their log-probs: at most `every` when each round ends before the next tokens come) and runs only
those. The answer is that
final request's, the same one a request sent at the end gets (same layout; the cache is exact).

The worker asks for it with one keyword on its generate request, which verl's LLMServerClient
passes on to the server (vLLM's server takes no such keyword: there the worker scores at the end):

    avsd_follow = {"contexts": [list[int] | None] * M, "temperature": T, "every": k}

and finds in the answer's extra_fields["avsd_follow"] (None if following failed; the worker then
scores at the end, where any real error is raised with its message):

    contexts      the contexts it was asked to follow (what was scored: context + tokens)
    tokens        the response the views were scored with (the generated tokens)
    views         {m: extra_fields of the final prompt-log-prob request of view m}
    streamed_s    seconds the streaming rounds were in flight (all before the row ended: hidden)
    fed_tokens    positions the model ran for these views, over all rounds (the cache's reuse aside)
    after_end_s   seconds from the row's end to its last view scored (the part that can block)
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Optional

logger = logging.getLogger(__name__)

FOLLOW_KWARG = "avsd_follow"  # the generate keyword, and the extra_fields key of the answer

Score = Callable[[list[int], float], Awaitable[dict[str, Any]]]  # (sequence, temperature) -> extra_fields


class Progress:
    """A generating request's tokens so far, published by the generation thread every `every` steps."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.tokens: list[int] = []
        self.changed = asyncio.Event()
        self.ended_s: Optional[float] = None  # wall clock when the row ended (set by the generation thread)

    def update(self, tokens: list[int]) -> None:  # on the server's event loop
        self.tokens = tokens
        self.changed.set()


def follow_request(follow: Any, request_id: str) -> dict:
    """The checked `avsd_follow` keyword: contexts (lists of ids or None), temperature > 0, every >= 1."""
    ok = isinstance(follow, dict) and isinstance(follow.get("contexts"), list)
    ok = ok and all(c is None or (isinstance(c, list) and c) for c in follow["contexts"])
    ok = ok and isinstance(follow.get("every"), int) and follow["every"] >= 1
    ok = ok and isinstance(follow.get("temperature"), (int, float)) and follow["temperature"] > 0
    if not ok:
        raise ValueError(
            f"request {request_id}: {FOLLOW_KWARG} must be {{'contexts': [token ids or None, ...], 'temperature': T > 0, "
            f"'every': int >= 1}}, got {follow!r:.200}"
        )
    return follow


async def follow_views(score: Score, result: asyncio.Future, progress: Progress, follow: dict) -> Optional[dict]:
    """Score the views of one generating request as it grows, then once more at its end."""
    try:
        contexts = {m: list(ids) for m, ids in enumerate(follow["contexts"]) if ids is not None}
        temperature = float(follow["temperature"])
        streamed, scored, fed = 0.0, 0, 0

        async def score_all(tokens: list[int]) -> list[dict[str, Any]]:
            nonlocal fed
            sequences = [context + tokens for context in contexts.values()]
            answers = await asyncio.gather(*(score(sequence, temperature) for sequence in sequences))
            fed += sum(max(len(s) - int(a.get("num_cached_tokens") or 0), 0) for s, a in zip(sequences, answers))
            return answers

        # round 0, as generation starts: the contexts alone (the n rollouts of a prompt share them)
        start = time.time()
        await score_all([])
        streamed += time.time() - start
        while not result.done():
            changed = asyncio.ensure_future(progress.changed.wait())
            await asyncio.wait([changed, result], return_when=asyncio.FIRST_COMPLETED)
            changed.cancel()
            progress.changed.clear()
            tokens = progress.tokens
            if result.done() or len(tokens) - scored < progress.every:
                continue
            start = time.time()
            await score_all(tokens)
            streamed += time.time() - start
            scored = len(tokens)
        if result.cancelled() or result.exception() is not None:
            return None  # the generate request itself reports its error
        tokens = list(result.result()[0])
        ended = progress.ended_s if progress.ended_s is not None else time.time()
        finals = await score_all(tokens) if tokens else []
        return {
            "contexts": follow["contexts"],
            "tokens": tokens,
            "views": dict(zip(contexts, finals)),
            "streamed_s": streamed,
            "fed_tokens": fed,
            "after_end_s": max(time.time() - ended, 0.0),
        }
    except Exception as error:  # noqa: BLE001 - the worker scores at the end and raises any real error there
        logger.warning("hf rollout: following the teacher views failed (%s); the worker scores them at the end", error)
        return None


__all__ = ["FOLLOW_KWARG", "Progress", "follow_request", "follow_views"]
