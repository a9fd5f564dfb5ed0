#!/usr/bin/env bash
# The test command (README.md, "Run the tests"): installs and starts what the tests
# need (.ci/setup.sh, idempotent), then runs every test. Arguments go on to
# `cargo nextest run`, e.g. `./test.sh -E 'test(/web/)'`. Like CI, it needs root: it
# installs Debian packages and starts PostgreSQL, a registry and Docker images.
set -euo pipefail
cd "$(dirname "$0")"
bash .ci/setup.sh
# Retries are set in .config/nextest.toml, so a developer's run and CI's agree.
exec cargo nextest run --workspace --locked --no-fail-fast "$@"
