#!/usr/bin/env bash
# Creates (or completes) the virtual environment that `make demo` and `make test` use.
#
#   [PYTHON=/path/to/python] bash install/install.sh VENV_DIR
#
# Two routes:
# * PYTHON given (a user who installed detectron2 already: a GPU build from source, editable
#   or not, a wheel, conda): the venv sees that interpreter's packages and torch, numpy and
#   detectron2 are left exactly as they are. If that interpreter cannot import detectron2,
#   this fails and says why; it never falls back to the PyPI build.
# * PYTHON not given: python3 is used; if it imports detectron2, as above, otherwise the PyPI
#   route (CPU machines): torch 2.14.1 and the pinned dependencies of install/requirements.txt,
#   then detectron2 v0.6 built from the pb1-detectron2 sdist with install/detectron2_c_standin.cpp
#   supplying the C++ sources that sdist lacks.
set -euo pipefail

venv=${1:?usage: [PYTHON=python] install.sh VENV_DIR}
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
pip_quiet=(--quiet --disable-pip-version-check)

if d2_error=$("$python" -c "import detectron2" 2>&1); then
  route="existing detectron2 of $(command -v "$python" || echo "$python")"
elif [ -n "${PYTHON:-}" ]; then
  echo "install: PYTHON=$PYTHON cannot import detectron2:" >&2
  echo "$d2_error" | tail -n 3 | sed 's/^/    /' >&2
  echo "install: fix that interpreter's detectron2 (README.md, 'Installation routes'), or" >&2
  echo "  leave PYTHON unset for the PyPI route (detectron2 v0.6 built here, CPU only)" >&2
  exit 1
else
  route="PyPI"
fi

# A venv set up for one route is not silently reused for another.
route_file="$venv/lt_d2_route"
if [ -x "$venv/bin/python" ]; then
  if [ -f "$route_file" ] && [ "$(cat "$route_file")" != "$route" ]; then
    echo "install: $venv was set up for the route '$(cat "$route_file")', not '$route':" >&2
    echo "  remove it (rm -rf $venv) or choose another VENV=<dir>" >&2
    exit 1
  fi
  [ -f "$route_file" ] || echo "$route" > "$route_file"
else
  "$python" -m venv "$venv"
  if [ "$route" != "PyPI" ]; then
    # The venv sees $PYTHON's packages after its own. site.addsitedir (not a bare path line)
    # also runs the .pth files inside them, which is how an editable (`pip install -e`)
    # detectron2 is found.
    own_site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    "$python" -c "
import site
dirs = site.getsitepackages() + ([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])
for d in dirs:
    print(f'import site; site.addsitedir({d!r})')
" > "$own_site/lt_d2_parent_environment.pth"
  fi
  echo "$route" > "$route_file"
fi
vpy="$venv/bin/python"
"$vpy" -m pip install "${pip_quiet[@]}" "setuptools>=77,<81" wheel

if [ "$route" != "PyPI" ]; then
  if ! d2_error=$("$vpy" -c "import detectron2" 2>&1); then
    echo "install: $python imports detectron2, but $venv does not see it:" >&2
    echo "$d2_error" | tail -n 3 | sed 's/^/    /' >&2
    exit 1
  fi
  echo "install: using the installed detectron2 ($route)"
  # lvis 0.5.3 is the only lvis-api release on PyPI; under numpy >= 1.24 lt_d2 evaluates
  # through lt_d2.compat. numpy is not pinned on this route: the user's stays.
  "$vpy" -m pip install "${pip_quiet[@]}" lvis==0.5.3 -r "$here/requirements-dev.txt"
else
  "$vpy" -m pip install "${pip_quiet[@]}" torch==2.14.1 torchvision==0.29.1
  "$vpy" -m pip install "${pip_quiet[@]}" -r "$here/requirements.txt" -r "$here/requirements-dev.txt"
  if ! "$vpy" -c "import detectron2" 2>/dev/null; then
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    "$vpy" -m pip download "${pip_quiet[@]}" --no-deps --no-build-isolation --no-binary :all: \
      pb1-detectron2==0.6 -d "$build"
    tar -xzf "$build"/pb1-detectron2-0.6.tar.gz -C "$build"
    src="$build/pb1-detectron2-0.6"
    mkdir -p "$src/detectron2/layers/csrc"
    cp "$here/detectron2_c_standin.cpp" "$src/detectron2/layers/csrc/vision.cpp"
    # --no-deps: its declared dependencies include black==21.4b2 and a direct-URL extra; the
    # run-time ones are pinned in requirements.txt instead.
    MAX_JOBS=2 "$vpy" -m pip install "${pip_quiet[@]}" --no-deps --no-build-isolation "$src"
  fi
fi

"$vpy" -m pip install "${pip_quiet[@]}" --no-deps --no-build-isolation -e "$here/.."
"$vpy" -c "
import os, detectron2, numpy, torch, lt_d2, detectron2.modeling
print(f'install: lt_d2 ready in $venv with detectron2 {detectron2.__version__} from '
      f'{os.path.dirname(detectron2.__file__)}, numpy {numpy.__version__}, torch {torch.__version__}')
"
