#!/usr/bin/env bash
# One device call: install, run the GPU tests, time eager vs graph. Summary printed last.
# Usage (repository root, on a CUDA machine): bash tools/gpu_check.sh [pytest args...]
set -u
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/pip.log" 2>&1 || echo "pip install failed (using PYTHONPATH)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import cupy, numpy; print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'cuda', cupy.cuda.runtime.runtimeGetVersion())"
TESTS=${TESTS:-"tests/test_cupy.py tests/test_gpu_graph.py tests/test_gradcheck_ops.py tests/test_gradcheck_model.py tests/test_engine_misc.py tests/test_random.py tests/test_philox.py tests/test_cuda_host.py tests/test_evaluate.py tests/test_statistics.py tests/test_optim.py"}
timeout ${PYTEST_TIMEOUT:-300} python3 -m pytest -q -p no:cacheprovider --backend cupy $TESTS "$@" >"$OUT/pytest.log" 2>&1
echo "pytest rc=$?"
grep -E "^(FAILED|ERROR)" "$OUT/pytest.log" | head -40
grep -E "^E  " "$OUT/pytest.log" | sort | uniq -c | sort -rn | head -25
timeout ${TIMING_TIMEOUT:-120} python3 tools/gpu_timing.py ${SIZES:-128 4096} 2>&1 | tee "$OUT/timing.txt" | tail -20
if [ -n "${MNIST:-}" ]; then   # the PyTorch-example setup on MNIST (folder .mnist holding the four .gz files)
  rm -rf /tmp/mnist_run
  t0=$SECONDS; timeout ${MNIST_TIMEOUT:-200} python3 -m scratchvae train --backend cupy \
    --dataset mnist --data-dir ${MNIST_DIR:-.mnist} --epochs ${MNIST_EPOCHS:-10} --batch-size 128 --hidden 400 \
    --latent 20 --lr 1e-3 --seed 1 --out /tmp/mnist_run --quiet ${MNIST_ARGS:-} 2>&1 | tail -14
  echo "mnist run wall $((SECONDS - t0)) s"; cp /tmp/mnist_run/metrics.jsonl "$OUT/mnist_metrics.jsonl" 2>/dev/null
fi
echo "== summary"; tail -1 "$OUT/pytest.log"
