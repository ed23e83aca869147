"""bench/gpu_serve.py, the GPU serve script, run here on CPU with the tiny models (the development .triton/.venv in
place of the GPU bundle): it serves a profile's generated repository, times the ensemble and the baseline, and the
served frames equal the in-process pipeline's exactly. Its GPU figures are not measured here."""
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))

pytestmark = pytest.mark.server


def test_gpu_serve_script_on_cpu(tmp_path):
    import gpu_serve

    out = tmp_path / "report.md"
    rc = gpu_serve.main(["--device", "cpu", "--arch", "tiny", "--baseline", "--height", "32", "--width", "48",
                         "--frames", "5", "--reps", "1", "--work", str(tmp_path / "work"), "--out", str(out)])
    report = out.read_text()
    assert rc == 0, report
    row = next(line for line in report.splitlines() if line.startswith("| tiny |"))
    assert "| t2v-1.3b+baseline |" in row and "| 5x32x48x3 |" in row and "| yes (max 0," in row
    assert "served 50-step CFG baseline (one cold run)" in report and "wan_t2v_dit_0_0" in report
