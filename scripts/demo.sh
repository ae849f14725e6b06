#!/usr/bin/env bash
# The main job on the shipped examples: compile to IR and optimized IR, inspect what the
# optimizer did, explain one rewrite chain, and run through MLIR checking every output
# against the reference interpreter; then the sparse-attention examples and a benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --bin attnc
attnc=target/release/attnc
mkdir -p out

echo "== compile llama3-8b (full size) to IR and optimized IR"
time $attnc compile examples/llama3-8b.toml --emit ir -o out/llama3-8b.air
time $attnc compile examples/llama3-8b.toml --emit opt-ir -o out/llama3-8b.opt.air
wc -l out/llama3-8b.air out/llama3-8b.opt.air

echo "== inspect gpt2"
$attnc inspect examples/gpt2.toml | head -20

echo "== explain gpt2 layer 0"
$attnc explain examples/gpt2.toml --layer 0

for spec in examples/*.toml; do
  echo "== run $spec --tiny --check"
  case "$spec" in
    # The tiny hybrids keep their 8-layer period; per-head RMS norms of retention and
    # gated SSM outputs amplify f32 rounding of near-zero rows (their unoptimized
    # compiled graphs are already ~1.5e-4 from the f64 interpreter).
    *jamba*|*minimax-01*) $attnc run "$spec" --tiny --check --tol 3e-4 ;;
    *) $attnc run "$spec" --tiny --check ;;
  esac
done

echo "== inspect longformer (full size): block-sparse attention, density, FLOPs saved"
$attnc inspect examples/longformer.toml | sed -n 1,12p

echo "== bench a sliding window of 256 at seq 4096: block-sparse vs dense attention"
$attnc bench examples/mistral-7b.toml --set seq=4096 --set window=256 --set layers=1 \
  --set d_model=512 --set heads=8 --set kv_heads=8 --set head_dim=64 --set hidden=1024 \
  --set vocab=1000 --runs 3

echo "== linear attention: the Linear Transformer at seq 8192 (chunkwise linear attention)"
$attnc inspect examples/linear-transformer.toml | sed -n 1,12p
echo "== bench linear attention at seq 4096: the chosen form against the quadratic and recurrent forms"
$attnc bench examples/linear-transformer.toml --set seq=4096 --set layers=1 --set vocab=1000 --runs 3

echo "== approximations: Llama-3 attention as FAVOR+ (Performer) and as a window with sinks"
$attnc run examples/llama3-8b.toml --tiny --set seq=256 --convert performer:64 --check
$attnc run examples/llama3-8b.toml --tiny --set seq=256 --convert window:32,sinks:4 --check

echo "== bench llama3-8b: 2 layers at seq 512, vocabulary 8192 (optimized vs original, both compiled)"
$attnc bench examples/llama3-8b.toml --set seq=512 --set layers=2 --set vocab=8192 --runs 3

echo "== compile gpt2 --tiny to an object and call it from C"
$attnc compile examples/gpt2.toml --tiny --emit obj -o out/gpt2.o
cat > out/main.c <<'CEOF'
#include <stdio.h>
#include <stdlib.h>
#include "gpt2.h"
int main(void) {
  void *args[ATTNC_NUM_ARGS];
  for (int i = 0; i < ATTNC_NUM_ARGS; i++) args[i] = calloc(1, attnc_argument_bytes[i]);
  attnc_forward_packed(args); /* all-zero tokens and weights */
  printf("attnc_forward ran: %d inputs and params, %d outputs\n", ATTNC_NUM_INPUTS, ATTNC_NUM_OUTPUTS);
  return 0;
}
CEOF
cc -O2 -o out/gpt2-c out/main.c out/gpt2.o -L/usr/lib/llvm-22/lib -Wl,-rpath,/usr/lib/llvm-22/lib -lomp -lm
./out/gpt2-c
