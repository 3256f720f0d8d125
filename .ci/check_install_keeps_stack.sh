#!/usr/bin/env bash
# Usage: .ci/check_install_keeps_stack.sh PYTHON
# Installs the package into PYTHON's environment the way a user of an existing
# OpenMMLab environment does (`pip install .`, then `pip install -e .`, with
# dependencies resolved and no constraints file) and fails if that changed
# torch, torchvision, mmcv or numpy: `pip freeze` before and after.
set -euo pipefail
cd "$(dirname "$0")/.."
py=$1
stack() { "$py" -m pip freeze | grep -iE '^(torch|torchvision|mmcv|numpy)==' | sort; }
before=$(stack)
echo "before: $(echo $before)"
check() {  # $@: the arguments of pip install
  "$py" -m pip install -q "$@"
  after=$(stack)
  if [ "$after" != "$before" ]; then
    echo "pip install $* changed the environment's stack:" >&2
    diff <(echo "$before") <(echo "$after") >&2 || true
    exit 1
  fi
  echo "after pip install $*: unchanged"
}
check .
check -e .
