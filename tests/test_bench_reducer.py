"""scripts/bench_reducer.sh stays runnable: a tiny-width run prints both shapes' rows, with the
plain reference timed and checked against aot.reduce_video."""

import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_reducer_prints_both_shapes_and_the_reference_ratio():
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "bench_reducer.sh"), "--device", "cpu", "--dim", "16",
         "--repeats", "1", "--warmup", "0", "--reference-repeats", "1"],
        capture_output=True, text=True, timeout=300,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "not the released code itself" in proc.stdout
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| 32x729") or
            line.startswith("| 64x729")]
    assert len(rows) == 2, proc.stdout
    assert "paper-ov-mvbench" in rows[0] and "paper-video" in rows[1]
    assert "floor = the two batched products" in proc.stdout
    for row in rows:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert 0 < int(cells[2]) < 64 * 196
        assert float(cells[9]) > 0 and float(cells[10]) > 0  # floor wall / cpu ms
        for ratio in (cells[11], cells[14], cells[15]):  # aot/floor, ref/aot, ref/floor
            assert ratio.endswith(")") and "x (" in ratio, ratio
        # The floor is a part of the call's work: at width 16 far below the whole call.
        assert float(cells[11].split("x")[0]) > 1, row
        assert float(cells[16]) < 1e-4, "reference and aot.reduce_video disagree"
        assert "->" in cells[17]  # load average at start and end


def test_bench_reducer_rejects_missing_cuda():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_reducer.py"), "--device",
                           "cuda"], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2 and "no CUDA device is available" in proc.stderr


@pytest.mark.slow
def test_bench_memory_measures_one_call_per_frame_count():
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "bench_memory.sh"), "--frames", "4", "6", "--dim", "16"],
        capture_output=True, text=True, timeout=300,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith(("| 4 |", "| 6 |"))]
    assert len(rows) == 2, proc.stdout
    for row in rows:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        peak, working = float(cells[2]), float(cells[3])
        assert peak >= 1.0 and abs(peak - 1.0 - working) < 0.02  # input once + what the call added
        assert float(cells[6]) > 0 and int(cells[11]) > 0  # ms per frame, tokens
        user, sys_, faults, touch = (float(c) for c in cells[7:11])
        assert user > 0 and sys_ >= 0 and faults >= 0 and touch > 0
        assert "->" in cells[12]  # load at start and end
