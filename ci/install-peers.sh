#!/usr/bin/env bash
# Install the real Gearman peers the tests run against, from Debian:
#   gearman-job-server     gearmand 1.1.20 (every behaviour test also runs against it)
#   gearman-tools          the `gearman` CLI and `gearadmin`
#   libgearman-client-perl Perl Gearman::Client / Gearman::Worker
#   php-cli php-gearman    PHP GearmanClient / GearmanWorker (libgearman)
#   chromium               headless browser for the dashboard test (tests/test_dashboard_browser.py)
#   clang                  builds the ASan + coverage-instrumented codec for the fuzzer
# Idempotent: when every package is already installed apt-get is not run at all.
# Needs root (or sudo) only when something is missing. Python peers (gear,
# python3-gearman) come from `pip install -e '.[test]'`, not from here.
# The package's own gearmand service is never left running: the tests start their own
# servers on free loopback ports and port 4730 must not be taken by a stray daemon.
set -euo pipefail

PACKAGES=(gearman-job-server gearman-tools libgearman-client-perl php-cli php-gearman chromium
          clang)
SERVICE=gearman-job-server

log() { printf 'install-peers: %s\n' "$*" >&2; }

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        log "need root to run: $*"
        return 1
    fi
}

missing=()
for pkg in "${PACKAGES[@]}"; do
    installed "$pkg" || missing+=("$pkg")
done

if [ "${#missing[@]}" -eq 0 ]; then
    log "all peers already installed: ${PACKAGES[*]}"
else
    log "installing: ${missing[*]}"
    # Keep maintainer scripts from starting gearmand (invoke-rc.d honours policy-rc.d
    # exit code 101 = "action forbidden"). Only add one if the machine has none, and
    # remove exactly the one we added.
    added_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        as_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d'
        added_policy=1
    fi
    cleanup() {
        if [ "$added_policy" -eq 1 ]; then
            as_root rm -f /usr/sbin/policy-rc.d || true
        fi
    }
    trap cleanup EXIT
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        "${PACKAGES[@]}"
    cleanup
    trap - EXIT
fi

# Make sure the packaged service is not running (and does not start at boot).
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    if systemctl is-active --quiet "$SERVICE" 2>/dev/null \
            || systemctl is-enabled --quiet "$SERVICE" 2>/dev/null; then
        log "stopping and disabling the $SERVICE service"
        as_root systemctl disable --now "$SERVICE" >/dev/null 2>&1 || true
    fi
fi
# Without systemd (containers): the package's daemon is identified by its own pid file
# only (the one the init script and the unit use); nothing else is touched.
pidfile=/run/gearman/gearmand.pid
if [ -r "$pidfile" ] && pgrep -F "$pidfile" -x gearmand >/dev/null 2>&1; then
    pid=$(cat "$pidfile")
    log "stopping the $SERVICE daemon (pid $pid)"
    as_root service "$SERVICE" stop >/dev/null 2>&1 || true
    if pgrep -F "$pidfile" -x gearmand >/dev/null 2>&1; then
        as_root kill "$pid" || true
    fi
fi

# Check that every peer works as the tests will use it.
fail=0
command -v gearmand >/dev/null 2>&1 || [ -x /usr/sbin/gearmand ] || { log "gearmand missing"; fail=1; }
command -v gearman >/dev/null 2>&1 || { log "gearman CLI missing"; fail=1; }
command -v gearadmin >/dev/null 2>&1 || { log "gearadmin missing"; fail=1; }
perl -MGearman::Client -MGearman::Worker -e 1 2>/dev/null \
    || { log "Perl Gearman::Client/Gearman::Worker missing"; fail=1; }
php -r 'exit(class_exists("GearmanClient") && class_exists("GearmanWorker") ? 0 : 1);' 2>/dev/null \
    || { log "PHP gearman extension missing or not enabled"; fail=1; }
chromium_bin=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$chromium_bin" ]; then
    log "chromium missing"; fail=1
elif ! timeout 60 "$chromium_bin" --headless --no-sandbox --disable-gpu --dump-dom \
        'data:text/html,<p id=x>ok</p>' 2>/dev/null | grep -q '<p id="x">ok</p>'; then
    log "chromium cannot render a page headless"; fail=1
fi
if [ "$fail" -ne 0 ]; then
    exit 1
fi
gearmand_bin=$(command -v gearmand || echo /usr/sbin/gearmand)
log "ready: $("$gearmand_bin" --version 2>&1 | grep -m1 gearmand || true)"
