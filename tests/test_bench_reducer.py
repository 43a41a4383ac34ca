"""scripts/bench_reducer.sh stays runnable: a tiny-width run prints both shapes' rows."""

import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_bench_reducer_prints_both_shapes():
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "bench_reducer.sh"), "--device", "cpu", "--dim", "16",
         "--repeats", "1", "--warmup", "0"],
        capture_output=True, text=True, timeout=300,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| 32x729") or
            line.startswith("| 64x729")]
    assert len(rows) == 2, proc.stdout
    assert "paper-ov-mvbench" in rows[0] and "paper-video" in rows[1]
    tokens = int(rows[0].split("|")[3])
    assert 0 < tokens < 32 * 196


def test_bench_reducer_rejects_missing_cuda():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_reducer.py"), "--device",
                           "cuda"], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2 and "no CUDA device is available" in proc.stderr
