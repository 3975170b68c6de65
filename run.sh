#!/usr/bin/env bash
# costsmooth: set-up and entry point. Installs what is missing, builds the extension in place, runs.
#
#   ./run.sh demo [--quick] [--out DIR]   the main job on an embedded dataset
#   ./run.sh test [pytest args]           the test suite (what CI runs)
#   ./run.sh bench [pytest args]          the benchmark suite (pytest-benchmark)
#   ./run.sh COMMAND [args]               any `costsmooth` command (certify, analyze, train, ...)
#   ./run.sh python [args]                Python with costsmooth importable (your scripts, the API)
#   ./run.sh torchrun [args]              torchrun with costsmooth importable (several processes)
#
# Python: ./.venv if it exists; else $PYTHON (default python3) when it already has torch (a GPU
# machine's CUDA build is used as it is, offline, and never reinstalled); else a new ./.venv with
# the CPU build of torch ($COSTSMOOTH_TORCH, default torch==2.13.0).
#
# Relative paths in the arguments resolve against the directory run.sh is called from.
# Offline machines: packages that are already installed are used as they are; a package that is
# missing and cannot be installed stops the run with a message naming it.
set -euo pipefail
CALLER=$(pwd)
cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT=$(pwd)

if [ -x .venv/bin/python ]; then
  PY="$ROOT/.venv/bin/python"
elif "${PYTHON:-python3}" -c "import torch" 2>/dev/null; then
  PY=${PYTHON:-python3}
else
  echo "costsmooth: creating .venv with ${COSTSMOOTH_TORCH:-torch==2.13.0}" >&2
  "${PYTHON:-python3}" -m venv .venv
  PY="$ROOT/.venv/bin/python"
  "$PY" -m pip install -q --upgrade pip setuptools wheel >&2 \
    || echo "costsmooth: could not upgrade pip/setuptools/wheel (offline?); going on with the venv's own" >&2
  if ! "$PY" -m pip install -q "${COSTSMOOTH_TORCH:-torch==2.13.0}" >&2; then
    rm -rf "$ROOT/.venv"
    echo "costsmooth: torch is missing and ${COSTSMOOTH_TORCH:-torch==2.13.0} could not be installed (offline?);" \
         "point PYTHON at a Python that has torch (PYTHON=/path/to/python ./run.sh ...)" >&2
    exit 1
  fi
  # The venv made here finds this checkout's costsmooth (an editable install: a .pth file naming ROOT),
  # so .venv/bin/python and .venv/bin/torchrun import it without PYTHONPATH.
  "$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" | {
    read -r site && echo "$ROOT" > "$site/costsmooth-checkout.pth"; }
fi

# Install only the packages that are missing (import name -> package name); test tools only for
# the commands that need them. Once all were found for this Python, a stamp skips the check.
cmd=${1:-demo}
mkdir -p build
case "$cmd" in test|bench) kind=test ;; *) kind=run ;; esac
if [ "$(cat "build/costsmooth-packages-$kind.stamp" 2>/dev/null)" != "$PY" ]; then
missing=$("$PY" - "$cmd" <<'PYEOF'
import importlib.util, sys
need = {"numpy": "numpy", "scipy": "scipy", "tqdm": "tqdm", "matplotlib": "matplotlib",
        "sklearn": "scikit-learn", "setuptools": "setuptools", "filelock": "filelock"}
if sys.argv[1] in ("test", "bench"):
    need.update({"pytest": "pytest", "pytest_benchmark": "pytest-benchmark"})
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None))
PYEOF
)
for pkg in $missing; do
  echo "costsmooth: installing $pkg" >&2
  if ! "$PY" -m pip install -q "$pkg" >&2; then
    echo "costsmooth: $pkg is missing and could not be installed (offline?); install it into $PY's environment" >&2
    exit 1
  fi
done
echo "$PY" > "build/costsmooth-packages-$kind.stamp"
fi
# Build the extension in place; the compiler log is shown on failure. Up to date (the sources, setup.py,
# the Python and the built library unchanged since the last build: a stamp of their paths, sizes and
# times) costs no setup.py call and prints nothing; a build prints its configuration line once.
stamp() {
  { echo "$PY"; find csrc setup.py costsmooth -maxdepth 3 \( -name '*.cpp' -o -name '*.cu' -o -name '*.h' \
      -o -name '*.cuh' -o -name 'setup.py' -o -name '_C*.so' \) -printf '%p %s %T@\n' | sort; } \
    | cksum
}
if ! compgen -G "costsmooth/_C*.so" >/dev/null || [ "$(stamp)" != "$(cat build/costsmooth-build.stamp 2>/dev/null)" ]; then
  echo "costsmooth: building the extension (a first build takes a few minutes; log: build/costsmooth-build.log)" >&2
  if ! MAX_JOBS=${MAX_JOBS:-$(nproc 2>/dev/null || echo 2)} "$PY" setup.py -q build_ext --inplace \
      > build/costsmooth-build.log 2>&1; then
    cat build/costsmooth-build.log >&2
    echo "costsmooth: the build failed (log above, also in build/costsmooth-build.log)" >&2
    exit 1
  fi
  grep -m1 "^costsmooth build:" build/costsmooth-build.log >&2 || true
  stamp > build/costsmooth-build.stamp
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# pytest's default folder, unless the arguments name test files or folders (tests/test_x.py[::name]);
# the values of pytest's options (-k EXPR, --deselect ID, ...) are not paths.
default_paths() {
  local default=$1 arg prev=""
  shift
  for arg in "$@"; do
    case $prev in
      -k|-m|-p|-o|-c|--deselect|--ignore|--ignore-glob|--rootdir|--junitxml|--durations|--maxfail|--basetemp) ;;
      *) [[ $arg != -* && -e ${arg%%::*} ]] && return 0 ;;
    esac
    prev=$arg
  done
  echo "$default"
}

[ $# -gt 0 ] && shift
cd "$CALLER"
case "$cmd" in
  test)  exec "$PY" -m pytest $(default_paths "$ROOT/tests" "$@") --rootdir "$ROOT" "$@" ;;
  bench) exec "$PY" -m pytest $(default_paths "$ROOT/benchmarks" "$@") --rootdir "$ROOT" --benchmark-only "$@" ;;
  python) exec "$PY" "$@" ;;
  torchrun) exec "$PY" -m torch.distributed.run "$@" ;;
  *)     exec "$PY" -m costsmooth "$cmd" "$@" ;;
esac
