"""Control of running denoising jobs by id: progress long-polls and cancels (pure Python, thread-safe).

A served DiT stays a plain (non-decoupled) model, so a caller that wants progress or a cancel sends small *control
requests* to the same model next to its job request. The request carries ``JOB_ID`` (a request parameter); a
control request carries ``CONTROL`` = ``"watch"`` or ``"cancel"`` and the same ``JOB_ID``:

* watch: answered once the job has completed more than ``AFTER_STEP`` steps, has finished, or ``WAIT_MS`` passed;
* cancel: the job stops at its next step boundary (a queued one never starts); answered at once.

Control requests may arrive before the job request they name (both are in flight at once); a cancel then waits for
its job for ``linger_s`` and stops it the moment it arrives. :class:`JobBoard` keeps the records; the answer to
either control is :meth:`JobBoard.snapshot`, a JSON-able dict::

    {"job_id": str, "status": "unknown" | "queued" | "running" | "done" | "cancelled" | "failed",
     "num_steps": int, "steps": [{"step", "num_steps", "elapsed_s", "eta_s"}, ...],   # the steps after AFTER_STEP
     "started_at": unix time of the first step's start | None, "queued_s": seconds queued before it | None,
     "error": str | None}
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .engine import DenoiseJob, StepEvent
from .errors import InvalidRequest

log = logging.getLogger(__name__)

__all__ = ["JobBoard", "JOB_ID", "CONTROL", "AFTER_STEP", "WAIT_MS", "FINISHED"]

# request parameter names shared by the DiT adapter and the streaming orchestrator
JOB_ID, CONTROL, AFTER_STEP, WAIT_MS = "wan_job_id", "wan_control", "wan_after_step", "wan_wait_ms"
FINISHED = ("done", "cancelled", "failed")
MAX_WAIT_S = 60.0

Reply = Callable[[dict], None]


@dataclass
class _Watch:
    after: int
    deadline: float  # monotonic
    reply: Reply


@dataclass
class _Record:
    job: DenoiseJob | None = None     # while the job is in the engine
    final: dict | None = None         # once it has left: its status, steps, times and error (not its tensors)
    steps: list[StepEvent] = field(default_factory=list)
    cancel_reason: str | None = None  # a cancel that arrived before the job
    error: str | None = None          # the job request was refused before it became a job
    expires: float = math.inf         # monotonic; the record is dropped after this (no live job, no watchers)
    watches: list[_Watch] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.job is not None:
            return self.job.status.value
        if self.final is not None:
            return self.final["status"]
        return "failed" if self.error is not None else "unknown"

    @property
    def live(self) -> bool:
        return self.job is not None and not self.job.finished


class JobBoard:
    """Job records by id for watches and cancels. ``linger_s``: how long a finished job (or a cancel / watch for a
    job that has not arrived) is remembered."""

    def __init__(self, linger_s: float = 30.0):
        self.linger_s = linger_s
        self._records: dict[str, _Record] = {}
        self._cv = threading.Condition()
        self._closed = False
        self._timer = threading.Thread(target=self._expire_loop, name="job-board", daemon=True)
        self._timer.start()

    # --- the job's side ------------------------------------------------------------------------------------
    def attach(self, job: DenoiseJob) -> None:
        """Track ``job`` under its id (raises InvalidRequest if a live job holds it). A cancel that came first
        applies now: the job never starts."""
        with self._cv:
            rec = self._records.setdefault(job.job_id, _Record())
            if rec.live:
                raise InvalidRequest(JOB_ID, f"{job.job_id!r} is already in use by a running request")
            rec.job, rec.final, rec.steps, rec.error, rec.expires = job, None, [], None, math.inf
            if rec.cancel_reason is not None:
                job.cancel(rec.cancel_reason)

    def step(self, event: StepEvent) -> None:
        """The job's ``on_step``: record the step and answer the watches it satisfies."""
        with self._cv:
            rec = self._records.get(event.job_id)
            if rec is None:
                return
            rec.steps.append(event)
            due = self._take_due(event.job_id, rec)
        self._answer(due)

    def finish(self, job: DenoiseJob) -> None:
        """The job has left the engine (done, cancelled or failed): answer every watch."""
        with self._cv:
            rec = self._records.get(job.job_id)
            if rec is None or rec.job is not job:
                return
            rec.final = _summary(job)  # the record outlives the job by linger_s; its tensors need not
            rec.job, rec.expires = None, time.monotonic() + self.linger_s
            due = self._take_due(job.job_id, rec)
            self._cv.notify_all()
        self._answer(due)

    def refuse(self, job_id: str, error: str) -> None:
        """The request for ``job_id`` was refused before it became a job (bad input, full queue)."""
        with self._cv:
            rec = self._records.setdefault(job_id, _Record())
            if rec.live:
                return  # a live job holds the id: this refusal was for a duplicate
            rec.job, rec.final, rec.error, rec.expires = None, None, error, time.monotonic() + self.linger_s
            due = self._take_due(job_id, rec)
            self._cv.notify_all()
        self._answer(due)

    # --- the controller's side -------------------------------------------------------------------------------
    def cancel(self, job_id: str, reason: str = "cancelled by the client") -> dict:
        """Stop the job at its next step boundary (or as soon as it arrives). Returns its snapshot."""
        with self._cv:
            rec = self._records.setdefault(job_id, _Record())
            if rec.job is not None:
                rec.job.cancel(reason)
            elif rec.error is None and rec.final is None:
                rec.cancel_reason = reason
                rec.expires = min(rec.expires, time.monotonic() + self.linger_s)
                self._cv.notify_all()
            return self.snapshot(job_id, rec, 0)

    def watch(self, job_id: str, after_step: int, wait_s: float, reply: Reply) -> None:
        """Call ``reply(snapshot)`` once the job has completed more than ``after_step`` steps, has finished, or
        ``wait_s`` (at most 60 s) has passed; from this thread, the engine thread or the board's timer."""
        wait_s = min(max(float(wait_s), 0.0), MAX_WAIT_S)
        with self._cv:
            rec = self._records.setdefault(job_id, _Record())
            if rec.job is None and rec.error is None and rec.final is None:
                rec.expires = min(rec.expires, time.monotonic() + max(wait_s, self.linger_s))
            rec.watches.append(_Watch(int(after_step), time.monotonic() + wait_s, reply))
            due = self._take_due(job_id, rec)
            self._cv.notify_all()
        self._answer(due)

    def snapshot(self, job_id: str, rec: _Record | None = None, after_step: int = 0) -> dict:
        rec = rec or self._records.get(job_id) or _Record()
        info = _summary(rec.job) if rec.job is not None else rec.final or {
            "status": rec.status, "num_steps": 0, "started_at": None, "queued_s": None, "error": rec.error}
        return {"job_id": job_id, **info,
                "steps": [{"step": e.step, "num_steps": e.num_steps, "elapsed_s": round(e.elapsed_s, 6),
                           "eta_s": round(e.eta_s, 6)} for e in rec.steps if e.step > after_step]}

    def __len__(self) -> int:
        with self._cv:
            return len(self._records)

    def close(self) -> None:
        """Answer every pending watch and stop the timer."""
        with self._cv:
            self._closed = True
            due = [(w.reply, self.snapshot(jid, rec, w.after)) for jid, rec in self._records.items()
                   for w in rec.watches]
            for rec in self._records.values():
                rec.watches = []
            self._cv.notify_all()
        self._answer(due)
        self._timer.join(5.0)

    # --- internals -------------------------------------------------------------------------------------------
    def _take_due(self, job_id: str, rec: _Record, now: float | None = None) -> list[tuple[Reply, dict]]:
        """Remove and return the watches that can be answered now (called with the lock held)."""
        now = time.monotonic() if now is None else now
        finished = rec.status in FINISHED
        due, keep = [], []
        for w in rec.watches:
            if finished or len(rec.steps) > w.after or now >= w.deadline:
                due.append((w.reply, self.snapshot(job_id, rec, w.after)))
            else:
                keep.append(w)
        rec.watches = keep
        return due

    @staticmethod
    def _answer(due: list[tuple[Reply, dict]]) -> None:
        for reply, snap in due:
            try:
                reply(snap)
            except Exception:
                log.exception("answering a watch of job %s failed", snap.get("job_id"))

    def _expire_loop(self) -> None:
        """Answer watches whose wait has passed; forget records of finished or never-arrived jobs."""
        while True:
            with self._cv:
                if self._closed:
                    return
                now = time.monotonic()
                due = []
                for job_id, rec in list(self._records.items()):
                    due += self._take_due(job_id, rec, now)
                    if not rec.live and not rec.watches and now >= rec.expires:
                        del self._records[job_id]
                deadlines = [w.deadline for rec in self._records.values() for w in rec.watches]
                deadlines += [rec.expires for rec in self._records.values() if rec.expires < math.inf]
                if not due:
                    self._cv.wait(max(0.0, min(deadlines) - now) + 0.001 if deadlines else None)
            self._answer(due)


def _summary(job: DenoiseJob) -> dict:
    """What a snapshot says about ``job`` (no tensors: a finished job's record is kept a while)."""
    started = None
    if job.started_at is not None:
        started = time.time() - (time.monotonic() - job.started_at)
    return {"status": job.status.value, "num_steps": job.num_steps, "started_at": started,
            "queued_s": None if job.started_at is None else job.started_at - job.submitted_at,
            "error": None if job.error is None else str(job.error)}
