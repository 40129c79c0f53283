#!/usr/bin/env bash
# Install the real peers the tests run against, from Debian, and prove that each works.
# The packages and their checks come from one list, PEERS below (tests/conftest.py reads
# it too, to name the package a missing peer comes from). Each package is installed when
# dpkg does not have it, then checked whether it was installed now or long ago: a check
# proves what the tests use (gearmand answers --version, PHP loads its gearman
# extension, clang links an ASan + fuzzer shared object), so a machine where a package
# was once installed by hand is no different from a fresh one. Needs root (or sudo)
# only when something is missing. Python peers (gear, python3-gearman, ...) come from
# `pip install -e '.[test]'`, not from here.
# The package's own gearmand service is never left running: the tests start their own
# servers on free loopback ports and port 4730 must not be taken by a stray daemon.
set -euo pipefail

# The one list of Debian packages the test suite needs. One package a line:
#
#   package | check: a bash command that exits 0 only when the package does its job here
#
# A check proves what the tests use, not only that dpkg knows the package: the sanitizer
# runtime is checked by linking a shared object the way the fuzzer's build does.
# PEERS_FILE names another list in this format (tests/test_suite_rules.py uses it).
read -r -d '' PEERS <<'END_OF_PEERS' || true
gearman-job-server     | "$(command -v gearmand || echo /usr/sbin/gearmand)" --version | grep -q '^gearmand 1\.1\.'
gearman-tools          | command -v gearman && command -v gearadmin
libgearman-client-perl | perl -MGearman::Client -MGearman::Worker -e 1
php-cli                | php -r 'exit(0);'
php-gearman            | php -r 'exit(class_exists("GearmanClient") && class_exists("GearmanWorker") ? 0 : 1);'
chromium               | timeout 60 chromium --headless --no-sandbox --disable-gpu --dump-dom 'data:text/html,<p id=x>ok</p>' 2>/dev/null | grep -q '<p id="x">ok</p>'
clang                  | clang --version | grep -q 'clang version'
libclang-rt-dev        | d=$(mktemp -d) && echo 'int f(int x) { return x + 1; }' > "$d/t.c" && clang -fsanitize=address,fuzzer-no-link -shared -fPIC "$d/t.c" -o "$d/t.so"; rc=$?; rm -rf "$d"; exit $rc
gcc                    | d=$(mktemp -d) && echo 'int main(void) { return 0; }' > "$d/t.c" && gcc -O2 "$d/t.c" -o "$d/t" && "$d/t"; rc=$?; rm -rf "$d"; exit $rc
iproute2               | ss -ltn >/dev/null
binutils               | nm --version >/dev/null
procps                 | pgrep --version >/dev/null
postgresql             | d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1) && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && "$d/postgres" --version | grep -q 'PostgreSQL'
curl                   | curl --version | grep -q '^curl '
mariadb-server         | command -v mariadb-install-db && m=$(command -v mariadbd || echo /usr/sbin/mariadbd) && "$m" --version | grep -q 'MariaDB'
redis-server           | redis-server --version | grep -q 'Redis server v=' && command -v redis-cli >/dev/null
memcached              | memcached -V | grep -q '^memcached 1\.6'
liburing-dev           | d=$(mktemp -d) && printf '#include <liburing.h>\nint main(void) { struct io_uring r; return io_uring_queue_init(8, &r, 0) == -999; }\n' > "$d/t.c" && gcc "$d/t.c" -o "$d/t" -luring; rc=$?; rm -rf "$d"; [ $rc -eq 0 ]
libssl-dev             | d=$(mktemp -d) && printf '#include <openssl/ssl.h>\nint main(void) { return SSL_CTX_new(TLS_server_method()) == 0; }\n' > "$d/t.c" && gcc "$d/t.c" -o "$d/t" -lssl -lcrypto && "$d/t"; rc=$?; rm -rf "$d"; exit $rc
openssl                | openssl version | grep -q '^OpenSSL [13]\.'
END_OF_PEERS
if [ -n "${PEERS_FILE:-}" ]; then
    PEERS=$(cat "$PEERS_FILE")
fi
LIST="${PEERS_FILE:-the PEERS list in $0}"
SERVICE=gearman-job-server

log() { printf 'install-peers: %s\n' "$*" >&2; }

PACKAGES=()
declare -A CHECK=()
while IFS= read -r line; do
    case "$line" in ''|'#'*) continue ;; esac
    pkg="${line%%|*}"; pkg="${pkg//[[:space:]]/}"
    check="${line#*|}"; check="${check#"${check%%[![:space:]]*}"}"
    if [ -z "$pkg" ] || [ "$check" = "$line" ] || [ -z "$check" ]; then
        log "bad line in $LIST: $line"; exit 1
    fi
    PACKAGES+=("$pkg")
    CHECK[$pkg]="$check"
done <<< "$PEERS"

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
    log "all ${#PACKAGES[@]} packages already installed"
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
        "${missing[@]}"
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

# Check every package as the tests will use it, each in its own shell.
failed=()
for pkg in "${PACKAGES[@]}"; do
    if installed "$pkg" && bash -c "${CHECK[$pkg]}" >/dev/null 2>&1 </dev/null; then
        continue
    fi
    log "check failed for $pkg: ${CHECK[$pkg]}"
    failed+=("$pkg")
done
if [ "${#failed[@]}" -ne 0 ]; then
    log "not working: ${failed[*]}"
    exit 1
fi
gearmand_bin=$(command -v gearmand || echo /usr/sbin/gearmand)
log "ready, ${#PACKAGES[@]} packages checked: $("$gearmand_bin" --version 2>&1 | grep -m1 gearmand || true)"
