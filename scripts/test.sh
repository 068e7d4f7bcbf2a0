#!/usr/bin/env bash
# The full Gatehouse test suite, on a fresh Debian machine with Rust.
# Installs or starts what the tests need (OpenSSH server, PostgreSQL, a
# Python venv with the official MCP SDK) and fails loudly when it cannot.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n==> %s\n' "$*"; }
die() { printf '\nFATAL: %s\n' "$*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || die "not root and no sudo: cannot install system packages"
  SUDO="sudo"
fi

apt_install() {
  say "installing $*"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null \
    || { $SUDO apt-get update -q >/dev/null && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null; } \
    || die "apt-get install $* failed"
}

# --- OpenSSH (client and server) -------------------------------------------
command -v ssh >/dev/null && command -v sftp >/dev/null && command -v scp >/dev/null || apt_install openssh-client
[ -x /usr/sbin/sshd ] || apt_install openssh-server
# curl: the attack tests send oversized bodies with it (it stops at an early answer).
command -v curl >/dev/null || apt_install curl
$SUDO mkdir -p /run/sshd
/usr/sbin/sshd -V 2>&1 | head -1 || true

# --- PostgreSQL on 127.0.0.1:5432, user postgres, trust auth ---------------
command -v psql >/dev/null || apt_install postgresql-client
pg_ready() { psql -h 127.0.0.1 -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1; }
if ! pg_ready; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    apt_install postgresql
  fi
  ver=$(ls /etc/postgresql | sort -V | tail -1)
  say "starting PostgreSQL $ver"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main start || $SUDO pg_ctlcluster "$ver" main start || true
  for _ in $(seq 1 30); do pg_ready && break; sleep 1; done
  if ! pg_ready; then
    # A fresh install uses peer auth; the tests connect over TCP as postgres.
    hba=/etc/postgresql/$ver/main/pg_hba.conf
    if [ -f "$hba" ] && ! grep -q "gatehouse-tests" "$hba"; then
      say "allowing trust auth for postgres on 127.0.0.1 (test machine)"
      $SUDO sed -i '1i host all postgres 127.0.0.1/32 trust # gatehouse-tests' "$hba"
      $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main reload || $SUDO pg_ctlcluster "$ver" main restart || true
      sleep 1
    fi
  fi
  pg_ready || die "PostgreSQL is not reachable on 127.0.0.1:5432 as user postgres"
fi
echo "PostgreSQL: $(psql -h 127.0.0.1 -U postgres -d postgres -tAc 'show server_version')"

# --- Python venv with the official MCP SDK (for the MCP client tests) -------
VENV=${GATEHOUSE_TEST_VENV:-target/test-venv}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import mcp, httpx2' 2>/dev/null; then
  say "creating $VENV with the mcp SDK"
  python3 -m venv "$VENV" || { apt_install python3-venv; python3 -m venv "$VENV"; } || die "cannot create a Python venv"
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null 2>&1 || true
  "$VENV/bin/pip" install -q 'mcp>=2.3,<3' || die "pip install mcp failed"
fi
export GATEHOUSE_TEST_PYTHON="$PWD/$VENV/bin/python"
"$GATEHOUSE_TEST_PYTHON" -c 'import importlib.metadata as m; print("python mcp SDK", m.version("mcp"))'

# --- Rust -------------------------------------------------------------------
say "cargo fmt --check"
cargo fmt --all -- --check || die "code is not formatted (cargo fmt --all)"
say "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings || die "clippy found problems"
say "building gatehouse"
cargo build -p gatehouse --quiet
say "running the test suite (unit + integration, SQLite and PostgreSQL)"
# Every test instance leaves its logs, responses, recordings and database
# rows here; the secret scan below reads all of it.
export GATEHOUSE_TEST_ARTIFACTS="$PWD/target/test-artifacts"
rm -rf "$GATEHOUSE_TEST_ARTIFACTS" && mkdir -p "$GATEHOUSE_TEST_ARTIFACTS"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast --test-threads "${GATEHOUSE_TEST_THREADS:-4}"
else
  cargo test --workspace --no-fail-fast -- --test-threads "${GATEHOUSE_TEST_THREADS:-4}"
fi
say "secret scan of everything the suite produced"
cargo run --quiet -p gatehouse-integration --bin secret_scan -- "$GATEHOUSE_TEST_ARTIFACTS" \
  || die "the secret scan found private key material or a bearer token in clear (see above)"
say "all tests passed"
