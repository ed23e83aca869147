#!/usr/bin/env python3
"""Assemble bench/RESULTS.md from the per-benchmark blocks in bench/results/ (each written by its script's --write)."""
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ORDER = [  # (file, one-command rerun)
    ("distill_speedup.md", ".venv/bin/python bench/distill_speedup.py --write"),
    ("serving_overhead.md", ".venv/bin/python bench/serving_overhead.py --write"),
    ("diffusers_side_by_side.md", ".venv/bin/python bench/diffusers_side_by_side.py --write"),
    ("load_test.md", ".venv/bin/python bench/load_test.py --write"),
    ("load_test_threads1.md", ".venv/bin/python bench/load_test.py --threads 1 --write"),
    ("memory.md", ".venv/bin/python bench/memory.py --write"),
    ("inprocess_stages.md", ".venv/bin/python bench/inprocess_stages.py --write"),
    ("step_batching.md", ".venv/bin/python bench/step_batching.py --requests 4 --rounds 3 --reps 3 --write"),
    ("stream_cancel.md", ".venv/bin/python bench/stream_cancel.py --write"),
    ("reliability.md", ".venv/bin/python bench/reliability.py --write"),
    ("decode_encode.md", ".venv/bin/python bench/decode_encode.py --write"),
    ("x264_settings.md", ".venv/bin/python bench/x264_settings.py --write"),
    ("training.md", "nice -n 15 .venv/bin/python bench/training.py --write"),
    ("training_i2v.md", "nice -n 15 .venv/bin/python bench/training.py --i2v --write"),
    ("gpu_check_h100.md", "PYTHONPATH=python_backend python3 bench/gpu_check.py on a GPU host (see the block)"),
    ("gpu_check.md", "the same, on an H200"),
    ("gpu_compile_h100.md", "PYTHONPATH=python_backend python3 bench/gpu_compile.py on a GPU host"),
    ("gpu_speed.md", "PYTHONPATH=python_backend python3 bench/gpu_speed.py --out bench/results/gpu_speed.md on a GPU "
                     "host (two runs: --sections sdpa,rope,dit14,fp8 / vae,overlap,tae,e2e)"),
    ("gpu_serve.md", "bench/gpu_serve.py on a GPU host (two device calls: see its docstring)"),
]

HEADER = """# Benchmark results

Every figure is a ratio or a time measured within one run on one machine, by the script named in its block; the
development machine is a shared 2-core VM without GPU, so absolute CPU times are noisy and only the ratios within a
run carry meaning. Rerun any block with its command (add `flock /tmp/wan-bench.lock` when other jobs share the
machine), then `.venv/bin/python bench/collect_results.py` to rebuild this file.

| benchmark | rerun |
|---|---|
"""


def main() -> None:
    parts = [HEADER + "".join(f"| {name[:-3]} | `{cmd}` |\n" for name, cmd in ORDER)]
    for name, _ in ORDER:
        path = BENCH / "results" / name
        parts.append(path.read_text().strip() + "\n" if path.is_file() else f"## {name[:-3]}\n\n(not run yet)\n")
    (BENCH / "RESULTS.md").write_text("\n".join(parts))
    print(f"wrote {BENCH / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
