#!/usr/bin/env bash
# Builds the environment GPU users have, for `make test-main`: a virtual environment with
# torch 2.14.1, numpy >= 2 and detectron2 main built from source, installed editable
# (`pip install -e`, the way detectron2's own instructions install a local clone).
#
#   bash install/install_detectron2_main.sh VENV_DIR [ARCHIVE]
#
# ARCHIVE defaults to ../shared/third_party/detectron2-02b5c4e.tar.gz (detectron2 main's
# sources; see the README beside it). lt_d2 itself is NOT installed here: `make test-main`
# then installs it through install/install.sh with PYTHON=VENV_DIR/bin/python, the route
# of a user who already has detectron2.
set -euo pipefail

venv=${1:?usage: install_detectron2_main.sh VENV_DIR [ARCHIVE]}
here=$(cd "$(dirname "$0")" && pwd)
archive=${2:-$here/../../shared/third_party/detectron2-02b5c4e.tar.gz}
python=${PYTHON:-python3}
pip_quiet=(--quiet --disable-pip-version-check)

if [ ! -f "$archive" ]; then
  echo "install_detectron2_main: $archive not found: it holds detectron2 main's sources" >&2
  echo "  (the shared/third_party folder beside this checkout); pass its path as 2nd argument" >&2
  exit 1
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
vpy="$venv/bin/python"
# detectron2's setup.py imports torch, so it builds without build isolation; pip 23.x with
# setuptools >= 80 then fails ("No module named 'torch'"), a current pip does not.
"$vpy" -m pip install "${pip_quiet[@]}" "pip>=26" "setuptools>=77" wheel
"$vpy" -m pip install "${pip_quiet[@]}" torch==2.14.1 torchvision==0.29.1 "numpy>=2"
src="$venv/src"
name=$(basename "$archive" .tar.gz)
if [ ! -f "$src/$name/setup.py" ]; then
  mkdir -p "$src"
  tar -xzf "$archive" -C "$src"
fi
echo "install_detectron2_main: building $name (C++ operators, CPU; a few minutes on 2 cores)"
MAX_JOBS=2 "$vpy" -m pip install "${pip_quiet[@]}" --no-build-isolation -e "$src/$name"
"$vpy" -c "import detectron2, numpy, torch; print('install_detectron2_main: detectron2', \
detectron2.__version__, 'from', detectron2.__file__, '| numpy', numpy.__version__, \
'| torch', torch.__version__)"
