#!/bin/sh
# Prepares the named environment for a test run.
set -eu
env="${1:?usage: setup.sh ENVIRONMENT}"
mkdir -p .orchestrator
printf '%s\n' "$env" > .orchestrator/environment
echo "environment $env ready"
