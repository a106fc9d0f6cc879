# Shared by the scripts in this folder: sourced, not run. Defines log(), apt_get(), need_root() and
# ensure_venv(), and puts root's tools on PATH.
# shellcheck shell=bash

# Root's tools (chroot, runuser, ip, debootstrap, useradd) live in /usr/sbin. A root shell started with a
# minimal PATH (`env -i PATH=/usr/bin:/bin`, cron, some CI runners) lacks it, and the rig would fail.
case ":$PATH:" in
*:/usr/sbin:*) ;;
*) PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin" ;;
esac
export PATH

SCRIPT_NAME="$(basename "$0")"
log() { printf '%s: %s\n' "$SCRIPT_NAME" "$*" >&2; }

need_root() {
    if [[ $EUID -ne 0 ]]; then
        log "must run as root ($*)"
        exit 2
    fi
}

# apt-get that waits up to 10 minutes for another apt/dpkg run (unattended-upgrades on a fresh machine)
# instead of failing with exit 100. DPkg::Lock::Timeout covers dpkg's lock; the lists lock of
# `apt-get update` ignores it, so that one is retried here while apt says it could not get a lock.
apt_get() {
    local deadline=$((SECONDS + 600)) err rc
    err="$(mktemp)"
    while true; do
        rc=0
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 "$@" 2>"$err" || rc=$?
        cat "$err" >&2
        if ((rc == 100)) && ((SECONDS < deadline)) && grep -q "Could not get lock" "$err"; then
            log "the package manager is busy (another apt-get?); waiting"
            sleep 5
            continue
        fi
        rm -f "$err"
        return "$rc"
    done
}

apt_install() {
    log "apt-get install $*"
    apt_get update -q
    apt_get install -y -q --no-install-recommends "$@"
}

# ensure_venv DIR PYTHON: a working virtualenv at DIR made from PYTHON (python3-venv installed with
# apt when PYTHON lacks ensurepip, as Debian's python3 does without it). Nothing goes into PYTHON itself.
ensure_venv() {
    local dir="$1" python="$2"
    if "$dir/bin/python" -c '' 2>/dev/null; then
        return 0
    fi
    if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
        apt_install python3-venv
    fi
    log "creating the virtualenv $dir (from $python)"
    rm -rf "$dir"
    "$python" -m venv "$dir"
}

# pip_install VENV_DIR ARGS...: pip install into the virtualenv, every version from the lock file
# (requirements/constraints.txt, written by scripts/lock). PIP_CONSTRAINT also reaches the build
# environment pip makes for bridged itself (setuptools), which -c does not.
pip_install() {
    local dir="$1"
    shift
    PIP_CONSTRAINT="$LOCK_FILE" "$dir/bin/python" -m pip install -q --disable-pip-version-check -c "$LOCK_FILE" "$@"
}

LOCK_FILE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/requirements/constraints.txt"
