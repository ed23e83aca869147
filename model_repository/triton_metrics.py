"""Custom Prometheus metrics of the served models (``pb_utils.MetricFamily``; Triton serves them on its metrics port
next to its own). Lives beside triton_io.py: ``wan_distill`` never imports Triton, its engine offers callbacks
(``DenoiseEngine.on_call``, ``ContinuousBatcher(on_counts=)``, a job's ``on_done``) that feed these.

Every metric carries ``model`` (the served model's name). Names and meaning: README "Metrics".
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import triton_python_backend_utils as pb_utils

# seconds: from a tiny CPU test model (ms) to a 14B step at 720P (minutes)
SECONDS_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]
ROWS_BUCKETS = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32]

_families: dict[str, pb_utils.MetricFamily] = {}


def family(name: str, description: str, kind) -> pb_utils.MetricFamily:
    """One MetricFamily per name in this process (kept alive for the process: a Metric must not outlive it)."""
    if name not in _families:
        _families[name] = pb_utils.MetricFamily(name=name, description=description, kind=kind)
    return _families[name]


def histogram(name: str, description: str, labels: dict[str, str], buckets: list[float]):
    return family(name, description, pb_utils.MetricFamily.HISTOGRAM).Metric(labels=labels, buckets=buckets)


def counter(name: str, description: str, labels: dict[str, str]):
    return family(name, description, pb_utils.MetricFamily.COUNTER).Metric(labels=labels)


def gauge(name: str, description: str, labels: dict[str, str]):
    return family(name, description, pb_utils.MetricFamily.GAUGE).Metric(labels=labels)


class DiTMetrics:
    """A served DiT: per-step latency, steps completed, rows per DiT call, stopped jobs, active / queued jobs."""

    def __init__(self, model: str):
        self.model = model
        labels = {"model": model}
        self.step_seconds = histogram("wan_dit_step_duration_seconds",
                                      "Duration of one DiT forward (one denoising step of every job batched in it)",
                                      labels, SECONDS_BUCKETS)
        self.rows = histogram("wan_dit_rows_per_call", "DiT batch rows per forward (one per job, two with CFG)",
                              labels, ROWS_BUCKETS)
        self.steps = counter("wan_dit_steps_total", "Denoising steps completed, summed over requests", labels)
        self.active = gauge("wan_dit_active_jobs", "Requests being denoised now", labels)
        self.queued = gauge("wan_dit_queued_jobs", "Requests waiting for a DiT slot", labels)
        self._stopped: dict[tuple[str, str], object] = {}

    def on_call(self, call) -> None:
        """``DenoiseEngine.on_call``: one DiT forward (``wan_distill.engine.DiTCall``)."""
        self.step_seconds.observe(call.seconds)
        self.rows.observe(call.rows)
        self.steps.increment(call.jobs)

    def on_counts(self, active: int, queued: int) -> None:
        self.active.set(active)
        self.queued.set(queued)

    def on_stopped(self, reason: str, started: bool) -> None:
        """A job stopped before its last step: ``reason`` = cancelled | timeout | shutdown."""
        key = (reason, "running" if started else "queued")
        if key not in self._stopped:
            self._stopped[key] = counter(
                "wan_dit_cancellations_total",
                "Requests stopped before their last denoising step (reason: cancelled, timeout, shutdown; "
                "phase: queued = never started, running = stopped at a step boundary)",
                {"model": self.model, "reason": key[0], "phase": key[1]})
        self._stopped[key].increment(1)


def stop_kind(reason: str) -> str:
    """A job's stop reason (free text) -> the ``reason`` label."""
    if reason.startswith("timed out"):
        return "timeout"
    if "shutting down" in reason:
        return "shutdown"
    return "cancelled"


class StageTimer:
    """A latency histogram for one stage of a model (VAE decode, MP4 encode); ``with timer.time(): ...``."""

    def __init__(self, name: str, description: str, model: str):
        self.metric = histogram(name, description, {"model": model}, SECONDS_BUCKETS)

    @contextmanager
    def time(self):
        t0 = time.monotonic()
        yield
        self.metric.observe(time.monotonic() - t0)
