#!/usr/bin/env bash
# Install the peers prism-bench compares Prism with, from Debian's packages. Idempotent.
# Peers that cannot be installed are reported absent by prism-bench, never faked.
#   bubblewrap (bwrap), crun, runsc (gVisor; Debian package `runsc`), podman.
set -uo pipefail
if [ "$(id -u)" != 0 ]; then
  echo "install-peers: run as root" >&2
  exit 1
fi
want=()
for pkg in bubblewrap crun runsc podman; do
  dpkg -s "$pkg" >/dev/null 2>&1 || want+=("$pkg")
done
[ "${#want[@]}" -eq 0 ] && { echo "install-peers: all peers present"; exit 0; }
apt-get update -qq || true
for pkg in "${want[@]}"; do
  # One at a time: a package missing from this release must not block the others.
  if DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null; then
    echo "install-peers: installed $pkg"
  else
    echo "install-peers: $pkg is not installable here; prism-bench will report it absent" >&2
  fi
done
