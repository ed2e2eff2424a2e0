#!/usr/bin/env bash
# On a CUDA machine: install, run the GPU tests, time eager vs graph. Summary printed last.
# Usage (repository root): bash tools/gpu_check.sh [--mnist DIR] [pytest args...]
# With --mnist DIR (or SCRATCHVAE_MNIST_DIR=DIR), DIR a folder holding the four MNIST IDX files,
# it also trains the PyTorch-example setup on full MNIST with the CuPy backend.
# Logs and that run go to $GPU_CHECK_DIR (default runs/gpu_check, ignored by git).
set -u
MNIST_DIR=${SCRATCHVAE_MNIST_DIR:-}
if [ "${1:-}" = "--mnist" ]; then MNIST_DIR=${2:?"--mnist needs a folder holding the four MNIST IDX files"}; shift 2; fi
LOG=${GPU_CHECK_DIR:-runs/gpu_check}; mkdir -p "$LOG"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$LOG/pip.log" 2>&1 || echo "pip install failed (using PYTHONPATH)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import cupy, numpy; print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'cuda', cupy.cuda.runtime.runtimeGetVersion())"
TESTS=${TESTS:-"tests/test_cupy.py tests/test_gpu_graph.py tests/test_gradcheck_ops.py tests/test_gradcheck_model.py tests/test_engine_misc.py tests/test_random.py tests/test_philox.py tests/test_cuda_host.py tests/test_evaluate.py tests/test_statistics.py tests/test_optim.py tests/test_bf16.py tests/test_precision.py tests/test_cublas_binding.py"}
timeout ${PYTEST_TIMEOUT:-300} python3 -m pytest -q -p no:cacheprovider --backend cupy $TESTS "$@" >"$LOG/pytest.log" 2>&1
echo "pytest rc=$?"
grep -E "^(FAILED|ERROR)" "$LOG/pytest.log" | head -40
grep -E "^E  " "$LOG/pytest.log" | sort | uniq -c | sort -rn | head -25
timeout ${TIMING_TIMEOUT:-120} python3 tools/gpu_timing.py ${SIZES:-128 4096} 2>&1 | tee "$LOG/timing.txt" | tail -20
if [ -n "$MNIST_DIR" ]; then   # the PyTorch-example setup on full MNIST
  run="$LOG/mnist_run"; rm -rf "$run"
  t0=$SECONDS; timeout ${MNIST_TIMEOUT:-200} python3 -m scratchvae train --backend cupy \
    --dataset mnist --data-dir "$MNIST_DIR" --epochs ${MNIST_EPOCHS:-10} --batch-size 128 --hidden 400 \
    --latent 20 --lr 1e-3 --seed 1 --out "$run" --quiet ${MNIST_ARGS:-} 2>&1 | tail -14
  echo "mnist run wall $((SECONDS - t0)) s (metrics in $run/metrics.jsonl)"
fi
echo "== summary"; tail -1 "$LOG/pytest.log"
