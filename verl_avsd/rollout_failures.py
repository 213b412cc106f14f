"""Stop a run whose rollouts keep failing, instead of replacing the failed prompts forever.

Why: `trainer.v1.trainer_mode=avsd_sync` is not verl's literal "sync" mode, so verl's V1 trainer
gives it the async replay buffer (`ReplayBufferAsync`), which evicts every prompt group whose
rollout failed and submits a fresh prompt in its place, with no limit. When Ray kills the rollout
server (e.g. for memory), every request fails with ActorDiedError and the trainer replaced the
failed prompts of the same step 504 times without progress. (verl's sync buffer with
`trainer.v1.sampler.sync_refill_failed_groups=true` loops the same way.)

`ConsecutiveFailures` watches the replay buffer's view of TransferQueue: prompt groups that end
in `failure` with no group `finished` in between are counted, and at
`trainer.v1.avsd_sync.max_consecutive_rollout_failures` (default 32) the run stops with
`RolloutFailureError`, naming any rollout server or agent-loop worker that is dead. A healthy
run's occasional failure is reset by the next finished group.

An agent-loop worker killed mid-generation fails nothing: its prompts stay `running` and the
buffer would wait for them forever. So when no prompt group has changed status for
STALL_CHECK_S while some are in flight, the rollout actors are checked, and a dead one stops the
run too (a slow but live rollout keeps waiting).
"""

from __future__ import annotations

import time

import ray

LIMIT_KEY = "trainer.v1.avsd_sync.max_consecutive_rollout_failures"
DEFAULT_LIMIT = 32  # prompt groups; a dead server fails a whole batch at once, a flaky one rarely twice in a row
STALL_CHECK_S = 60.0  # no status change for this long with prompts in flight: are the rollout actors alive?


class RolloutFailureError(RuntimeError):
    """Rollouts failed `limit` prompt groups in a row; the message says what is dead and what to do."""


def failure_limit(config) -> int:
    """LIMIT_KEY of a verl config (DEFAULT_LIMIT when unset); a positive integer, else an error naming the key."""
    section = config.trainer.get("v1", {}).get("avsd_sync", None) or {}
    value = section.get("max_consecutive_rollout_failures", DEFAULT_LIMIT)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{LIMIT_KEY} must be a positive integer (prompt groups), got {value!r:.80}")
    return value


def dead_actors(named_actors: dict[str, object], timeout_s: float = 10.0) -> list[str]:
    """Names of the actors that Ray reports dead (an actor that is only busy counts as alive)."""
    dead = []
    for name, actor in named_actors.items():
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=timeout_s)
        except ray.exceptions.RayActorError as error:
            dead.append(f"{name} ({type(error).__name__})")
        except Exception:  # busy (GetTimeoutError) or unknown: never stop a run on a guess
            pass
    return dead


class ConsecutiveFailures:
    """Counts failed prompt groups with none finished in between; raises at `limit`, or when
    prompts in flight stall and a rollout actor is dead."""

    def __init__(self, limit: int, describe_dead=lambda: [], stall_check_s: float = STALL_CHECK_S, clock=time.monotonic):
        self.limit = limit
        self.count = 0
        self.describe_dead = describe_dead  # () -> list of dead actors, asked only when stuck
        self.stall_check_s = stall_check_s
        self.clock = clock
        self._finished: set = set()
        self._failed: set = set()
        self._in_flight: set = set()
        self._quiet_since = clock()

    def observe(self, finished: set, failed: set, step: int, in_flight: set = frozenset()) -> None:
        """The buffer's current `finished`, `failure` and pending/running prompt uids (train partition)."""
        new_finished, new_failed = set(finished) - self._finished, set(failed) - self._failed
        changed = bool(new_finished or new_failed) or set(in_flight) != self._in_flight
        self._finished, self._failed, self._in_flight = set(finished), set(failed), set(in_flight)
        if new_finished:
            self.count = 0  # a group came through: the rollout path works
        else:
            self.count += len(new_failed)
        if self.count >= self.limit:
            self._stop(
                step,
                f"{self.count} prompt groups in a row failed their rollout with none finishing ({LIMIT_KEY}={self.limit}); "
                "the replay buffer would replace them forever.",
                self.describe_dead(),
            )
        now = self.clock()
        if changed or not in_flight:
            self._quiet_since = now
        elif now - self._quiet_since >= self.stall_check_s:
            self._quiet_since = now  # check again after another quiet period
            dead = self.describe_dead()
            if dead:
                self._stop(
                    step,
                    f"{len(self._in_flight)} prompt groups have waited {self.stall_check_s:.0f} s for their rollouts "
                    "with no progress, and a rollout actor is dead: they would wait forever.",
                    dead,
                )

    @staticmethod
    def _stop(step: int, what: str, dead: list[str]) -> None:
        raise RolloutFailureError(
            f"stopping at step {step}: {what} "
            + (f"Dead: {', '.join(dead)}. " if dead else "")
            + "A rollout server or agent-loop worker has most likely died; Ray kills workers when the node "
            "runs out of memory (look for 'A worker died or was killed' and 'Error in _run_prompt' in the "
            "log above). Lower the memory use (rollout batch, response length, gpu_memory_utilization) and "
            "resume from the last checkpoint (trainer.resume_mode=auto)."
        )
