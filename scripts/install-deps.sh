#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build and test certrotd: the real components the
# tests start (etcd, a systemd manager over D-Bus, cfssl), the independent judges (openssl,
# kubectl, prometheus) and the packaging tools. Idempotent: does nothing when everything is present.
# cargo-deb and cargo-generate-rpm come from crates.io: `make package-tools`.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1 || [ -e "$1" ]; }
want() { have "$1" || need+=("$2"); }

want protoc protobuf-compiler
# etcd-client's build imports google/protobuf/*.proto, which protoc alone does not carry.
want /usr/include/google/protobuf/descriptor.proto libprotobuf-dev

# `--build`: only what building needs (make run); the rest is for the tests and the packages.
build_only=""
if [ "${1:-}" = "--build" ]; then build_only=yes; fi
if [ -z "$build_only" ]; then
want etcd etcd-server
want etcdctl etcd-client
want cfssl golang-cfssl
# The judge of the metrics (tests/daemon_tests/metrics.rs): promtool, and a real server scraping a daemon.
want prometheus prometheus
want promtool prometheus
want openssl openssl
want dbus-daemon dbus
want /lib/systemd/systemd systemd
want setpriv util-linux
want unshare util-linux
# Packaging and its tests (make package, scripts/test-package.sh, tests/component_tests/package.rs): the judges of
# the .deb and .rpm, a clean Debian root to install into, the man page renderers, the shells
# whose completions are loaded, and dpkg-shlibdeps for the .deb's automatic Depends.
want lintian lintian
want rpm rpm
want debootstrap debootstrap
want dpkg-shlibdeps dpkg-dev
want strip binutils
want groff groff-base
want man man-db
want zsh zsh
want fish fish
fi

kubectl_pkg=""
if [ -z "$build_only" ] && ! have kubectl; then kubectl_pkg=yes; fi

if [ ${#need[@]} -eq 0 ] && [ -z "$kubectl_pkg" ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
    echo "install-deps: missing ${need[*]} ${kubectl_pkg:+kubectl}; run as root to install them" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
if [ ${#need[@]} -gt 0 ]; then
  # shellcheck disable=SC2068
  $SUDO apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
fi
if [ -n "$kubectl_pkg" ]; then
  # Debian ships kubectl in kubernetes-client; some images carry a newer 'kubectl' package.
  $SUDO apt-get install -y -qq --no-install-recommends kubectl >/dev/null 2>&1 \
    || $SUDO apt-get install -y -qq --no-install-recommends kubernetes-client >/dev/null
fi
echo "install-deps: installed ${need[*]} ${kubectl_pkg:+kubectl}"
