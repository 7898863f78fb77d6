# Shared by scripts/run and scripts/test: install what Wharf needs, idempotently, fast when
# everything is already there. Source it; then call the need_* functions.
set -euo pipefail

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/wharf-target}"
export PATH="$HOME/.cargo/bin:$PATH"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

apt_updated=0
# need_apt CMD_OR_FILE PACKAGE...: install PACKAGEs unless CMD is on PATH (or FILE exists).
need_apt() {
  local probe=$1; shift
  if command -v "$probe" >/dev/null 2>&1 || [ -e "$probe" ]; then return 0; fi
  if [ "$apt_updated" = 0 ]; then
    say "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  say "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# need_cargo_bin BIN CRATE VERSION [cargo install args...]
need_cargo_bin() {
  local bin=$1 crate=$2 version=$3; shift 3
  if command -v "$bin" >/dev/null 2>&1 && "$bin" --version 2>/dev/null | grep -q "$version"; then return 0; fi
  say "cargo install $crate $version (once; later runs skip this)"
  # Tools, not our code: a light release profile and their own target directory, so they
  # build faster and never hold the lock on the project's build cache.
  CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_DEBUG=0 \
  CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    cargo install "$crate" --version "$version" --locked \
    --target-dir "$HOME/.cache/wharf-tools-target" "$@"
}

# Everything the build needs.
need_build_deps() {
  need_apt cmake cmake
  need_apt cc build-essential
  need_apt pkg-config pkg-config
}

# Everything the tests talk to: real peers on 127.0.0.1.
need_test_deps() {
  need_build_deps
  need_apt curl curl
  need_apt openssl openssl
  need_apt ss iproute2
  need_apt rsyslogd rsyslog
  need_apt /usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so rsyslog-gnutls
  need_apt nginx nginx
  need_apt haproxy haproxy
  need_apt wrk wrk
  need_apt h2load nghttp2-client
  need_apt psql postgresql
  need_apt chromium chromium
  need_schemathesis
  need_heroku_cli
}

# The Kafka-protocol broker the Kafka tests and benchmarks start (tansu, sqlite storage;
# ~16 min to build cold, so scripts/test builds it beside our own code).
need_kafka_broker() {
  need_build_deps
  need_cargo_bin tansu tansu 0.6.0 --no-default-features --features libsql
}

# schemathesis (PyPI) for the control plane's OpenAPI test.
need_schemathesis() {
  if command -v schemathesis >/dev/null 2>&1; then return 0; fi
  say "pip install schemathesis"
  python3 -m pip install -q schemathesis
  # pyenv puts new console scripts on PATH only through its shims.
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
}

# The stock Heroku CLI, outside the repo, for the control plane's compatibility test.
export WHARF_HEROKU_CLI="${WHARF_HEROKU_CLI:-$HOME/.cache/wharf-heroku-cli/node_modules/.bin/heroku}"
need_heroku_cli() {
  if [ -x "$WHARF_HEROKU_CLI" ]; then return 0; fi
  need_apt npm npm
  say "npm install heroku@11 (once, ~1 min)"
  mkdir -p "$HOME/.cache/wharf-heroku-cli"
  (cd "$HOME/.cache/wharf-heroku-cli" && npm install --no-audit --no-fund heroku@11 >/dev/null)
}

# cargo-fuzz for scripts/fuzz (libFuzzer targets in fuzz/; run with RUSTC_BOOTSTRAP=1 on stable).
need_cargo_fuzz() {
  need_cargo_bin cargo-fuzz cargo-fuzz 0.13.1
}

# PostgreSQL on 127.0.0.1:5432: start the machine's cluster when it is down.
need_postgres() {
  if pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then return 0; fi
  say "starting PostgreSQL"
  local v
  v=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)
  if [ -z "$v" ]; then
    need_apt /usr/lib/postgresql postgresql
    v=$(ls /etc/postgresql | sort -V | tail -1)
  fi
  pg_ctlcluster --skip-systemctl-redirect "$v" main start || true
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
  pg_isready -h 127.0.0.1 -p 5432 -q || { echo "PostgreSQL did not start" >&2; return 1; }
  # Trust auth for local tests, as on the machines this project runs on.
  psql -h 127.0.0.1 -U postgres -tAc "select 1 from pg_database where datname='test'" 2>/dev/null | grep -q 1 \
    || psql -h 127.0.0.1 -U postgres -c "create database test" >/dev/null 2>&1 || true
}
