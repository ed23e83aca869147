#!/usr/bin/env python3
"""Reliability, served: bursts of failing requests, recovery after a killed stub, and server RSS over a soak.

    flock /tmp/wan-heavy.lock .venv/bin/python bench/reliability.py --write

One tritonserver started by the launcher with its stub supervisor (TritonServer(supervise=True)), the tiny demo
checkpoints, WAN_NUM_THREADS=1; raw gRPC with tritonclient (a hostile client, not our client library).

* bursts: 200 failing requests (8 at a time) per kind, then one good T2V and one good I2V request: how many were
  answered INVALID_ARGUMENT, how long the burst took, and whether the good requests were served.
* kill -9 of a stub (idle, and mid-request for the 40-step CFG I2V DiT): seconds until the supervisor reloaded the
  model, until a request succeeded again, and whether the dead stub's /dev/shm region was removed.
* soak: VmRSS of tritonserver + every python stub before and after N T2V requests at concurrency C (after a warm-up).
"""
from __future__ import annotations

import argparse
import os
import signal
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench_model import demo_env, emit, ensure_demo_models, header, mib, process_tree, total

MODELS = ["wan_t2v", "wan_i2v", "wan_i2v_baseline"]  # the ensembles pull in their steps
SMALL = {"HEIGHT": 32, "WIDTH": 48, "NUM_FRAMES": 5}


def picture() -> bytes:
    import io

    from PIL import Image
    yy, xx = np.mgrid[0:64, 0:96]
    img = np.stack([xx * 255 // 95, yy * 255 // 63, np.full_like(xx, 90)], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def request(grpc, model: str, values: dict, timeout: float = 120):
    """One raw gRPC request (bytes -> BYTES [1], int -> INT64 [1]); returns the result or the exception."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException
    items = []
    for name, value in values.items():
        arr = np.array([value], dtype=np.object_ if isinstance(value, bytes) else np.int64)
        t = grpcclient.InferInput(name, [1], "BYTES" if isinstance(value, bytes) else "INT64")
        t.set_data_from_numpy(arr)
        items.append(t)
    try:
        return grpc.infer(model, items, outputs=[grpcclient.InferRequestedOutput("VIDEO_MP4")], client_timeout=timeout)
    except InferenceServerException as e:
        return e


def good(grpc, image: bytes) -> bool:
    t2v = request(grpc, "wan_t2v", {"PROMPT": b"a red fox", "SEED": 1, **SMALL})
    i2v = request(grpc, "wan_i2v", {"PROMPT": b"a boat", "SEED": 2, "IMAGE": image, **SMALL})
    return not isinstance(t2v, Exception) and not isinstance(i2v, Exception)


def bursts(grpc, image: bytes, n: int) -> list[dict]:
    kinds = {
        "wan_i2v, bad IMAGE": ("wan_i2v", {"PROMPT": b"x", "SEED": 1, "IMAGE": b"not an image", **SMALL}),
        "wan_i2v, bad PROMPT + good image": ("wan_i2v", {"PROMPT": b"\xff\xfe", "SEED": 1, "IMAGE": image, **SMALL}),
        "wan_i2v, no SEED": ("wan_i2v", {"PROMPT": b"x", "IMAGE": image, **SMALL}),
        "wan_t2v, bad HEIGHT": ("wan_t2v", {"PROMPT": b"x", "SEED": 1, **SMALL, "HEIGHT": 17}),
    }
    rows = []
    for kind, (model, values) in kinds.items():
        t0 = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: request(grpc, model, values, timeout=60), range(n)))
        took = time.monotonic() - t0
        invalid = sum(isinstance(r, Exception) and r.status() == "StatusCode.INVALID_ARGUMENT" for r in results)
        t1 = time.monotonic()
        ok = good(grpc, image)
        rows.append({"kind": kind, "n": n, "invalid": invalid, "burst_s": took, "good": ok,
                     "good_s": time.monotonic() - t1, "ready": grpc.is_server_ready()})
    return rows


def stub_of(srv, model: str):
    from wan_distill.serving.supervisor import list_stubs
    return next(s for s in list_stubs(srv.pid).values() if s.model == model)


def recovery(srv, grpc, image: bytes, model: str, in_flight: bool) -> dict:
    """kill -9 the stub of ``model`` (after its request started when ``in_flight``); time the way back."""
    probe_model, probe = ("wan_i2v_baseline", {"PROMPT": b"a boat", "SEED": 2, "IMAGE": image, **SMALL, "NUM_FRAMES": 1}) \
        if "i2v" in model else ("wan_t2v", {"PROMPT": b"a red fox", "SEED": 1, **SMALL})
    box, thread = {}, None
    if in_flight:
        before = grpc.get_inference_statistics(model).model_stats[0].execution_count
        big = {**probe, "HEIGHT": 256, "WIDTH": 256, "NUM_FRAMES": 9}
        thread = threading.Thread(target=lambda: box.update(r=request(grpc, probe_model, big, 120),
                                                            t=time.monotonic()))
        thread.start()
        deadline = time.monotonic() + 60
        while grpc.get_inference_statistics(model).model_stats[0].execution_count == before and \
                time.monotonic() < deadline:
            time.sleep(0.02)
    dead = stub_of(srv, model)
    shm = Path("/dev/shm") / dead.shm_region
    seen, stop = {"server": True, "model": True, "pipeline": True}, threading.Event()
    sampler = threading.Thread(target=watch_readiness, args=(srv.grpc_url, model, probe_model, seen, stop))
    sampler.start()
    events0 = len(srv.supervisor.events)
    t0 = time.monotonic()
    os.kill(dead.pid, signal.SIGKILL)
    first_error, served_s = None, None
    while time.monotonic() - t0 < 120:
        r = request(grpc, probe_model, probe, timeout=60)
        if not isinstance(r, Exception):
            served_s = time.monotonic() - t0
            break
        first_error = first_error or f"{r.status().rsplit('.', 1)[-1]}: {r.message()[:80]}"
        time.sleep(0.2)
    stop.set()
    sampler.join()
    reloaded = [t for t, m, what in srv.supervisor.events[events0:] if m == model and what == "reloaded"]
    row = {"model": model, "in_flight": in_flight, "reloaded_s": reloaded[0] - t0 if reloaded else None,
           "served_s": served_s, "first_error": first_error or "(none: recovered before the first probe)",
           "shm_left": shm.exists(), "ready_false": [k for k, ok in seen.items() if not ok]}
    if thread is not None:
        thread.join(150)
        r = box.get("r")
        row["in_flight_result"] = ("still running" if thread.is_alive() else
                                   f"{r.status().rsplit('.', 1)[-1]} after {box['t'] - t0:.1f} s"
                                   if isinstance(r, Exception) else "a video (?)")
    return row


def watch_readiness(url: str, model: str, pipeline: str, seen: dict, stop: threading.Event) -> None:
    """Every 50 ms: server ready, model ready, pipeline ready; ``seen[k]`` turns False once any reads false."""
    import tritonclient.grpc as grpcclient
    client = grpcclient.InferenceServerClient(url)
    while not stop.is_set():
        for key, check in (("server", client.is_server_ready), ("model", lambda: client.is_model_ready(model)),
                           ("pipeline", lambda: client.is_model_ready(pipeline))):
            try:
                seen[key] &= bool(check())
            except Exception:
                seen[key] = False
        time.sleep(0.05)
    client.close()


def soak(srv, grpc, n: int, concurrency: int) -> dict:
    values = lambda i: {"PROMPT": b"a red fox", "SEED": i, **SMALL}  # noqa: E731
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda i: request(grpc, "wan_t2v", values(i)), range(2 * concurrency)))  # warm-up
        before = process_tree(srv.pid)
        t0 = time.monotonic()
        results = list(pool.map(lambda i: request(grpc, "wan_t2v", values(i)), range(n)))
        took = time.monotonic() - t0
    after = process_tree(srv.pid)
    growth = {k.split(" (pid")[0]: after[k].get("VmRSS", 0) - before[k].get("VmRSS", 0) for k in after if k in before}
    return {"n": n, "c": concurrency, "errors": sum(isinstance(r, Exception) for r in results), "s": took,
            "before": total(before), "after": total(after), "max_stub": max(growth.items(), key=lambda kv: kv[1])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--burst", type=int, default=200, help="failing requests per burst")
    ap.add_argument("--kills", type=int, default=3, help="idle kills of the T2V DiT stub")
    ap.add_argument("--soak", type=int, default=40, help="soak requests")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--write", action="store_true", help="write bench/results/reliability.md")
    a = ap.parse_args()

    import tritonclient.grpc as grpcclient
    from triton_server import TritonServer
    dirs = ensure_demo_models()
    env = {**demo_env(dirs), "WAN_NUM_THREADS": "1"}
    image = picture()
    with tempfile.TemporaryDirectory() as tmp:
        extra = ["--model-control-mode=explicit", *[f"--load-model={m}" for m in MODELS]]
        with TritonServer(Path(__file__).resolve().parents[1] / "model_repository", env=env, supervise=True,
                          log_path=Path(tmp) / "server.log", extra_args=extra, ready_timeout_s=600) as srv:
            grpc = grpcclient.InferenceServerClient(srv.grpc_url)
            burst_rows = bursts(grpc, image, a.burst)
            kills = [recovery(srv, grpc, image, "wan_t2v_dit", False) for _ in range(a.kills)]
            kills += [recovery(srv, grpc, image, "wan_decode_to_mp4", False),
                      recovery(srv, grpc, image, "wan_i2v_dit_baseline", True)]
            soaked = soak(srv, grpc, a.soak, a.concurrency)
            grpc.close()

    md = header("Reliability (bursts of failing requests, killed stubs, soak)")
    md += "- tiny demo checkpoints, WAN_NUM_THREADS=1, server started with the stub supervisor (1 s poll)\n\n"
    md += (f"**Bursts** ({a.burst} failing requests, 8 at a time, then one good T2V and one good I2V request)\n\n"
           "| burst | INVALID_ARGUMENT | burst time | good T2V + I2V after | their time | server ready |\n"
           "|---|---|---|---|---|---|\n")
    for r in burst_rows:
        md += (f"| {r['kind']} | {r['invalid']}/{r['n']} | {r['burst_s']:.1f} s | {'served' if r['good'] else 'FAILED'} "
               f"| {r['good_s']:.1f} s | {r['ready']} |\n")
    md += ("\n**kill -9 of a python stub** (time from the kill; a probe request every 0.2 s; supervisor: unload, load, "
           "remove the dead stub's /dev/shm region)\n\n"
           "| stub | when | reloaded by the supervisor | first request served | first probe error | "
           "/dev/shm region left | the request in flight | read not ready meanwhile |\n"
           "|---|---|---|---|---|---|---|---|\n")
    for r in kills:
        fmt = lambda s: "never" if s is None else f"{s:.1f} s"  # noqa: E731
        md += (f"| {r['model']} | {'mid-request' if r['in_flight'] else 'idle'} | {fmt(r['reloaded_s'])} | "
               f"{fmt(r['served_s'])} | {r['first_error']} | {'yes' if r['shm_left'] else 'no'} | "
               f"{r.get('in_flight_result', '-')} | {', '.join(r['ready_false']) or 'nothing'} |\n")
    s = soaked
    md += (f"\n**Soak**: {s['n']} T2V requests (32x48x5) at concurrency {s['c']} in {s['s']:.1f} s, "
           f"{s['errors']} errors; VmRSS of tritonserver + stubs {mib(s['before'])} -> {mib(s['after'])} MiB "
           f"({(s['after'] - s['before']) / 2**20:+.1f} MiB); the process that grew most: {s['max_stub'][0]} "
           f"{s['max_stub'][1] / 2**20:+.1f} MiB.\n")
    emit("reliability", md, a.write)
    ok = all(r["good"] and r["invalid"] == r["n"] for r in burst_rows) and all(r["served_s"] for r in kills)
    return 0 if ok and not s["errors"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
