#!/usr/bin/env bash
# Install the Debian packages named as arguments (none: nothing to do), as root or through sudo,
# without prompts (a package that asks, such as iperf3's "start a daemon?", takes its default).
# Used by install-system-deps.sh and install-bench-deps.sh, which name only what is missing.
set -euo pipefail
[ $# -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing Debian packages: $*"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
