# Sourced by the other scripts: make .venv (once, and again whenever
# pyproject.toml changes) with the package and its test and dev extras.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${KEEPALIVE_VENV:-.venv}"
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
want="$(python3 -c 'import hashlib; print(hashlib.sha256(open("pyproject.toml","rb").read()).hexdigest())')"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.installed" 2>/dev/null)" != "$want" ]; then
  echo "Setting up $VENV (first run only; details in $VENV.setup.log)..." >&2
  {
    python3 -m venv "$VENV" &&
    "$VENV/bin/python" -m pip install --upgrade pip &&
    # setup.cfg makes editable installs a plain path entry, so that
    # Twisted's plugin scan finds twisted/plugins (scripts/check-packaging).
    "$VENV/bin/python" -m pip install -e ".[test,dev]"
  } > "$VENV.setup.log" 2>&1 || { cat "$VENV.setup.log" >&2; echo "Setup failed." >&2; exit 1; }
  echo "$want" > "$VENV/.installed"
fi
export PATH="$VENV/bin:$PATH"
