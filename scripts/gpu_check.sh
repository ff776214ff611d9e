#!/usr/bin/env bash
# The GPU table (issue 29, docs/BENCHMARKS.md) as one command from the repository root:
#   bash scripts/gpu_check.sh            # on one GPU: docs/results/gpu/results.csv and table.md
#   bash scripts/gpu_check.sh --quick    # its CPU twin on tiny models (CI runs it)
# Any further flags go to `scripts/bench.py --gpu` (e.g. --modes eager reduce-overhead, --archs sd1.5).
# Python: $PYTHON, else the README's .venv, else python3 (a machine with the CUDA build of torch). It
# installs nothing, but wheels carried in .whl/ (diffusers, DeepCache) for a machine that cannot fetch
# them. The run stops after $GPU_CHECK_SECONDS (480); rows are written as each case and mode finishes.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
OUT_DIR=docs/results/gpu
if [[ " $* " == *" --quick "* ]]; then OUT_DIR=${GPU_CHECK_OUT:-/tmp/gpu-check-quick}; fi
"$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
PYTHONUNBUFFERED=1 timeout "${GPU_CHECK_SECONDS:-480}" "$PY" scripts/bench.py --gpu --out "$OUT_DIR" "$@"
status=$?
[ -f "$OUT_DIR/table.md" ] && cat "$OUT_DIR/table.md"
exit $status
