#!/usr/bin/env bash
# Installs sparsec (editable) with the pinned constraints, plus the system tools it needs.
#   bash setup.sh          the package and its runtime dependencies
#   bash setup.sh --test   the same plus the test extras
# System tools come from apt-get only when missing; a machine without apt keeps going and
# the tests that need a missing tool skip with the reason.
set -euo pipefail
cd "$(dirname "$0")"

extras=""
[[ "${1:-}" == "--test" ]] && extras="[test]"

need_apt=()
command -v g++ >/dev/null 2>&1 || need_apt+=(g++)   # TVM links the compiled .so with it
if ((${#need_apt[@]})); then
  if command -v apt-get >/dev/null 2>&1 && [[ $(id -u) == 0 ]]; then
    echo "setup: installing ${need_apt[*]} with apt-get" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null \
      || echo "setup: could not install ${need_apt[*]}; tests needing them will skip" >&2
  else
    echo "setup: missing ${need_apt[*]} and cannot apt-get here; tests needing them will skip" >&2
  fi
fi

PY=${PYTHON:-python3}
log=$(mktemp)
if ! "$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore \
     -c constraints.txt -e ".${extras}" >"$log" 2>&1; then
  cat "$log" >&2; rm -f "$log"; echo "setup: pip install failed" >&2; exit 1
fi
rm -f "$log"
# pyenv installs console scripts behind shims that need a rehash to appear on PATH.
command -v pyenv >/dev/null 2>&1 && pyenv rehash 2>/dev/null || true
"$PY" -c "import sparsec" || { echo "setup: sparsec did not install" >&2; exit 1; }
