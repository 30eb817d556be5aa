#!/usr/bin/env bash
# The device check: the CUDA tests, the inference benchmark with the cost model's predictions beside the
# measurements, the training-step benchmark and infer over a folder, every table written into one folder.
# On a GPU it takes under 8 minutes (each step has a time limit); without one it runs the same steps at small
# sizes on the CPU (the CUDA tests then skip), so that it is debugged before a GPU is at hand. It writes seven
# files: machine.txt, one per step (cuda_tests, bench_inference, bench_train_step, bench_infer_folder), the cost
# tables measured (cost_tables.json) and summary.txt (each step's exit status).
#
#   bash benchmarks/device_check.sh [OUT_DIR]       # default: $OUT, else ./device_check_results
#   bash benchmarks/device_check.sh --prepare [PHOTO_DIR]
#       here, for a GPU machine without a package registry (Python 3.12, or TARGET_PYTHON): wheels of basicsr,
#       lmdb and pytest into .whl/, and PHOTO_DIR's photos into .devdata/photos (else the benchmarks use
#       ../shared/data/train/sun_hays80 when present, or scikit-image's astronaut); send both along
#
# Where basicsr, lmdb or pytest is missing (a GPU machine prepared with --prepare), the wheels in .whl/ are
# installed into a folder of their own and put on PYTHONPATH; the project runs from this checkout.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if [ "${1:-}" = "--prepare" ]; then  # --prepare [PHOTO_DIR]
  set -e
  py=$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)
  mkdir -p .whl
  # basicsr 1.4.2 is an sdist: build its wheel here (its setup.py imports torch)
  ls .whl/basicsr-1.4.2-*.whl >/dev/null 2>&1 || "$py" -m pip wheel -q --no-deps --no-build-isolation -w .whl basicsr==1.4.2
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version "${TARGET_PYTHON:-3.12}" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    lmdb pytest pluggy iniconfig packaging pygments
  if [ -n "${2:-}" ]; then mkdir -p .devdata/photos && cp "$2"/*.jpg .devdata/photos/; fi
  du -sh .whl .devdata 2>/dev/null || true
  exit 0
fi

out=${1:-${OUT:-$root/device_check_results}}
mkdir -p "$out"
py=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
if ! "$py" -c 'import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ("basicsr", "lmdb", "pytest")))'; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "basicsr, lmdb or pytest is missing and .whl/ holds no wheels: run 'bash benchmarks/device_check.sh --prepare'" >&2
    exit 2
  fi
  site=${TMPDIR:-/tmp}/wbsr_device_site
  "$py" -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl || exit 2
  export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH}
# cost tables measured afresh, collected into one file at the end (a GPU machine sends back at most 8 files)
export WBSR_CACHE_DIR=${TMPDIR:-/tmp}/wbsr_device_costs
rm -rf "$WBSR_CACHE_DIR"

device=$("$py" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
photo=$(ls .devdata/photos/*.jpg .devdata/train/sun_hays80/*.jpg ../shared/data/train/sun_hays80/*.jpg 2>/dev/null | head -1)
image=${photo:+--image $photo}
photos=${photo:+--data $(dirname "$photo")}
if [ "$device" = cuda ]; then
  infer_args=(--device cuda --arch WBSRResNet WBSRRCAN --lq-sizes 960x540 --dtype fp16 --budgets 0.6
              --latency-budgets 0.6 --max-loss --variants cuda-graphs pad-batches pad-widths --repeat 5)
  train_args=(--device cuda)
  folder_args=(--device cuda --images 20 --repeat 2)
  limits=(140 200 60 45)  # 445 s: under 8 minutes with the install
else
  infer_args=(--device cpu --arch WBSRResNet --widths 36 52 64 --lq-sizes 64x48 --budgets 0.6 --latency-budgets 0.6
              --max-loss --variants pad-batches pad-widths --repeat 2)
  train_args=(--device cpu --batch 2 --gt-size 32 --repeat 3 --warmup 1)
  folder_args=(--device cpu --images 4 --lq-size 64x48 --repeat 1)
  limits=(600 300 300 300)
fi

status=0
step() {  # step NAME LIMIT COMMAND...: output into OUT/NAME.txt, exit status into OUT/summary.txt
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*"
  timeout --signal=INT --kill-after=20 "$limit" "$@" > "$out/$name.txt" 2>&1
  local rc=$?
  tail -n 25 "$out/$name.txt"
  echo "$name: exit $rc (limit ${limit} s)" >> "$out/summary.txt"
  [ $rc -eq 0 ] || status=1
}

: > "$out/summary.txt"
{
  date -u +%Y-%m-%dT%H:%M:%SZ
  "$py" -c 'import torch, platform; print("torch", torch.__version__, "python", platform.python_version());
print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or platform.machine())'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
} > "$out/machine.txt" 2>&1
cat "$out/machine.txt"
step cuda_tests "${limits[0]}" "$py" -m pytest -q -p no:cacheprovider tests/cuda tests/inference/test_device_paths.py \
  tests/inference/test_host_syncs.py tests/inference/test_engine_runs.py
step bench_inference "${limits[1]}" "$py" benchmarks/bench_inference.py "${infer_args[@]}" $image
step bench_train_step "${limits[2]}" "$py" benchmarks/bench_train_step.py "${train_args[@]}"
step bench_infer_folder "${limits[3]}" "$py" benchmarks/bench_infer_folder.py "${folder_args[@]}" $photos --save-map
cat "$WBSR_CACHE_DIR"/*.json > "$out/cost_tables.json" 2>/dev/null || true
cat "$out/summary.txt"
exit $status
