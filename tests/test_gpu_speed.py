"""bench/gpu_speed.py --tiny (CPU, tiny sizes): every section runs and the report lists each target with a value."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_speed_tiny_runs_every_section(tmp_path):
    out = tmp_path / "gpu_speed.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python_backend"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_speed.py"), "--tiny", "--reps", "1",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    md = out.read_text()
    assert "--tiny: tiny sizes" in md and "- command: `python3 bench/gpu_speed.py --tiny" in md
    for what in ("14B DiT forward", "VAE decode (best", "VAE decode + MP4 encode, overlapped", "end to end 14B",
                 "end to end 1.3B"):
        row = next(line for line in md.splitlines() if line.startswith(f"| {what}"))
        assert re.search(r"\| \*\*\d+\.\d{3}\*\* \|", row), row        # a measured value, not "not measured"
    assert "failed:" not in md, md
    for heading in ("SDPA backends", "RoPE: fp32 vs fp64", "14B DiT forward", "fp8 at load vs bf16", "VAE decode",
                    "Decode + MP4 encode: sequential vs overlapped", "taew2_1 tiny decoder", "End to end"):
        assert f"### {heading}" in md, heading
    assert md.count("| 14B | ") == 4 and md.count("| 1.3B | ") == 4           # eager / compiled x cold / warm
    psnr = re.search(r"\| bf16 \| \*\*[\d.]+\*\* \| [\d.]+ \| ([\d.]+|inf) \|", md)
    assert psnr and float(psnr.group(1)) > 30, "bf16 and fp32 VAEs must be the same network (same random weights)"
