#!/usr/bin/env bash
# Install the Debian packages nembridge builds against (libzstd, libxxhash, pkg-config), and any
# named as arguments (tools/bench.sh asks for the zstd tool, its baseline for the zstd rows).
# Idempotent: does nothing when they are present; otherwise one `apt-get update`, then install.
set -euo pipefail
PACKAGES=(libzstd-dev libxxhash-dev pkg-config "$@")
missing=()
for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi
SUDO=()
if [[ $(id -u) -ne 0 ]]; then SUDO=(sudo); fi
echo "install-system-deps: installing ${missing[*]}"
"${SUDO[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq "${missing[@]}"
