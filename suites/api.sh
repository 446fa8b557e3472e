#!/bin/sh
# A small real suite: checks the tools the API tests rely on, writes JUnit XML to $1.
set -u
out="${1:-reports/junit-api.xml}"
mkdir -p "$(dirname "$out")"
cases=""
failures=0
total=0
check() {
  name="$1"; shift
  total=$((total + 1))
  start=$(date +%s)
  if "$@" >/dev/null 2>&1; then
    cases="$cases<testcase classname=\"api\" name=\"$name\" time=\"$(( $(date +%s) - start ))\"/>"
  else
    failures=$((failures + 1))
    cases="$cases<testcase classname=\"api\" name=\"$name\"><failure message=\"$* failed\"/></testcase>"
  fi
}
check shell_available sh -c true
check json_tooling python3 -c 'import json; json.loads("{}")'
check environment_ready test -f .orchestrator/environment
printf '<?xml version="1.0" encoding="UTF-8"?>\n<testsuites><testsuite name="api" tests="%s" failures="%s">%s</testsuite></testsuites>\n' \
  "$total" "$failures" "$cases" > "$out"
echo "$total tests, $failures failures"
[ "$failures" -eq 0 ]
