#!/usr/bin/env bash
# Runs every test of the workspace on a fresh Debian machine with Rust.
# Installs the system packages the tests need when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the test suite uses: a C compiler (aws-lc, SQLite) and tmux
# (the terminal UI test drives the real binary in a pseudo-terminal).
PKGS=(tmux)
command -v cc >/dev/null 2>&1 || PKGS+=(build-essential)
missing=()
for p in "${PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing system packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

command -v cargo >/dev/null || { echo "cargo not found: install Rust from rustup.rs first" >&2; exit 1; }

# The Wycheproof vectors live in ../shared/vectors; tests skip (saying so) when absent.
cargo test --locked --workspace --all-targets "$@"
cargo test --locked --workspace --doc "$@"
