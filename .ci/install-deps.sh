#!/usr/bin/env bash
# Install the system packages the test suite uses, only when something is missing (idempotent;
# `apt-get update` runs at most once). Add a line to NEEDED when a test starts using a new tool:
# tests/tests/deps.rs fails when a test runs a tool that is not listed here.
#
#   bash .ci/install-deps.sh           install what is missing (as root)
#   bash .ci/install-deps.sh --check   list what is missing and exit 1, install nothing
set -euo pipefail
check_only=false
[ "${1:-}" = "--check" ] && check_only=true

# command → Debian package
declare -A NEEDED=(
    [setsid]=util-linux
    [setpriv]=util-linux
    [ip]=iproute2
    [pgrep]=procps
    [openssl]=openssl
    [dig]=bind9-dnsutils
    [dnsmasq]=dnsmasq-base
    [python3]=python3
    [/usr/bin/python3]=python3
    [/usr/lib/nagios/plugins/check_dummy]=monitoring-plugins-basic
    [/usr/lib/nagios/plugins/check_tcp]=monitoring-plugins-basic
    [carbon-cache]=graphite-carbon
    [graphite-manage]=graphite-web
    [whisper-fetch]=python3-whisper
    [promtool]=prometheus
    [dot]=graphviz
    [apt-get]=apt
    [dpkg-query]=dpkg
    [useradd]=passwd
    [userdel]=passwd
    [id]=coreutils
    [redis-server]=redis-server
    [memcached]=memcached
    [nginx]=nginx
    [apache2]=apache2
    [haproxy]=haproxy
    [epmd]=erlang-base
    [/usr/lib/rabbitmq/bin/rabbitmq-server]=rabbitmq-server
    [/usr/lib/rabbitmq/bin/rabbitmqctl]=rabbitmq-server
    [podman]=podman
    [unshare]=util-linux
    [tar]=tar
    [busybox]=busybox-static
    [chromedriver]=chromium-driver
    [/usr/bin/chromium]=chromium
    [mariadbd]=mariadb-server
    [mariadb-install-db]=mariadb-server
    [mariadb]=mariadb-client
    [/usr/lib/postgresql/15/bin/initdb]=postgresql-15
    [/usr/lib/postgresql/15/bin/postgres]=postgresql-15
    [/usr/lib/postgresql/15/bin/pg_basebackup]=postgresql-15
    [psql]=postgresql-client-15
    [dpkg]=dpkg
    [dpkg-deb]=dpkg
    [update-rc.d]=init-system-helpers
    [invoke-rc.d]=init-system-helpers
    [deb-systemd-helper]=init-system-helpers
    [rpm]=rpm
    [man]=man-db
    [groff]=groff-base
    [strip]=binutils
    [objdump]=binutils
    [gzip]=gzip
)

missing=()
for cmd in "${!NEEDED[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || [ -x "$cmd" ] || missing+=("${NEEDED[$cmd]}")
done
# The SMTP server of the mail tests is aiosmtpd from PyPI, in a venv of its own.
VENV=/var/tmp/opsbro-venv
if ! "$VENV/bin/python" -c "import aiosmtpd" >/dev/null 2>&1; then
    python3 -c "import ensurepip, venv" >/dev/null 2>&1 || missing+=(python3-venv)
fi

# The package builders of packaging/build.sh (tests/tests/packages.rs), pinned, from the crates
# registry with `cargo install`; built once per machine (about 2 minutes each on 2 cores).
CARGO_TOOLS=(cargo-deb@3.8.0 cargo-generate-rpm@0.21.1)
missing_tools=()
for tool in "${CARGO_TOOLS[@]}"; do
    "${tool%@*}" --version 2>/dev/null | grep -qF " ${tool#*@}" || missing_tools+=("$tool")
done

if $check_only; then
    if [ "${#missing_tools[@]}" -gt 0 ]; then
        echo "missing for the tests (cargo install): ${missing_tools[*]}" >&2
        exit 1
    fi
    if [ "${#missing[@]}" -gt 0 ] || ! "$VENV/bin/python" -c "import aiosmtpd" >/dev/null 2>&1; then
        echo "missing for the tests: $(printf '%s\n' "${missing[@]}" aiosmtpd | sort -u | tr '\n' ' ')" >&2
        exit 1
    fi
    exit 0
fi

if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing packages: ${missing[*]} (run as root, or install them yourself)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Server packages (redis, mariadb, nginx...) must not start their system service on install:
    # the tests start their own on free ports, and two web servers would fight for port 80.
    made_policy=false
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        made_policy=true
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    # shellcheck disable=SC2046
    apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u)
    if $made_policy; then rm -f /usr/sbin/policy-rc.d; fi
fi

if ! "$VENV/bin/python" -c "import aiosmtpd" >/dev/null 2>&1; then
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check aiosmtpd
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is not installed: install Rust (https://rustup.rs) first" >&2
    exit 1
fi

for tool in "${missing_tools[@]}"; do
    cargo install --locked --quiet "${tool%@*}" --version "${tool#*@}"
done
