#!/usr/bin/env python3
"""Load: perf_analyzer (scripts/perf_t2v.sh, count_windows) on ``wan_t2v`` at concurrency 1, 2, 4: throughput,
p50/p99 latency, errors (Triton's fail counts of the ensemble and every step), server RSS (tritonserver + all its
python stubs, from /proc) before and after.

    flock /tmp/wan-bench.lock .venv/bin/python bench/load_test.py --write               # tiny demo model
    flock /tmp/wan-bench.lock .venv/bin/python bench/load_test.py --model bench --write # bench model (slow)

Input: bench/perf_input_t2v.json (4 prompts/seeds, geometry from the run config: demo 192x320x17).
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time

from bench_model import (OUT, ROOT, bench_env, demo_env, emit, ensure_bench_model, ensure_demo_models, header, mib,
                         process_tree, repository_copy, snapshot, spec_line, start_server, stats_delta, total)

STEPS = ["wan_t2v", "wan_text_encoder", "wan_t2v_dit", "wan_decode_to_mp4"]


def run_pa(url: str, concurrency: int, count: int, csv_path) -> dict[str, float]:
    env = dict(os.environ, URL=url, CONCURRENCY=str(concurrency), COUNT=str(count), STABILITY="100",
               MAX_TRIALS="10", CSV=str(csv_path))
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "perf_t2v.sh")], env=env, capture_output=True, text=True,
                          timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"perf_analyzer failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    with open(csv_path) as f:
        row = next(csv.DictReader(f))
    return {"throughput": float(row["Inferences/Second"]), "p50": float(row["p50 latency"]) / 1e6,
            "p99": float(row["p99 latency"]) / 1e6}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["demo", "bench"], default="demo")
    ap.add_argument("--concurrency", default="1,2,4")
    ap.add_argument("--count", type=int, default=4, help="perf_analyzer --measurement-request-count per window")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads per python model (num_threads parameter, on a copy of the repository); "
                         "0 = the repository as is (torch default = cores)")
    ap.add_argument("--write", action="store_true", help="write bench/results/load_test.md")
    a = ap.parse_args()
    levels = [int(c) for c in a.concurrency.split(",")]
    env = demo_env(ensure_demo_models()) if a.model == "demo" else bench_env(ensure_bench_model())

    import tritonclient.grpc as grpcclient
    from wan_client import WanClient

    rows, rss = [], {}
    repo = repository_copy(f"threads{a.threads}", {"num_threads": str(a.threads)}) if a.threads else None
    with start_server(env, ["wan_t2v"], f"load_test-{a.model}", repository=repo) as srv:
        grpc = grpcclient.InferenceServerClient(srv.grpc_url)
        rss["after load (idle)"] = process_tree(srv.pid)
        with WanClient(srv.grpc_url, timeout_s=3600, retries=0) as client:
            client.t2v("warm-up", seed=1)  # first-call costs out of the windows
        rss["after 1 warm-up request"] = process_tree(srv.pid)
        for c in levels:
            before = snapshot(grpc, STEPS)
            t0 = time.perf_counter()
            r = run_pa(srv.grpc_url, c, a.count, OUT / f"load_test_c{c}.csv")
            wall = time.perf_counter() - t0
            d = stats_delta(before, snapshot(grpc, STEPS))
            r.update(concurrency=c, wall=wall, ok=d["wan_t2v"]["success_count"],
                     fail=sum(d[m]["fail_count"] for m in STEPS))
            rows.append(r)
            print(f"c={c}: {r['throughput']:.3f} infer/s, p50 {r['p50']:.2f} s, p99 {r['p99']:.2f} s, "
                  f"{r['ok']:.0f} ok / {r['fail']:.0f} failed ({wall:.0f} s)", flush=True)
        rss["after the load runs"] = process_tree(srv.pid)
        grpc.close()

    md = header(f"Load: perf_analyzer on wan_t2v ({a.model} model), concurrency {a.concurrency}, "
                + (f"num_threads {a.threads} per python model" if a.threads else "default torch threads"))
    md += (f"- {spec_line()}\n" if a.model == "bench" else
           "- tiny demo model (TinySpec() defaults), configs/demo run config: 192x320, 17 frames, 4 steps\n")
    md += (f"- scripts/perf_t2v.sh: gRPC, count_windows, --measurement-request-count {a.count}, stability 100 %, "
           "max 10 trials; input bench/perf_input_t2v.json; one instance per model ("
           + (f"a copy of model_repository/ with num_threads {a.threads}" if a.threads else "model_repository/ as is")
           + ")\n\n")
    md += "| concurrency | throughput (videos/s) | p50 s | p99 s | requests ok | failures (Triton) | wall s |\n"
    md += "|---|---|---|---|---|---|---|\n"
    for r in rows:
        md += (f"| {r['concurrency']} | {r['throughput']:.3f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['ok']:.0f} | "
               f"{r['fail']:.0f} | {r['wall']:.0f} |\n")
    base = rows[0]["throughput"]
    md += "\nThroughput vs concurrency 1: " + ", ".join(f"c={r['concurrency']}: {r['throughput'] / base:.2f}x" for r in rows)
    md += ("\n\nServer RSS (MiB, VmRSS summed over tritonserver + its python stubs; peak = VmHWM summed):\n\n"
           "| when | total RSS | total peak (HWM) | tritonserver | stubs |\n|---|---|---|---|---|\n")
    for when, tree in rss.items():
        server = next(v for k, v in tree.items() if k.startswith("tritonserver"))
        stubs = ", ".join(f"{k.split(' (')[0]} {mib(v.get('VmRSS', 0))}" for k, v in sorted(tree.items())
                          if not k.startswith("tritonserver"))
        md += (f"| {when} | {mib(total(tree))} | {mib(total(tree, 'VmHWM'))} | {mib(server.get('VmRSS', 0))} | "
               f"{stubs} |\n")
    emit("load_test" if not a.threads else f"load_test_threads{a.threads}", md, a.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
