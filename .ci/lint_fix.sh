#!/usr/bin/env bash
# Applies the automatic fixes of `make lint` to every tracked file: the fixing
# hooks of .pre-commit-config.yaml (ruff's safe fixes, isort, whitespace and
# line endings), then codespell's unambiguous corrections (a word with several
# candidates is only reported). Ends with `pre-commit run` over everything, so
# its exit status says whether anything is left to fix by hand.
# Run as `make lint-fix` (which puts .venv/bin on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
for hook in ruff isort trailing-whitespace end-of-file-fixer mixed-line-ending; do
  pre-commit run --all-files "$hook" >/dev/null || true
done
git ls-files -z | xargs -0 codespell --write-changes >/dev/null || true
pre-commit run --all-files
