#!/usr/bin/env bash
# Installs the Debian packages vmfault needs, only those that are missing (fast when done).
set -euo pipefail
packages=(qemu-system-x86 qemu-utils busybox-static gcc libc6-dev python3-venv chromium
          qemu-system-arm gcc-aarch64-linux-gnu libc6-dev-arm64-cross
          slurmctld slurmd slurm-client munge)
missing=()
for pkg in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${missing[*]}"
sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
