#!/usr/bin/env bash
# All of attnc's tests, after installing what they need.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo test --workspace
