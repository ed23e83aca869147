#!/usr/bin/env python3
"""Step-level batching: served throughput (videos/s) and p50 / p99 latency at concurrency 1, 2, 4, with the DiT
engine batching the steps of concurrent requests (max_jobs_per_call 4, the default) against one request at a time
(max_jobs_per_call 1: the others wait for a free slot), plus the DiT step alone in-process (B jobs per call vs B calls).

    flock /tmp/wan-bench.lock .venv/bin/python bench/step_batching.py --write

Model: the bench model (DiT 1024 x 8 layers, tiny T5 and VAE) at a small geometry where batching can pay (few video
tokens: per-call overheads and weight reads dominate) and at the bench geometry (560 tokens: compute bound on CPU).
Requests: N per concurrency level, distinct seeds, sent by the asyncio client with at most c in flight.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time

from bench_model import (BENCH_SPEC, bench_env, emit, ensure_bench_model, header, repository_copy, spec_line,
                         start_server)

GEOMETRIES = {"small": dict(height=32, width=48, num_frames=5), "bench": dict(height=128, width=224, num_frames=17)}


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


async def drive(url: str, concurrency: int, n: int, geometry: dict) -> dict[str, float]:
    from wan_client import AsyncWanClient
    latencies = []
    sem = asyncio.Semaphore(concurrency)

    async with AsyncWanClient(url, timeout_s=3600, retries=0) as client:
        async def one(i: int):
            async with sem:
                t0 = time.perf_counter()
                await client.t2v(f"batching {i}", seed=1000 + i, **geometry)
                latencies.append(time.perf_counter() - t0)

        await client.t2v("warm-up", seed=1, **geometry)
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - t0
    return {"throughput": n / wall, "p50": statistics.median(latencies), "p99": percentile(latencies, 99), "wall": wall,
            "latencies": latencies}


MODES = (("batched", "4"), ("one at a time", "1"))


def served(paths, geometry: dict, levels: list[int], n: int, rounds: int) -> dict[tuple[str, int], list[dict]]:
    """Both repositories served at once (DiT max_jobs_per_call 4 vs 1); per concurrency level, ``rounds`` rounds of
    n requests alternate between them, so load from other jobs on a shared machine falls on both alike."""
    import contextlib
    out: dict[tuple[str, int], list[dict]] = {}
    with contextlib.ExitStack() as stack:
        urls = {}
        for mode, jobs in MODES:
            repo = repository_copy(f"jobs{jobs}", {"max_jobs_per_call": jobs}, only="_dit")
            urls[mode] = stack.enter_context(
                start_server(bench_env(paths), ["wan_t2v"], f"step_batching-{jobs}", repository=repo)).grpc_url
        for c in levels:
            for r in range(rounds):
                for mode, _ in (MODES if r % 2 == 0 else MODES[::-1]):
                    res = asyncio.run(drive(urls[mode], c, n, geometry))
                    out.setdefault((mode, c), []).append(res)
                    print(f"{mode:>13} c={c} round {r}: {res['throughput']:.3f} videos/s, p50 {res['p50']:.2f} s, "
                          f"p99 {res['p99']:.2f} s", flush=True)
    return out


def in_process(paths, geometry: dict, sizes: list[int], reps: int) -> dict[int, tuple[float, float]]:
    """Seconds per DiT step for B jobs: one call with B rows vs B calls of one row (median of ``reps``)."""
    import torch
    from wan_distill.config import RunConfig
    from wan_distill.pipeline import load_engine
    from wan_distill.requests import check_geometry

    run = RunConfig.from_json(paths["distill"])
    engine = load_engine(paths["model"], run, torch.device("cpu"), max_jobs_per_call=max(sizes))
    shape = check_geometry(run, **geometry).latent_shape
    context = torch.randn(40, engine.cfg.text_dim)
    out = {}
    for b in sizes:
        times = {"batched": [], "alone": []}
        for _ in range(reps):
            jobs = [engine.new_job(context, s, shape) for s in range(b)]
            t0 = time.perf_counter()
            engine.step(jobs)
            times["batched"].append(time.perf_counter() - t0)
            jobs = [engine.new_job(context, s, shape) for s in range(b)]
            t0 = time.perf_counter()
            for j in jobs:
                engine.step([j])
            times["alone"].append(time.perf_counter() - t0)
        out[b] = (statistics.median(times["batched"]), statistics.median(times["alone"]))
        print(f"in-process B={b}: one call {out[b][0]:.3f} s vs {b} calls {out[b][1]:.3f} s", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--geometry", default="small,bench", help="comma list of: " + ", ".join(GEOMETRIES))
    ap.add_argument("--concurrency", default="1,2,4")
    ap.add_argument("--requests", type=int, default=8, help="requests per concurrency level")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per concurrency level and mode")
    ap.add_argument("--reps", type=int, default=5, help="in-process repetitions")
    ap.add_argument("--write", action="store_true", help="write bench/results/step_batching.md")
    a = ap.parse_args()
    levels = [int(c) for c in a.concurrency.split(",")]
    paths = ensure_bench_model()
    md = header("Step-level batching: served throughput and latency, batched vs one request at a time")
    md += f"- {spec_line()}\n- {a.requests} requests per concurrency level (distinct seeds, asyncio client), one " \
          "instance per model, default torch threads; 'one at a time' = the same repository with the DiT's " \
          "max_jobs_per_call 1; both servers up at once, rounds alternating between them (p50 / p99 over all " \
          f"rounds); load average at start {os.getloadavg()[0]:.2f}\n"
    for name in a.geometry.split(","):
        geo = GEOMETRIES[name]
        lat = (16, (geo["num_frames"] - 1) // 4 + 1, geo["height"] // 8, geo["width"] // 8)
        tokens = lat[1] * (lat[2] // 2) * (lat[3] // 2)
        print(f"== {name}: {geo} ({tokens} video tokens)", flush=True)
        dit = in_process(paths, geo, [1, 2, 4], a.reps)
        srv = served(paths, geo, levels, a.requests, a.rounds)
        md += (f"\n### {name} geometry: {geo['height']}x{geo['width']}, {geo['num_frames']} frames ({tokens} video "
               f"tokens + {BENCH_SPEC.text_len} text tokens)\n\n")
        md += "| concurrency | batched videos/s | one-at-a-time videos/s | throughput ratio (median of rounds) | " \
              "ratio per round | batched p50 / p99 s | one-at-a-time p50 / p99 s |\n|---|---|---|---|---|---|---|\n"
        for c in levels:
            b, o = srv[("batched", c)], srv[("one at a time", c)]
            ratios = [x["throughput"] / y["throughput"] for x, y in zip(b, o)]
            bl = [v for x in b for v in x["latencies"]]
            ol = [v for x in o for v in x["latencies"]]
            md += (f"| {c} | {statistics.median(x['throughput'] for x in b):.3f} | "
                   f"{statistics.median(x['throughput'] for x in o):.3f} | **{statistics.median(ratios):.2f}x** | "
                   f"{', '.join(f'{r:.2f}' for r in ratios)} | {statistics.median(bl):.2f} / {percentile(bl, 99):.2f} | "
                   f"{statistics.median(ol):.2f} / {percentile(ol, 99):.2f} |\n")
        md += "\nIn-process DiT step (the engine alone), B jobs of this geometry:\n\n" \
              "| B | one call with B rows (s) | B calls of one row (s) | speedup |\n|---|---|---|---|\n"
        for bsz, (one, many) in dit.items():
            md += f"| {bsz} | {one:.3f} | {many:.3f} | {many / one:.2f}x |\n"
    emit("step_batching", md, a.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
