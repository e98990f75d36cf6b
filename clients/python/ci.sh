#!/usr/bin/env bash
# CI for the Python client: installs clients/python with its test extras into
# a fresh venv (the build compiles the repository's proto files) and runs its
# tests against the real daemon binary.
#
#   DRIFTD_BIN          daemon binary (default <repo>/target/debug/driftd, built
#                       by `cargo test` / `cargo build --bin driftd`)
#   DRIFTD_CLIENT_VENV  venv directory (default ${TMPDIR:-/tmp}/driftd-client-venv;
#                       recreated on every run)
#   PYTHON              interpreter for the venv (default python3; 3.9 or newer)
#
# Exits non-zero when anything fails, including when pytest collects no tests.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

export DRIFTD_BIN="${DRIFTD_BIN:-$repo/target/debug/driftd}"
# In CI a missing binary is a failure, not a skipped suite.
export DRIFTD_REQUIRE_E2E="${DRIFTD_REQUIRE_E2E:-1}"
venv="${DRIFTD_CLIENT_VENV:-${TMPDIR:-/tmp}/driftd-client-venv}"

if [ ! -x "$DRIFTD_BIN" ]; then
    echo "ci.sh: driftd binary not found at $DRIFTD_BIN; run 'cargo build --bin driftd' first or set DRIFTD_BIN" >&2
    exit 1
fi

"${PYTHON:-python3}" -m venv --clear "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
# A regular (isolated) build: pip fetches setuptools and grpcio-tools for the
# build, which generate driftd_client/_proto from ../../proto.
"$venv/bin/python" -m pip install --quiet "$here[test]"

# The pytest script (unlike `python -m pytest`) does not put the working
# directory on sys.path, so the source tree's driftd_client (which lacks the
# generated modules) cannot shadow the installed package. No cache and no
# bytecode are written into the checkout.
cd "$here"
set +e
PYTHONDONTWRITEBYTECODE=1 "$venv/bin/pytest" -p no:cacheprovider -ra "$here/tests" "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "ci.sh: pytest collected no tests; treating that as a failure" >&2
    exit 1
fi
exit "$status"
