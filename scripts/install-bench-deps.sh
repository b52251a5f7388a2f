#!/usr/bin/env bash
# Debian packages the benchmarks (benches/*.py) drive beyond the test suite's (those are
# scripts/install-system-deps.sh: curl, nginx, redis, PostgreSQL, rclone, fuse3, ...):
# stunnel4, spiped, socat and openssl (bench_gateway.py's peers and stunnel's certificate),
# iperf3 (bench_gateway.py --tools), age (bench_container.py's peer), restic and borgbackup
# (bench_archive.py's peers) and wrk (bench_seekserver.py uses it when present). Installs only
# what is missing. Not part of CI: the benches are run by hand.
set -euo pipefail
need=()
command -v stunnel >/dev/null || need+=(stunnel4)
command -v spiped >/dev/null || need+=(spiped)
command -v socat >/dev/null || need+=(socat)
command -v openssl >/dev/null || need+=(openssl)
command -v iperf3 >/dev/null || need+=(iperf3)
{ command -v age >/dev/null && command -v age-keygen >/dev/null; } || need+=(age)
command -v restic >/dev/null || need+=(restic)
command -v borg >/dev/null || need+=(borgbackup)
command -v wrk >/dev/null || need+=(wrk)
exec "$(dirname "$0")/apt-install.sh" ${need[@]+"${need[@]}"}
