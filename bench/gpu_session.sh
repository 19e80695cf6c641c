#!/usr/bin/env bash
# Everything issue 12 asks of a GPU, in one command, for a session that is lent one (the device machine runs its own
# torch; carry the wheels it lacks, e.g. Pillow, as the device README says). Each step's output goes to a file in
# OUT_DIR (default: $OUT, the device machine's folder that comes back), so that one call measures everything:
#   bash bench/gpu_session.sh [OUT_DIR]
# machine.txt (GPU, driver, torch, CUDA), tests.txt (the CUDA tests: graph vs eager, a NaN through a replay,
# deterministic resume, bench_gpu's graph checks), bench_gpu.txt (the images/s table and the goals' fit figures),
# bench_compile.txt (--compile's cost on the GPU).
set -u
out=${1:-${OUT:-/tmp/gpu-session}}
py=${PYTHON:-python}
mkdir -p "$out"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$py" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'cuDNN', torch.backends.cudnn.version())"
  uptime
} > "$out/machine.txt" 2>&1
"$py" -m pytest -q -p no:cacheprovider tests/test_cuda_graph.py tests/test_sync_free.py tests/test_bench_gpu.py tests/test_compat.py \
  > "$out/tests.txt" 2>&1
"$py" -m bench.bench_gpu --fit-epochs 4 > "$out/bench_gpu.txt" 2>&1
"$py" -m bench.bench_compile --device cuda --models conv > "$out/bench_compile.txt" 2>&1
tail -n 3 "$out"/*.txt
