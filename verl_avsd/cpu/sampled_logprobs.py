"""Per-token log-probs of a `generate` call's sampled tokens, without keeping every step's scores.

The `hf` rollout (verl_avsd/cpu/hf_rollout.py) returns each sampled token's log-probability under the
processed sampling distribution (after temperature / top-k / top-p: vLLM's
`processed_logprobs`). transformers appends its own sampling warpers after any custom logits
processor, so the rollout switches those off and passes the same warpers itself, followed by
the recorder below, which therefore sees exactly the distribution the token is drawn from.
"""

from __future__ import annotations

from typing import Optional

import torch
from transformers import LogitsProcessor
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper


def sampling_warpers(temperature: float, top_k: int, top_p: float) -> list[LogitsProcessor]:
    """transformers' sampling warpers in generate's own order: temperature, top-k, top-p."""
    warpers: list[LogitsProcessor] = []
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k > 0:
        warpers.append(TopKLogitsWarper(top_k=top_k, min_tokens_to_keep=1))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))
    return warpers


class SampledTokenLogProbs(LogitsProcessor):
    """The last logits processor of a `generate` call: records the log-probability of each
    sampled token under the processed distribution, one step at a time.

    Asking generate for `output_scores` keeps every step's scores ([B, V] per step) and a
    log-softmax over them all is a float32 [B, T, V] tensor: 1.6 GB per copy at 32 x 256
    tokens and a 49k vocabulary. Here only the last step's scores [B, V] (generate's own
    tensor, not a copy) and their log-normaliser [B] are held: the token sampled from step t's
    scores is the last column of `input_ids` when step t + 1 calls this processor, and the last
    step's token is the last column of the finished sequences. log p = score - logsumexp.

    The results go into one [B, max_tokens] buffer allocated up front: small tensors kept
    alive between the per-step [B, V] ones fragment the heap (measured: +110 MB of peak RSS
    at 8 x 128 tokens, vocab 65k, with a list of per-step [B] columns).
    """

    def __init__(self, batch_size: int, max_tokens: int) -> None:
        self._log_probs = torch.zeros((batch_size, max_tokens), dtype=torch.float32)  # [B, T]
        self._steps = 0  # tokens recorded so far
        self._scores: Optional[torch.Tensor] = None  # [B, V] processed scores of the last step
        self._log_normaliser: Optional[torch.Tensor] = None  # [B] logsumexp of those scores

    def _take(self, sampled: torch.Tensor) -> None:  # sampled: [B] token ids
        if self._scores is None:
            return
        if self._steps >= self._log_probs.shape[1]:
            raise RuntimeError(f"generate ran more than max_tokens={self._log_probs.shape[1]} steps")
        picked = self._scores.gather(-1, sampled.unsqueeze(-1)).squeeze(-1).float()  # [B]
        self._log_probs[:, self._steps] = (picked - self._log_normaliser).cpu()
        self._steps += 1
        self._scores = self._log_normaliser = None

    def record(self, sampled: torch.Tensor) -> None:
        """Record the token just sampled ([B] ids) now, not when the next step calls the recorder.

        For a stopping criterion (early_rows.py), which generate calls right after each step;
        the recorder's own later call then finds nothing left to record for that step.
        """
        self._take(sampled)

    def recorded(self) -> torch.Tensor:
        """[B, steps] float32 log-probs recorded so far (a view of the buffer)."""
        return self._log_probs[:, : self._steps]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._take(input_ids[:, -1])
        self._scores = scores
        self._log_normaliser = scores.float().logsumexp(dim=-1)
        return scores

    def finish(self, sequences: torch.LongTensor) -> torch.Tensor:
        """[B, T] float32 log-probs of the generated tokens, given generate's output sequences."""
        self._take(sequences[:, -1])
        return self._log_probs[:, : self._steps]


__all__ = ["SampledTokenLogProbs", "sampling_warpers"]
