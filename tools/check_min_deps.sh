#!/usr/bin/env bash
# The lowest allowed version of every dependency, installed and tested.
#
#   tools/check_min_deps.sh [PYTHON]      (default: python3.10, else python3)
#
# Builds .venv-min with exactly the lower bound of each requirement in pyproject.toml (runtime and
# the test, export and torchcodec extras), then runs the README's test command in it.  Run it when
# a bound changes.  It downloads the old wheels (torch's is a CUDA build of a few GB), so it needs
# the network; it exits non-zero when the install or a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-$(command -v python3.10 || command -v python3)}
VENV=${VENV:-.venv-min}

rm -rf "$VENV"
"$PY" -m venv "$VENV"
# The bounds as exact pins (each lower bound must name a real release), read with the host's
# Python 3.11+ (tomllib), whatever Python the venv has.
python3 - > "$VENV/min-constraints.txt" <<'PYCODE'
import re
import tomllib

with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
reqs = list(project["dependencies"])
for extra in project["optional-dependencies"].values():
    reqs += [r for r in extra if not r.startswith("dynapp")]
for req in reqs:
    m = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*>=\s*([^,;\s]+)", req)
    if m:
        print(f"{m.group(1)}=={m.group(2)}")
PYCODE
echo "lowest allowed versions:"; sed 's/^/  /' "$VENV/min-constraints.txt"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q -c "$VENV/min-constraints.txt" -e '.[all]'
"$VENV/bin/pip" list 2>/dev/null | grep -i -E "^($(sed 's/==.*//' "$VENV/min-constraints.txt" | paste -sd'|'))[[:space:]]" || true
"$VENV/bin/python" -m pytest -q -p no:cacheprovider "${@:2}"
