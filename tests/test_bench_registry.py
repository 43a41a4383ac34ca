"""scripts/bench_reducer.py --reducers: every registry reducer timed at both shapes in one run,
each given the inputs its registry entry declares, at the same exact budget."""

import importlib.util
import pathlib
import subprocess
import sys
import types

import aot
from aot.reducers import ABLATION_PREFIX, reducer_names

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "bench_reducer.py"


def bench_module():
    spec = importlib.util.spec_from_file_location("bench_reducer_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_registry_reducer_at_both_shapes():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--dim", "8", "--repeats", "1",
         "--warmup", "0", "--reducers", "all", "--no-aot-table", "--retention", "0.05"],
        capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(REPO),
                                                          "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {}
    for line in proc.stdout.splitlines():
        cells = [cell.strip() for cell in line.split("|")[1:-1]]
        if len(cells) == 9 and cells[1].startswith(("ov ", "video ")):
            rows[cells[0], cells[1].split()[0]] = cells
    names = [n for n in reducer_names() if not n.startswith(ABLATION_PREFIX)]
    for name in names:
        for backbone, frames, per_frame in (("ov", 32, 196), ("video", 64, 169)):
            cells = rows[name, backbone]
            assert int(cells[3]) == aot.exact_budget(0.05, frames, per_frame), cells
            assert float(cells[4]) > 0 and float(cells[6]) > 0 and "->" in cells[8]
    assert rows["aot", "ov"][7] == "1.00x"
    assert "load 1/5/15" in proc.stdout


def test_declared_inputs_are_made_or_the_reducer_skipped():
    bench = bench_module()
    info = types.SimpleNamespace(inputs=("deep_attention", "last_attention", "probe_attention"))
    made = bench.keyword_inputs(info, 4, "cpu")
    assert sorted(made) == ["last_attention", "probe_attention"]
    assert all(value.shape == (4, 729) and (value > 0).all() for value in made.values())
    assert not bool((made["last_attention"] == made["probe_attention"]).all())
    unknown = types.SimpleNamespace(inputs=("last_attention", "global_features"))
    assert bench.keyword_inputs(unknown, 4, "cpu") == "global_features"


def test_bad_reducer_names_are_refused():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--reducers", "bogus", "--no-aot-table"],
                          capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO)})
    assert proc.returncode == 2 and "unknown reducer 'bogus'" in proc.stderr
