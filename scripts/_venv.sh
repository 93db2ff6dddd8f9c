# Sourced by the other scripts: make .venv (once, and again whenever
# pyproject.toml changes) with the package and its test and dev extras.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${KEEPALIVE_VENV:-.venv}"
want="$(python3 -c 'import hashlib,sys; print(hashlib.sha256(open("pyproject.toml","rb").read()).hexdigest())')"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.installed" 2>/dev/null)" != "$want" ]; then
  echo "Setting up $VENV (first run only)..." >&2
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
  # compat mode: a plain path entry. The default (strict) editable finder maps
  # our twisted/plugins and so hides the real twisted package.
  "$VENV/bin/python" -m pip install --quiet -e ".[test,dev]" --config-settings editable_mode=compat >&2
  echo "$want" > "$VENV/.installed"
fi
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
export PATH="$VENV/bin:$PATH"
