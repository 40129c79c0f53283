#!/usr/bin/env bash
# Installs the real Gearman peers the behaviour tests compare fastgear against:
# gearmand 1.1.20 and the gearman CLI tools, Perl and PHP client libraries (Debian
# packages). Idempotent and quick when everything is already there; needs root for apt.
set -euo pipefail

PACKAGES=(gearman-job-server gearman-tools libgearman-client-perl php-cli php-gearman)

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # policy-rc.d keeps the package from starting its own gearmand on port 4730.
    had_policy=0
    [ -e /usr/sbin/policy-rc.d ] && had_policy=1
    if [ $had_policy -eq 0 ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
    fi
    apt-get install -y -q --no-install-recommends "${missing[@]}"
    [ $had_policy -eq 0 ] && rm -f /usr/sbin/policy-rc.d
fi

# A gearmand started by the package's init script would hold port 4730.
if [ -f /run/gearman/gearmand.pid ] || [ -f /var/run/gearman/gearmand.pid ]; then
    (service gearman-job-server stop || true) >/dev/null 2>&1
fi

command -v gearmand >/dev/null || [ -x /usr/sbin/gearmand ] || { echo "gearmand missing" >&2; exit 1; }
command -v gearadmin >/dev/null || { echo "gearadmin missing" >&2; exit 1; }
echo "peers: $(/usr/sbin/gearmand --version 2>/dev/null | grep -m1 gearmand)"
