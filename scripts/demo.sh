#!/usr/bin/env bash
# The main job on the shipped examples: compile to IR, inspect, and run through MLIR
# checking every output against the reference interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --bin attnc
attnc=target/release/attnc
mkdir -p out

echo "== compile llama3-8b (full size) to IR"
time $attnc compile examples/llama3-8b.toml --emit ir -o out/llama3-8b.air
wc -l out/llama3-8b.air

echo "== inspect gpt2"
$attnc inspect examples/gpt2.toml

for model in gpt2 llama3-8b; do
  echo "== run $model --tiny --check"
  $attnc run examples/$model.toml --tiny --check --json
done
