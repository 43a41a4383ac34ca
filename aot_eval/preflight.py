"""Checks an evaluation script runs before it launches anything (seconds instead of a traceback
after the model has loaded).

* ``python -m aot_eval.preflight args --backbone ov reducer=aot retention=0.1 ...``: the AOT keys
  of ``--model_args``, through the parser the model itself uses (:func:`parse_reducer`), so a
  typo in a preset or an ablation fails before a model loads; prints what they resolve to.
* ``python -m aot_eval.preflight launch --model PATH_OR_ID --nproc N [--backbone B]``: lmms-eval
  importable, the checkpoint present (folder or hub cache) and, with ``--backbone``, of the
  architecture that backbone's model loads; enough GPUs for N processes.

* ``python -m aot_eval.preflight facts --backbone B [--benchmark X] [key=value ...]``: the facts
  of B's eval protocol that ``scripts/eval_common.sh`` needs (stock model keys and defaults, the
  paper's preset for X), as shell assignments, and the result of the ``args`` check of the pairs
  in ``args_error`` (empty: valid), so a script reads its facts and checks its arguments in one
  Python start. Without ``--backbone``: every protocol's name, script prefix and table rows.

* ``python -m aot_eval.preflight reducers``: every registry reducer (``--reducer`` names) with
  its summary and its ``--reducer-opt`` knobs, for the scripts' ``--help``.

``--backbone`` takes the eval scripts' backbone names: the eval protocols of :mod:`aot.backbones`.

Either exits 0 when all is well, else prints one line ``error: ...`` saying what to do, exit 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import sys

#: The :class:`aot.backbones.EvalProtocol` attributes ``facts --backbone`` prints, under their own
#: names (``scripts/eval_common.sh``'s variables).
SHELL_FACTS = ("model_id", "default_model", "frames_key", "default_frames", "dtype_key",
               "default_dtype", "pixels_key", "default_pixels", "fps_key", "conv_template")


def facts_backbone(backbone: str) -> str:
    """The eval scripts' backbone name (an eval protocol of :mod:`aot.backbones`) -> the
    :func:`aot.backbones.get_backbone` name its model is parsed with: the backbone whose facts that protocol runs."""
    from aot.backbones import backbone_of_protocol  # here, not at the top: aot imports torch

    return backbone_of_protocol(backbone).name


def check_lmms_eval() -> None:
    if importlib.util.find_spec("lmms_eval") is None:
        raise RuntimeError(f"lmms-eval is not installed in {sys.executable}; run "
                           "'bash setup.sh --eval' and use .venv/bin/python (or set PYTHON)")


def check_checkpoint(model: str, backbone: str | None = None) -> None:
    """The checkpoint is a local folder or cached in the Hugging Face hub cache (no download)
    and, given the scripts' ``backbone``, its ``config.json`` names a ``model_type`` that
    backbone's model loads (a Qwen2.5-VL checkpoint given to the Qwen3-VL script fails here,
    not after minutes of loading). A folder without a readable ``config.json`` is left to the
    loader, whose messages say what is missing."""
    import json
    import os

    from llava.model.builder import resolve_checkpoint

    if backbone is not None:
        facts_backbone(backbone)  # an unknown name: one clear error
    try:
        folder = resolve_checkpoint(model)
    except FileNotFoundError as error:
        raise RuntimeError(" ".join(str(error).split())) from None
    if backbone is None:
        return
    from aot.backbones import eval_protocols, get_protocol

    expected = get_protocol(backbone).checkpoint_type
    try:
        with open(os.path.join(folder, "config.json")) as handle:
            model_type = json.load(handle).get("model_type")
    except (OSError, ValueError, AttributeError):
        return
    if model_type != expected:
        takers = [p.name for p in eval_protocols() if p.checkpoint_type == model_type]
        advice = (f"evaluate it with the {' or '.join(takers)} scripts" if takers
                  else "no eval script loads it")
        raise RuntimeError(f"{model} is a {model_type!r} checkpoint but the {backbone} scripts "
                           f"load model_type {expected!r}; {advice}")


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
    """``key=value`` strings -> the resolved reducer description, parsed for the scripts'
    ``backbone`` as its model parses them; ValueError when invalid. ``frames=N`` (the scripts'
    ``--frames``) is the model's frame count, which approximate settings are solved for."""
    from aot.parsing import to_int

    from .model_args import parse_reducer

    facts = facts_backbone(backbone)
    kwargs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{pair!r} is not key=value")
        kwargs[key.strip()] = value.strip()
    frames = kwargs.pop("frames", None)
    if frames is None:
        spec = parse_reducer(kwargs, facts)
    else:
        spec = parse_reducer(kwargs, facts, frames=to_int(frames, "frames"))
    return f"reducer={spec.name} ({spec.source})"


def reducer_lines(width: int = 96) -> str:
    """One entry per registry reducer (AOT's ablations folded into one ``aot:<ablation>`` line):
    name, summary and the knobs of its options dataclass with their defaults."""
    import dataclasses
    import textwrap

    from aot.reducers import ABLATION_PREFIX, REDUCERS

    from .model_args import OPTION_PREFIX, describe_options

    lines = []
    ablations = [name[len(ABLATION_PREFIX):] for name in REDUCERS
                 if name.startswith(ABLATION_PREFIX)]
    for name, info in REDUCERS.items():
        if name.startswith(ABLATION_PREFIX):
            continue
        text = f"{name}: {info.summary}" if info.summary else name
        if info.options is not None:
            try:
                defaults = info.options()
            except (TypeError, ValueError):  # knobs without defaults: name them only
                names = [item.name for item in dataclasses.fields(info.options) if item.init]
                lines += textwrap.wrap(f"{text} [knobs: {' '.join(names)}]", width,
                                       initial_indent="    ", subsequent_indent="      ")
                continue
            knobs = describe_options({item.name: getattr(defaults, item.name)
                                      for item in dataclasses.fields(defaults) if item.init})
            text += f" [knobs, defaults: {knobs.replace(OPTION_PREFIX, '')}]"
        lines += textwrap.wrap(text, width, initial_indent="    ", subsequent_indent="      ")
    if ablations:
        lines += textwrap.wrap(f"{ABLATION_PREFIX}<ablation>: AOT with one ablation: "
                               f"{' '.join(ablations)}", width, initial_indent="    ",
                               subsequent_indent="      ")
    return "\n".join(lines)


def _assign(name: str, value) -> str:
    return f"{name}={shlex.quote(str(value))}"


def shell_facts(backbone: str, benchmark: str | None = None,
                pairs: list[str] | None = None) -> str:
    """Shell assignments of the eval protocol ``backbone``'s :data:`SHELL_FACTS`, its
    ``paper_preset`` for ``benchmark`` (empty: none published) and ``args_error``: the
    :func:`check_reducer_args` error of ``pairs`` in one line (empty: valid or not asked)."""
    from aot.backbones import get_protocol

    protocol = get_protocol(backbone)
    values = {name: getattr(protocol, name) for name in SHELL_FACTS}
    values["paper_preset"] = protocol.paper_presets.get(benchmark, "") if benchmark else ""
    values["args_error"] = ""
    if pairs:
        try:
            check_reducer_args(backbone, pairs)
        except (RuntimeError, ValueError, TypeError) as error:
            values["args_error"] = " ".join(str(error).split())
    return "\n".join(_assign(name, value) for name, value in values.items())


def shell_backbones() -> str:
    """Shell assignments of every eval protocol: ``AOT_EVAL_BACKBONES`` (the names, the summary's
    order) and the associative arrays ``AOT_EVAL_PREFIXES`` (name -> script prefix) and
    ``AOT_EVAL_TABLE_RETENTIONS`` (name -> a table's retention rows)."""
    from aot.backbones import eval_protocols

    protocols = eval_protocols()

    def table(values) -> str:
        return " ".join(f"[{shlex.quote(p.name)}]={shlex.quote(v)}"
                        for p, v in zip(protocols, values))

    rows = [" ".join(f"{r:.2f}" for r in p.table_retentions) for p in protocols]
    # Each protocol's facts per benchmark, exported for the eval scripts a sweep starts: with
    # the arguments checked once (AOT_EVAL_ARGS_CHECKED=1) they need no Python start per cell.
    cached = [f"export {_assign(cached_facts_name(p.name, bench), shell_facts(p.name, bench))}"
              for p in protocols for bench in BENCHMARKS]
    return "\n".join([_assign("AOT_EVAL_BACKBONES", " ".join(p.name for p in protocols)),
                      f"declare -gA AOT_EVAL_PREFIXES=({table(p.prefix for p in protocols)})",
                      f"declare -gA AOT_EVAL_TABLE_RETENTIONS=({table(rows)})", *cached])


#: The benchmarks with eval scripts (scripts/eval_<prefix>_<benchmark>.sh).
BENCHMARKS = ("mvbench", "egoschema", "longvideobench", "videomme")


def cached_facts_name(protocol: str, benchmark: str) -> str:
    """The environment variable holding :func:`shell_facts` of ``protocol`` and ``benchmark``
    (read by scripts/eval_common.sh when a sweep has checked the arguments already)."""
    return f"AOT_EVAL_FACTS_{protocol}_{benchmark}"


def main(argv: list[str] | None = None) -> int:
    from aot.backbones import eval_protocols

    names = ", ".join(protocol.name for protocol in eval_protocols())
    parser = argparse.ArgumentParser(prog="python -m aot_eval.preflight")
    commands = parser.add_subparsers(dest="command", required=True)
    args_parser = commands.add_parser("args", help="check the AOT keys of --model_args")
    args_parser.add_argument("--backbone", required=True, help=names)
    args_parser.add_argument("pairs", nargs="*", help="key=value (reducer, retention, ...)")
    args_parser.add_argument("--set", action="append", default=[], dest="sets",
                             help="another space-separated set of key=value pairs to check")
    launch = commands.add_parser("launch", help="check lmms-eval, checkpoint and GPUs")
    launch.add_argument("--model", required=True)
    launch.add_argument("--backbone", default=None, help="check the checkpoint's model_type")
    launch.add_argument("--nproc", type=int, default=1)
    launch.add_argument("--device", default=None)
    facts = commands.add_parser("facts", help="a protocol's facts as shell assignments")
    facts.add_argument("--backbone", default=None, help=names + " (none: every protocol)")
    facts.add_argument("--benchmark", default=None, help="for paper_preset")
    facts.add_argument("pairs", nargs="*", help="key=value pairs to check into args_error")
    commands.add_parser("reducers", help="the registry's reducers and their knobs")
    args = parser.parse_args(argv)
    try:
        if args.command == "reducers":
            print(reducer_lines())
        elif args.command == "facts":
            print(shell_backbones() if args.backbone is None
                  else shell_facts(args.backbone, args.benchmark, args.pairs))
        elif args.command == "args":
            for pairs in ([args.pairs] if args.pairs or not args.sets else []) + \
                    [text.split() for text in args.sets]:
                print(check_reducer_args(args.backbone, pairs))
        else:
            check_lmms_eval()
            check_checkpoint(args.model, args.backbone)
            check_processes(args.nproc, args.device)
    except (RuntimeError, ValueError, TypeError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
