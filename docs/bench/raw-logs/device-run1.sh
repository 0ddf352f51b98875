set -x
export PYTHONUNBUFFERED=1 CUBLAS_WORKSPACE_CONFIG=:4096:8
cd .gold/repo && python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
nvidia-smi --query-gpu=name,driver_version --format=csv
python3 -c "import torch,triton,transformers;print(torch.__version__,triton.__version__,transformers.__version__)"
timeout 120 python3 -m pytest -q tests/kernels/test_determinism.py tests/kernels/test_compile.py 2>&1 | tail -5
timeout 60 python3 docs/bench/sdpa_determinism_probe.py 32768
B="timeout 200 lh-convert bench train --lengths"
$B 64k --checkpointing full --no-compile --out $OUT/t-full 2>&1 | grep -v Warning
$B 64k --checkpointing selective --no-compile --out $OUT/t-sel 2>&1 | grep -v Warning
$B 64k,128k --checkpointing selective --compile --out $OUT/t-selc 2>&1 | grep -v "Warning\|W1"
A="timeout 100 lh-convert bench attention"
$A --lengths 256k --topk 4096 --levels 2 --pooling 4 --out $OUT/a-l2 | grep -v '^{'
$A --lengths 96k --topk 1536 --levels 3 --pooling 2 --out $OUT/a-p2 | grep -v '^{'
$A --lengths 128k --topk 2048 --levels 2 --pooling 8 --out $OUT/a-p8 | grep -v '^{'
$A --lengths 64k,256k --topk 2048 --deterministic --out $OUT/a-det | grep -v '^{'
$B 32k --checkpointing selective --compile --out $OUT/t-selc32 2>&1 | grep -v "Warning\|W1"
