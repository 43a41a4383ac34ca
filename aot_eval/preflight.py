"""Checks an evaluation script runs before it launches anything (seconds instead of a traceback
after the model has loaded).

* ``python -m aot_eval.preflight args --backbone ov reducer=aot retention=0.1 ...``: the AOT keys
  of ``--model_args``, through the parser the model itself uses (:func:`parse_reducer`), so a
  typo in a preset or an ablation fails before a model loads; prints what they resolve to.
* ``python -m aot_eval.preflight launch --model PATH_OR_ID --nproc N``: lmms-eval importable, the
  checkpoint present (folder or hub cache), enough GPUs for N processes.

Either exits 0 when all is well, else prints one line ``error: ...`` saying what to do, exit 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys


def check_lmms_eval() -> None:
    if importlib.util.find_spec("lmms_eval") is None:
        raise RuntimeError(f"lmms-eval is not installed in {sys.executable}; run "
                           "'bash setup.sh --eval' and use .venv/bin/python (or set PYTHON)")


def check_checkpoint(model: str) -> None:
    """The checkpoint is a local folder or cached in the Hugging Face hub cache (no download)."""
    from llava.model.builder import resolve_checkpoint

    try:
        resolve_checkpoint(model)
    except FileNotFoundError as error:
        raise RuntimeError(" ".join(str(error).split())) from None


def check_processes(nproc: int, device: str | None) -> None:
    """More than one process needs that many CUDA devices (lmms-eval shards docs over GPUs),
    unless ``--device cpu`` asks for CPU processes on purpose."""
    if nproc <= 1 or (device is not None and str(device).startswith("cpu")):
        return
    import torch

    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if available < nproc:
        raise RuntimeError(f"--nproc {nproc} needs {nproc} CUDA devices but {available} "
                           "visible; use fewer processes, or --device cpu for CPU processes")


def check_reducer_args(backbone: str, pairs: list[str]) -> str:
    """``key=value`` strings -> the resolved reducer description; ValueError when invalid."""
    from .model_args import parse_reducer

    kwargs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{pair!r} is not key=value")
        kwargs[key.strip()] = value.strip()
    spec = parse_reducer(kwargs, backbone)
    return f"reducer={spec.name} ({spec.source})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aot_eval.preflight")
    commands = parser.add_subparsers(dest="command", required=True)
    args_parser = commands.add_parser("args", help="check the AOT keys of --model_args")
    args_parser.add_argument("--backbone", required=True, help="ov or video")
    args_parser.add_argument("pairs", nargs="*", help="key=value (reducer, retention, ...)")
    args_parser.add_argument("--set", action="append", default=[], dest="sets",
                             help="another space-separated set of key=value pairs to check")
    launch = commands.add_parser("launch", help="check lmms-eval, checkpoint and GPUs")
    launch.add_argument("--model", required=True)
    launch.add_argument("--nproc", type=int, default=1)
    launch.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    try:
        if args.command == "args":
            for pairs in ([args.pairs] if args.pairs or not args.sets else []) + \
                    [text.split() for text in args.sets]:
                print(check_reducer_args(args.backbone, pairs))
        else:
            check_lmms_eval()
            check_checkpoint(args.model)
            check_processes(args.nproc, args.device)
    except (RuntimeError, ValueError, TypeError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
