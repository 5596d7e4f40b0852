#!/usr/bin/env bash
# Runs Valley's whole test suite (after the idempotent setup) and ends with the line
# "N passed, N failed, N skipped" read from the test results. Exit code non-zero when anything failed.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
VALLEY_SETUP_EXTRAS="${VALLEY_SETUP_EXTRAS:-chromium}" "$root/scripts/setup.sh" || { echo "setup failed"; echo "0 passed, 1 failed"; exit 1; }
# The tests' temporary folders (about 1 GB per run) go under one folder that is removed when this script ends.
export VALLEY_TEST_ROOT="$(mktemp -d "${TMPDIR:-/tmp}/valley-tests.XXXXXX")"
trap 'rm -rf "$VALLEY_TEST_ROOT"' EXIT
results="$root/artifacts/test-results"
rm -rf "$results"
dotnet test "$root/tests/Valley.Tests/Valley.Tests.csproj" -c Release --no-build -nologo \
  --logger "trx;LogFileName=valley.trx" --logger "console;verbosity=normal" --results-directory "$results" "$@"
status=$?
trx="$results/valley.trx"
if [ ! -f "$trx" ]; then
  echo "no test results were written (exit $status)"
  echo "0 passed, 1 failed"
  exit 1
fi
counters="$(grep -o '<Counters [^>]*>' "$trx" | head -n1)"
get() { printf '%s' "$counters" | grep -o " $1=\"[0-9]*\"" | grep -o '[0-9]*' || echo 0; }
passed=$(get passed); failed=$(get failed); total=$(get total); executed=$(get executed)
errors=$(get error); timeout=$(get timeout); aborted=$(get aborted)
failed=$((failed + errors + timeout + aborted))
skipped=$((total - executed))
echo "$passed passed, $failed failed, $skipped skipped"
if [ "$failed" -gt 0 ] || [ "$status" -ne 0 ] || [ "$passed" -eq 0 ]; then exit 1; fi
exit 0
