#!/usr/bin/env bash
# The main job on the shipped examples: compile to IR and optimized IR, inspect what the
# optimizer did, explain one rewrite chain, and run through MLIR checking every output
# against the reference interpreter.
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

for model in gpt2 llama3-8b mistral-7b deepseek-v2-lite; do
  echo "== run $model --tiny --check"
  $attnc run examples/$model.toml --tiny --check --json
done
