#!/usr/bin/env bash
# testssl.sh against the router's HTTPS listener (a router started by the test, with a test CA):
# no protocol below TLS 1.2, no weak cipher, no known vulnerability. Prints the findings as a
# Markdown table (kept in SECURITY.md). Takes a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
need_build_deps
need_apt testssl testssl.sh
need_apt curl curl
cargo test -p wharf-router --test tls_scan --locked -- --ignored --nocapture
