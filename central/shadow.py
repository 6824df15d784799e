"""Shadow mode, the service side: score the shadow strategies after each cycle, off the loop.

The coordinator hands every closed cycle (with a surplus) to ``ShadowService.submit``
right after it has published ``cycle/closed``. One task of the coordinator's
task group (``run``) takes the cycles one at a time and runs every shadow
strategy on them through the pure core (``central.core.shadow.run_shadow``)
on a thread of its own, so the event loop, the reply consumer and the
executed strategy never wait for it. Then it records one row per strategy in
the recorder (``shadow_scores``), saves each strategy's own shadow state
(under ``shadow:<name>``, never the executed strategy's row) and tells the
listeners (``shadow`` event: the operator page updates its tables).

Bounded: one cycle's run at a time. A cycle that closes while the previous
cycle's run is still going is not run: its rows say ``skipped: late``. A
strategy that raises is logged and recorded as an error row; the other
strategies of the cycle, the cycle itself and the coordinator go on.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import structlog

from central.core.shadow import (
    SKIPPED_LATE,
    STATUS_ERROR,
    STATUS_SKIPPED,
    ShadowInputs,
    ShadowRecord,
    run_shadow,
)
from central.core.strategy import Strategy, StrategyState, get_strategy

STATE_PREFIX = "shadow:"
"""Shadow states are saved as ``shadow:<name>`` in ``strategy_states``."""
ERROR_MAX_CHARS = 500

Persist = Callable[[list[ShadowRecord], dict[str, StrategyState]], Awaitable[None]]
"""Writes a cycle's rows and the shadow states that changed (the coordinator's recorder thread)."""


def state_key(name: str) -> str:
    """Where the shadow state of strategy ``name`` is saved."""
    return STATE_PREFIX + name


@dataclass(frozen=True, slots=True)
class ShadowJob:
    """One closed cycle to score, or to record as skipped."""

    cycle_id: str
    inputs: ShadowInputs
    skipped: str | None = None


@dataclass(frozen=True, slots=True)
class StrategyRun:
    """What one shadow strategy gave on one cycle (computed on the shadow thread)."""

    record: ShadowRecord
    state: StrategyState | None  # None: unchanged (it failed)


def run_all(
    job: ShadowJob,
    strategies: Mapping[str, Strategy],
    states: Mapping[str, StrategyState],
    log: Any,
) -> list[StrategyRun]:
    """Every shadow strategy on ``job`` (blocking: call it on the shadow thread)."""
    runs: list[StrategyRun] = []
    surplus_kw = job.inputs.surplus_kw
    for name, strategy in strategies.items():
        started = time.perf_counter()
        try:
            outcome = run_shadow(job.inputs, name, strategy, states.get(name, {}))
        except Exception as exc:
            compute_s = time.perf_counter() - started
            log.exception("shadow_strategy_failed", cycle=job.cycle_id, strategy=name)
            error = "".join(traceback.format_exception_only(exc)).strip()[:ERROR_MAX_CHARS]
            runs.append(StrategyRun(
                ShadowRecord.failed(job.cycle_id, name, surplus_kw, STATUS_ERROR, error,
                                    compute_s),
                None,
            ))
            continue
        compute_s = time.perf_counter() - started
        runs.append(StrategyRun(
            ShadowRecord.scored(job.cycle_id, name, outcome.score, compute_s), outcome.state
        ))
    return runs


class ShadowService:
    """Scores the shadow strategies on each closed cycle, one cycle at a time, off the loop."""

    def __init__(
        self,
        strategies: Mapping[str, Strategy],
        states: Mapping[str, StrategyState],
        persist: Persist,
        notify: Callable[[str, Any], None],
        log: Any | None = None,
    ) -> None:
        self.strategies = dict(strategies)
        self.states: dict[str, StrategyState] = dict(states)
        self._persist = persist
        self._notify = notify
        self.log = log or structlog.get_logger("central.shadow")
        self._queue: asyncio.Queue[ShadowJob] = asyncio.Queue()
        self._busy: str | None = None  # the cycle whose run is queued or going
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadow")
        self.stopped = False  # run() has ended: nothing more is taken
        self.recorded = 0
        self.skipped = 0
        self.errors = 0

    @classmethod
    def build(
        cls,
        names: Sequence[str],
        options_of: Callable[[str], Mapping[str, Any]],
        load_state: Callable[[str], StrategyState],
        persist: Persist,
        notify: Callable[[str, Any], None],
        log: Any | None = None,
    ) -> ShadowService:
        """The shadow strategies ``names``, each built with ``options_of(name)``, with the
        states they saved last time (``load_state(state_key(name))``)."""
        strategies = {name: get_strategy(name, **options_of(name)) for name in names}
        states = {name: load_state(state_key(name)) for name in names}
        return cls(strategies, states, persist, notify, log)

    @property
    def busy(self) -> bool:
        return self._busy is not None

    def submit(self, cycle_id: str, inputs: ShadowInputs) -> None:
        """Queue a closed cycle (from the loop, returns at once); late ones are skipped."""
        if self.stopped:
            self.log.warning("shadow_not_run", cycle=cycle_id, reason="stopping")
            return
        if self._busy is not None:
            self.log.warning("shadow_skipped", cycle=cycle_id, reason="late",
                             running=self._busy)
            self._queue.put_nowait(ShadowJob(cycle_id, inputs, SKIPPED_LATE))
            return
        self._busy = cycle_id
        self._queue.put_nowait(ShadowJob(cycle_id, inputs))

    async def run(self) -> None:
        """Take the queued cycles one at a time until cancelled; never raises otherwise."""
        try:
            while True:
                job = await self._queue.get()
                try:
                    await self._handle(job)
                except Exception:
                    self.log.exception("shadow_failed", cycle=job.cycle_id)
                finally:
                    if job.skipped is None:
                        self._busy = None
        finally:
            self.stopped = True
            # A run still going finishes on its thread; nobody waits for it.
            self._thread.shutdown(wait=False, cancel_futures=True)

    async def _handle(self, job: ShadowJob) -> None:
        log = self.log.bind(cycle=job.cycle_id)
        if job.skipped is not None:
            rows = [
                ShadowRecord.failed(job.cycle_id, name, job.inputs.surplus_kw, STATUS_SKIPPED,
                                    job.skipped)
                for name in self.strategies
            ]
            runs = [StrategyRun(r, None) for r in rows]
            self.skipped += 1
        else:
            loop = asyncio.get_running_loop()
            states = dict(self.states)  # the thread reads its own copy
            try:
                runs = await loop.run_in_executor(
                    self._thread, run_all, job, self.strategies, states, log)
            except Exception as exc:  # the thread pool itself failed: every row an error
                log.exception("shadow_run_failed")
                error = f"{type(exc).__name__}: {exc}"[:ERROR_MAX_CHARS]
                runs = [
                    StrategyRun(ShadowRecord.failed(job.cycle_id, name, job.inputs.surplus_kw,
                                                    STATUS_ERROR, error), None)
                    for name in self.strategies
                ]
        changed = {name: run.state for name, run in zip(self.strategies, runs, strict=True)
                   if run.state is not None}
        self.states.update(changed)
        rows = [run.record for run in runs]
        self.errors += sum(1 for r in rows if r.status == STATUS_ERROR)
        try:
            await self._persist(rows, changed)
        except Exception:
            log.exception("shadow_not_recorded", rows=len(rows))
            return
        self.recorded += 1
        log.info(
            "shadow_recorded",
            scores={r.strategy: _brief(r) for r in rows},
        )
        self._notify("shadow", (job.cycle_id, rows))


def _brief(r: ShadowRecord) -> str:
    if r.status != "ok":
        return f"{r.status}: {r.error}"
    share = f"{100 * r.share:.1f}%" if r.share is not None else "-"
    return f"{share}{' fallback' if r.fallback else ''}"
