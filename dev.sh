#!/usr/bin/env bash
# millrace developer commands. Each installs what it needs on a fresh Debian machine.
#   ./dev.sh quickstart   run the quickstart example against a throwaway redis-server
#   ./dev.sh test         fmt, clippy, docs, and the whole test suite against real redis-server processes
set -euo pipefail
cd "$(dirname "$0")"

ensure_redis() {
  if command -v redis-server >/dev/null 2>&1; then return; fi
  echo "redis-server not found; installing it from Debian's packages" >&2
  local sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y redis-server
  # The package starts a system server on 6379; the tests start their own, so stop it.
  $sudo service redis-server stop >/dev/null 2>&1 || true
}

ensure_tools() {
  command -v openssl >/dev/null 2>&1 || {
    local sudo=""; if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y openssl
  }
}

case "${1:-}" in
  quickstart)
    ensure_redis
    cargo run -p millrace-examples --example quickstart
    ;;
  test)
    ensure_redis
    ensure_tools
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --locked -- -D warnings
    RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
    cargo build --workspace --examples --locked
    # Every example runs to completion against its own throwaway server (orders is driven by the
    # fault suite; soak is a long benchmark-style run: cargo run --release -p millrace-examples --example soak).
    for example in quickstart notifications cart_projector stream_management under_ractor observability; do
      echo "== example $example"
      env -u REDIS_URL "${CARGO_TARGET_DIR:-target}/debug/examples/$example" > "${CARGO_TARGET_DIR:-target}/example-$example.log" 2>&1 \
        || { cat "${CARGO_TARGET_DIR:-target}/example-$example.log"; echo "example $example failed" >&2; exit 1; }
      tail -n 3 "${CARGO_TARGET_DIR:-target}/example-$example.log"
    done
    cargo test --workspace --locked -- --test-threads=4
    ;;
  *)
    echo "usage: ./dev.sh quickstart | ./dev.sh test" >&2
    exit 2
    ;;
esac
