"""``python -m aot_eval``: lmms-eval's command line, with the AOT models' prompt identity.

Same flags as ``python -m lmms_eval`` (the flat ``--model/--tasks`` form). Differences:

1. our model ids are registered even without the installed entry point;
2. tasks are built by :class:`aot_eval.prompts.PromptAliasTaskManager`, so ``llava_onevision_aot``
   / ``llava_vid_aot`` get exactly the prompts of the stock ``llava_onevision`` / ``llava_vid``;
3. ``--output_path`` is required; after the run, rank 0 checks that lmms-eval wrote a results file
   (its CLI exits 0 after a failed evaluation) and writes ``<date>_aot_retention.json`` with the
   measured retention per video beside ``<date>_results.json``. Exit status 1 when no results file
   was written.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Optional

from . import recording


def flag_value(argv: list, name: str) -> Optional[str]:
    """Value of ``--name VALUE`` or ``--name=VALUE`` in ``argv`` (last one wins)."""
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def new_results_files(output_path: Path, since: float) -> list[Path]:
    """``*_results.json`` files under ``output_path`` written after ``since`` (oldest first)."""
    files = [p for p in Path(output_path).rglob("*_results.json") if p.stat().st_mtime >= since]
    return sorted(files, key=lambda p: p.stat().st_mtime)


def retention_path_for(results_file: Path) -> Path:
    """``X/<date>_results.json`` -> ``X/<date>_aot_retention.json``."""
    stem = results_file.name[: -len("_results.json")]
    return results_file.with_name(f"{stem}_aot_retention.json")


def run_lmms_eval(argv: list) -> None:
    """Run lmms-eval's CLI in this process with the prompt alias installed."""
    import lmms_eval.__main__ as lmms_main

    from . import manifests, prompts

    manifests.register()
    lmms_main.TaskManager = prompts.alias_task_manager_class()
    sys.argv = ["lmms_eval"] + list(argv)
    lmms_main.cli_evaluate()


def finish(output_path: Path, since: float) -> int:
    """Rank 0 after the run: check results, place retention records; returns the exit status."""
    results = new_results_files(output_path, since)
    if not results and submission_files(output_path, since):
        return finish_unscored(output_path, since)
    if not results:
        print(f"[aot_eval] ERROR: lmms-eval wrote no results file under {output_path}; "
              "the evaluation failed (see the log above)", file=sys.stderr)
        return 1
    latest = results[-1]
    print(f"[aot_eval] results: {latest}")
    for i, document in enumerate(recording.FINISHED):
        path = retention_path_for(latest)
        if i:
            path = path.with_name(path.stem + f"_{i}.json")
        recording.write_document(document, path)
        overall = document["summary"]["overall"]
        if overall.get("measured"):
            print(f"[aot_eval] retention: {path} (mean {overall['mean']:.4f}, min "
                  f"{overall['min']:.4f}, max {overall['max']:.4f}, {overall['measured']} videos"
                  f"{', ' + str(overall['failed']) + ' failed' if overall['failed'] else ''})")
        else:
            print(f"[aot_eval] retention: {path} (nothing measured)")
    return 0


def submission_files(output_path: Path, since: float) -> list[Path]:
    """Submission files (EgoSchema) lmms-eval wrote under ``output_path/submissions`` since ``since``."""
    folder = Path(output_path) / "submissions"
    if not folder.is_dir():
        return []
    files = [p for p in folder.glob("*.json")
             if p.stat().st_mtime >= since and not p.name.endswith("_aot_retention.json")]
    return sorted(files, key=lambda p: p.stat().st_mtime)


def finish_unscored(output_path: Path, since: float) -> int:
    """EgoSchema without its scoring server: keep the submission, record retention beside it."""
    submission = submission_files(output_path, since)[-1]
    print(f"[aot_eval] no results file, but a submission was written: {submission}\n"
          "[aot_eval] EgoSchema is scored by its server (unreachable from here?): POST the file "
          "as docs/reproduce.md shows")
    for i, document in enumerate(recording.FINISHED):
        path = submission.with_name(submission.stem + (f"_{i}" if i else "") + "_aot_retention.json")
        recording.write_document(document, path)
        print(f"[aot_eval] retention: {path}")
    return 0


def shutdown_distributed() -> None:
    """Destroy the process group (if any) before the interpreter exits: left to interpreter
    shutdown, a gloo rank can abort with "terminate called without an active exception" after
    all work is done (seen once in CI with two CPU processes), failing the launch."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv: Optional[list] = None) -> int:
    """Entry point; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    output = flag_value(argv, "--output_path")
    if output is None:
        print("[aot_eval] ERROR: --output_path is required (results and retention records go "
              "there)", file=sys.stderr)
        return 2
    since = time.time() - 1
    run_lmms_eval(argv)
    shutdown_distributed()
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    return finish(Path(output), since)
