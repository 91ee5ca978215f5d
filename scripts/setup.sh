#!/usr/bin/env bash
# Creates (or re-uses) the sfmed-lf virtualenv and installs this checkout into it, editable.
# The venv lives outside the clone, keyed by the pins and the Python version, so a fresh clone re-uses it:
#   ${XDG_CACHE_HOME:-~/.cache}/sfmed-lf/venv-<key>   (override with SFMED_VENV=/path)
# First run: about 6 minutes and 8 GB (torch's PyPI build). The venv's path is printed on the last line.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
constraints="$root/requirements/constraints-cpu.txt"
python=${PYTHON:-python3}
key=$( { cat "$constraints"; "$python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-16)
venv=${SFMED_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/sfmed-lf/venv-$key}

if [ ! -f "$venv/.sfmed-complete" ]; then
  echo "[setup] creating $venv" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade -c "$constraints" pip setuptools wheel >&2
  # torch and torchaudio first and together: LLaMA-Factory 0.9.5 imports torchaudio unconditionally.
  "$venv/bin/pip" install -q -c "$constraints" torch torchaudio >&2
  touch "$venv/.sfmed-complete"
fi
# Resolves against the pins each time (seconds when nothing changed), so a new dependency reaches old venvs.
"$venv/bin/pip" install -q -c "$constraints" --no-build-isolation -e "$root[test]" >&2
echo "$venv"
