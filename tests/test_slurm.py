"""The SLURM array and summary job on a real one-node cluster, and the table they write.

The slow test runs a private cluster on this machine: Debian's ``munge``, ``slurmctld``,
``slurmd`` and ``slurm-client`` (installed beforehand by ``bash setup.sh --slurm``, which
``.ci/run`` calls), a munge key, socket and ``slurm.conf`` in a temporary folder (``SLURM_CONF``;
nothing under /etc is used or changed), ports nobody listens on.
``scripts/slurm/submit_table.sh`` then submits, as a user would, the array (full + AOT at 0.10 on
MVBench, overridden by a local task over real mp4s) and the summary job; the test waits for the
jobs and checks ``table.md``. The daemons are stopped afterwards, whatever happened. Skipped, with
the reason, when not root or the binaries are missing; with ``AOT_CI_SLURM=1`` (set by
``.ci/run`` once it has installed them) missing binaries fail the test instead, so CI cannot skip
it unnoticed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo")


# ------------------------------------------------------------------ summariser (fast)
def test_summariser_shows_other_task_scores(tmp_path):
    """A local task run in a benchmark's slot gets its own column with its metric, not dashes."""
    from aot_eval.summarise import main

    for tag, args, value, retention in (("full", "reducer=none", 0.5, 1.0),
                                        ("aot_r0.10", "reducer=aot,retention=0.10", 0.25, 0.1)):
        run = tmp_path / "mvbench" / tag
        run.mkdir(parents=True)
        (run / "x_results.json").write_text(json.dumps({
            "results": {"my_task": {"alias": "my_task", "acc,none": value,
                                    "acc_stderr,none": "N/A"}},
            "config": {"model": "llava_onevision_aot", "model_args": f"pretrained=p,{args}"}}))
        (run / "x_aot_retention.json").write_text(json.dumps({"samples": [
            {"task": "my_task", "doc_id": 0, "retention": retention}]}))
    out = tmp_path / "table"
    assert main([str(tmp_path), "--out", str(out)]) == 0
    text = out.with_suffix(".md").read_text()
    assert "| my_task (other task) | Avg |" in text
    assert "**0.500** acc<br>ret. 100.0% [100.0–100.0] |" in text
    assert "**0.250** acc<br>ret. 10.0% [10.0–10.0] |" in text
    assert "| r=0.10 | — (paper 57.0) |" in text  # MVBench itself was not run: dash, paper


# ------------------------------------------------------------------ the local cluster
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require_cluster_tools() -> None:
    """Skip, with what to do, where the daemons cannot run; fail where CI promised them."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("needs root: runs munged, slurmctld and slurmd as root (SlurmUser=root)")
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing and os.environ.get("AOT_CI_SLURM") == "1":
        pytest.fail(f"AOT_CI_SLURM=1 but {', '.join(missing)} not on PATH: "
                    "bash setup.sh --slurm did not install them")
    if missing:
        pytest.skip(f"SLURM binaries missing ({', '.join(missing)}): "
                    "run `bash setup.sh --slurm` first (apt-get, root)")


SLURM_CONF = """ClusterName=aottest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=600
KillWait=2
# Declare a node as large as eval_array.sbatch asks for (8 CPUs, 64G per task); slurmd takes
# the declared size (config_overrides) on this small machine.
SlurmdParameters=config_overrides
NodeName={host} NodeAddr=127.0.0.1 CPUs=16 RealMemory=131072 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def pid_of(path: Path):
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def alive(pid) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def stop_cluster(root: Path, env: dict) -> None:
    """Cancel our jobs, shut the daemons down, and kill (by their pid files) any that linger."""
    run = lambda *cmd: subprocess.run(cmd, env=env, capture_output=True, timeout=30)  # noqa: E731
    pids = [pid_of(root / name) for name in ("slurmctld.pid", "slurmd.pid",
                                             "munge/munged.pid")]
    if alive(pids[0]):
        run("scancel", "--user", "root")  # slurmstepd kills each job's process tree
        deadline = time.time() + 20
        while time.time() < deadline and subprocess.run(
                ["squeue", "-h"], env=env, capture_output=True, text=True).stdout.strip():
            time.sleep(0.5)
        run("scontrol", "shutdown")
    deadline = time.time() + 15
    while time.time() < deadline and any(alive(p) for p in pids[:2]):
        time.sleep(0.2)
    for pid in pids[:2]:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    if alive(pids[2]):
        run("munged", "--stop", f"--socket={root}/munge/munge.socket")
        time.sleep(0.5)
        if alive(pids[2]):
            os.kill(pids[2], signal.SIGKILL)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running one-node cluster: yields the environment (with ``SLURM_CONF``) to use it."""
    require_cluster_tools()
    root = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "log", "munge"):
        (root / sub).mkdir()
    (root / "munge").chmod(0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=host, root=root, ctld_port=free_port(),
                                      slurmd_port=free_port(),
                                      munge_socket=root / "munge" / "munge.socket"))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        subprocess.run(["munged", "--force", f"--socket={root}/munge/munge.socket",
                        f"--key-file={key}", f"--pid-file={root}/munge/munged.pid",
                        f"--seed-file={root}/munge/seed", f"--log-file={root}/log/munged.log"],
                       env=env, check=True, capture_output=True, timeout=30)
        subprocess.run(["slurmctld", "-f", str(conf)], env=env, check=True, capture_output=True,
                       timeout=30)
        subprocess.run(["slurmd", "-f", str(conf)], env=env, check=True, capture_output=True,
                       timeout=30)
        deadline = time.time() + 30
        state = ""
        while time.time() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True,
                                   text=True, timeout=10).stdout.strip()
            if state == "idle":
                break
            time.sleep(0.3)
        assert state == "idle", f"node not idle after 30 s ({state!r}): " + \
            (root / "log" / "slurmctld.log").read_text()[-2000:]
        yield {"env": env, "root": root}
    finally:
        stop_cluster(root, env)


def wait_for_jobs(env: dict, jobs: list, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        queue = subprocess.run(["squeue", "-h", "-j", ",".join(jobs)], env=env,
                               capture_output=True, text=True, timeout=10).stdout
        if not queue.strip():
            return
        time.sleep(1)
    raise AssertionError(f"jobs {jobs} still queued or running after {timeout:.0f} s:\n{queue}")


def job_states(env: dict, job: str) -> list:
    """(JobState, ExitCode) of a job, one entry per array task."""
    text = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True,
                          text=True, timeout=10).stdout
    return re.findall(r"JobState=(\S+).*?ExitCode=(\S+)", text, flags=re.S)


@pytest.mark.slow
def test_submit_table_runs_array_and_summary_on_a_real_cluster(slurm, tmp_path):
    pytest.importorskip("lmms_eval")
    pytest.importorskip("decord")
    pytest.importorskip("av")
    sys.path.insert(0, str(REPO / "tests" / "llava"))
    import llava_testkit
    from test_eval_e2e import TASK, TASK_UTILS, TASK_YAML, environment, write_video

    started = time.time()
    docs = 2
    rows = []
    for i in range(docs):
        write_video(tmp_path / f"clip{i}.mp4", seed=i)
        rows.append({"id": i, "video": str(tmp_path / f"clip{i}.mp4"),
                     "question": f"What colour is the square in clip {i}?", "answer": "AB"[i]})
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = tmp_path / "tasks" / TASK
    tasks.mkdir(parents=True)
    (tasks / f"{TASK}.yaml").write_text(TASK_YAML.format(
        data=tmp_path / "data.jsonl", ov_post="Answer with the option's letter.",
        vid_post="The best answer is:"))
    (tasks / "utils.py").write_text(TASK_UTILS)
    checkpoint = tmp_path / "llava-qwen-ov-tiny"  # 27 published layers: AOT's layers 5 / 24
    llava_testkit.write_checkpoint(checkpoint, "ov", vision_layers=27)

    work = tmp_path / "submit"  # submitted from outside the checkout, as on a cluster login
    work.mkdir()
    env = {**environment(), **slurm["env"], "PYTHON": sys.executable,
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    extra = (f"--task {TASK} --include-path {tmp_path / 'tasks'} --device cpu --frames 4 "
             "--dtype float32")
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "slurm" / "submit_table.sh"), "--retentions",
         "full 0.10", "--benchmarks", "mvbench", "--model", str(checkpoint), "--output",
         "table-ov", "--extra", extra, "--sbatch-args", "--gres=none"],
        cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = re.search(r"array job (\d+) \(2 tasks\), summary job (\d+)", proc.stdout)
    assert found, proc.stdout
    array, summary = found.groups()

    logs = work / "logs"
    try:
        wait_for_jobs(env, [array, summary], timeout=240)
    finally:
        for log in sorted(logs.glob("*.out")):
            print(f"==== {log.name}\n{log.read_text()[-1500:]}")
    states = job_states(env, array)
    assert len(states) == 2 and all(s == ("COMPLETED", "0:0") for s in states), states
    assert job_states(env, summary) == [("COMPLETED", "0:0")]
    assert sorted(p.name for p in logs.glob("aot-eval-*.out")) == [
        f"aot-eval-{array}_0.out", f"aot-eval-{array}_1.out"]

    table = (work / "table-ov" / "table.md").read_text()
    print(table)
    lines = {line.split("|")[1].strip(): line for line in table.splitlines()
             if line.startswith("| ") and not line.startswith("| setting")}
    assert set(lines) == {"full", "r=0.10"}, table
    assert f"| {TASK} (other task) | Avg |" in table
    full_cell = re.search(r"\*\*([0-9.]+)\*\* acc<br>ret\. 100\.0% \[100\.0–100\.0\]",
                          lines["full"])
    reduced_cell = re.search(r"\*\*([0-9.]+)\*\* acc<br>ret\. ([0-9.]+)% \[", lines["r=0.10"])
    assert full_cell and reduced_cell, table
    for cell in (full_cell, reduced_cell):
        assert float(cell.group(1)) in (0.0, 0.5, 1.0)  # 2 docs
    assert 5.0 < float(reduced_cell.group(2)) < 15.0  # measured retention near 10 %
    csv_text = (work / "table-ov" / "table.csv").read_text()
    assert f"ov,r=0.10,{TASK},acc," in csv_text
    print(f"[slurm] submit to table.md: {time.time() - started:.1f} s")
