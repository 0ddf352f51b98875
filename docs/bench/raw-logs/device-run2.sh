export PYTHONUNBUFFERED=1
cd .gold/repo && python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
B="timeout 240 lh-convert bench train --lengths"
F="grep -v Warning\|W1\|^{"
date +%T; $B 64k,128k --checkpointing selective --compile --out $OUT/t-selc 2>&1 | $F
date +%T; timeout 100 lh-convert bench attention --lengths 96k --topk 1536 --levels 3 --pooling 2 --out $OUT/a-p2 | grep -v '^{'
date +%T; $B 32k --checkpointing selective --compile --out $OUT/t-selc32 2>&1 | $F
date +%T; $B 64k --shape smollm2-135m --checkpointing selective --compile --out $OUT/t-smol 2>&1 | $F
date +%T
