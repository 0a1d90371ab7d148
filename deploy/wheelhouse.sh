#!/usr/bin/env bash
# Offline wheelhouse for a device that is never online: every base (device) dependency as a binary wheel for
# one platform and Python, the project's own wheel, SHA256SUMS and install.sh (pip --no-index, no network).
#   deploy/wheelhouse.sh x86_64|aarch64 3.10|3.11|3.12 [OUT]        (`make wheelhouse PLATFORM=… PYTHON=…`)
#   deploy/wheelhouse.sh x86_64|aarch64 PYTHON OUT --check          resolve only: OUT/requirements.txt and
#                                                                   OUT/resolved.txt (one wheel URL a line)
# Wheels are manylinux up to glibc 2.$GLIBC_MINOR (default 35: Ubuntu 22.04 / JetPack 6; Debian 12 and
# Raspberry Pi OS bookworm have 2.36). Needs uv (pip install uv) and network; copy OUT to the device.
#
# Why two tools: pip evaluates environment markers (tomli; python_version<'3.11', anyio's exceptiongroup)
# for the Python it runs on whatever --python-version says, so uv resolves (markers for the TARGET); but uv
# ignores Requires-Python upper bounds (backports-strenum 1.3.1 says <3.11), so pip then fetches every pin
# for the target's tags and Python, and a pin with no such wheel falls back to the newest one that has it.
set -euo pipefail
platform_args() {  # the pip --platform options for one architecture
  local m
  for m in $(seq 17 "${GLIBC_MINOR:-35}"); do printf -- '--platform manylinux_2_%s_%s\n' "$m" "$1"; done
  printf -- '--platform manylinux2014_%s\n' "$1"
}
if [ "${1:-}" = "--platform-args" ]; then platform_args "${2:?x86_64|aarch64}"; exit 0; fi
arch=${1:?usage: deploy/wheelhouse.sh x86_64|aarch64 PYTHON_VERSION [OUT] [--check]}
py=${2:?usage: deploy/wheelhouse.sh x86_64|aarch64 PYTHON_VERSION [OUT] [--check]}
case $arch in x86_64|aarch64) ;; *) echo "error: PLATFORM must be x86_64 or aarch64, not '$arch'" >&2; exit 2;; esac
case $py in 3.10|3.11|3.12) ;; *) echo "error: PYTHON must be 3.10, 3.11 or 3.12, not '$py'" >&2; exit 2;; esac
root=$(cd "$(dirname "$0")/.." && pwd)
out=${3:-$root/wheelhouse/$arch-py$py}
mode=${4:-build}
pip=(${PIP:-python3 -m pip})
uv=${UV:-$(command -v uv || true)}
if [ -z "$uv" ] && [ -x "$(dirname "${pip[0]}")/uv" ]; then uv="$(dirname "${pip[0]}")/uv"; fi
[ -n "$uv" ] || { echo "error: uv not found (pip install uv, or UV=/path/to/uv)" >&2; exit 2; }
read -r -a platforms <<< "$(platform_args "$arch" | tr '\n' ' ')"
target=("${platforms[@]}" --python-version "$py" --implementation cp --only-binary=:all: --no-deps)

rm -rf "$out"
mkdir -p "$out"
UV_PYTHON_DOWNLOADS=never "$uv" pip compile "$root/pyproject.toml" --quiet --no-header --no-annotate \
  --python-version "$py" --python-platform "$arch-manylinux_2_${GLIBC_MINOR:-35}" --only-binary :all: \
  -o "$out/requirements.txt"

fetch() {  # fetch REQUIREMENT...: download (build) or resolve without installing (--check)
  if [ "$mode" = "--check" ]; then
    local report
    report=$(mktemp)
    "${pip[@]}" install --quiet --dry-run --ignore-installed "${target[@]}" --target "$out/.target" \
      --report "$report" "$@" || { rm -f "$report"; return 1; }
    python3 -c 'import json,sys; [print(i["download_info"]["url"]) for i in json.load(open(sys.argv[1]))["install"]]' \
      "$report" >> "$out/resolved.txt"
    rm -f "$report"
  else
    "${pip[@]}" download --quiet "${target[@]}" --dest "$out" "$@"
  fi
}
for attempt in 1 2 3 4 5; do
  : > "$out/resolved.txt"
  if fetch -r "$out/requirements.txt" 2> "$out/.pip-errors"; then break; fi
  bad=$(sed -n 's/.*No matching distribution found for \([^ ]*\).*/\1/p' "$out/.pip-errors" | head -1)
  name=${bad%%==*}
  if [ -z "$bad" ] || [ "$bad" = "$name" ] || [ "$attempt" = 5 ]; then
    cat "$out/.pip-errors" >&2
    echo "error: no binary wheel of ${name:-a requirement} for $arch / Python $py" >&2
    exit 1
  fi
  echo "note: $bad has no wheel for $arch / Python $py; taking the newest $name that has one" >&2
  sed -i "s/^$bad\$/$name/" "$out/requirements.txt"
done
rm -f "$out/.pip-errors"
if [ "$mode" = "--check" ]; then
  rm -rf "$out/.target"
  echo "resolved $(wc -l < "$out/resolved.txt") wheels for $arch / Python $py (nothing installed): $out/resolved.txt"
  exit 0
fi
# the project's own wheel (pure Python: edge/ + converters/; the host commands need the [train] extra)
"${pip[@]}" wheel --quiet --no-deps --wheel-dir "$out" "$root"
(cd "$out" && sha256sum -- *.whl > SHA256SUMS)

cat > "$out/install.sh" <<INSTALL
#!/bin/sh
# Installs noa-edge from this folder without any network: ./install.sh [VENV]   (default /opt/noa-edge/venv)
# Built for $arch, Python $py. The demo/site bundle is copied separately (docs/DEPLOY.md).
set -eu
here=\$(cd "\$(dirname "\$0")" && pwd)
venv=\${1:-/opt/noa-edge/venv}
python=\${PYTHON:-python3}
have=\$("\$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "\$have" = "$py" ] || { echo "error: this wheelhouse is for Python $py, \$python is \$have (PYTHON=python$py ./install.sh)" >&2; exit 2; }
[ "\$(uname -m)" = "$arch" ] || { echo "error: this wheelhouse is for $arch, this machine is \$(uname -m)" >&2; exit 2; }
(cd "\$here" && sha256sum --quiet -c SHA256SUMS) || { echo "error: a wheel in \$here is damaged (SHA256SUMS)" >&2; exit 2; }
"\$python" -m venv "\$venv"
# no index, no configuration: only the wheels in this folder
PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 PIP_FIND_LINKS= PIP_INDEX_URL= PIP_EXTRA_INDEX_URL= PIP_CONSTRAINT= \\
  "\$venv/bin/python" -m pip install --quiet --no-index --find-links "\$here" --only-binary=:all: noa-edge
echo "installed: \$venv/bin/noa-edge (\$("\$venv/bin/noa-edge" version))"
INSTALL
chmod +x "$out/install.sh"
echo "wheelhouse $out: $(ls "$out"/*.whl | wc -l) wheels, $(du -sh "$out" | cut -f1) ($arch, Python $py)"
