#!/usr/bin/env bash
# Builds and starts pqc-server with its embedded SQLite store in ./pqc-data
# (created on first start, with a self-signed certificate). Extra arguments
# go to pqc-server, e.g. --listen 0.0.0.0:8443 --data /var/lib/pqc-chat.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cc >/dev/null 2>&1; then
  echo "installing a C compiler (aws-lc and SQLite are built from source)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq build-essential
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust from https://rustup.rs first" >&2; exit 1; }
exec cargo run --release --locked -p pqc-server -- "$@"
