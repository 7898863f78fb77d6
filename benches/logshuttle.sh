#!/usr/bin/env bash
# Log shuttle relay benchmark: syslog TCP in -> relay -> syslog TCP drain out, in lines/s and
# MiB/s, Wharf's shuttle (in-process bus and Kafka on a tansu broker) against rsyslog configured
# as the same relay in the same run, plus the stalled-drain isolation figure (a second drain that
# never reads). Release build of the shuttle (logshuttle/examples/relay.rs).
#
#   benches/logshuttle.sh            # LINES=3000000 (LINES_KAFKA: the same) ROUNDS=3; ONLY=kafka or ONLY=stalled
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
need_test_deps
need_kafka_broker
say "building the relay (release)"
cargo build --release -p wharf-logshuttle --example relay
export RELAY_BIN="$CARGO_TARGET_DIR/release/examples/relay"
export TANSU_BIN="$(command -v tansu || true)"
say "running (rsyslog $(rsyslogd -v | head -1 | awk '{print $2}'), $(nproc) cores)"
python3 benches/logshuttle_bench.py
