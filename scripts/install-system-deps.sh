#!/usr/bin/env bash
# Debian packages the test suite drives as real clients: curl, ffmpeg/ffprobe and headless
# Chromium with its driver (SeekServer tests), redis-server and redis-benchmark (an
# unmodified application through a GatewayServer pair), PostgreSQL with pgbench (the same, for
# a database; the test runs its own server), fuse3 (qeltrix mount: fusermount3 and libfuse 3),
# nginx (a load balancer in front of two `qeltrix serve s3://` replicas) and rclone (its crypt
# remote is benches/bench_s3.py's peer). Installs only what is missing.
set -euo pipefail
need=()
command -v curl >/dev/null || need+=(curl)
command -v ffmpeg >/dev/null || need+=(ffmpeg)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-benchmark >/dev/null || need+=(redis-tools)
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v pgbench >/dev/null || need+=(postgresql-client)
{ command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || need+=(postgresql)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v rclone >/dev/null || need+=(rclone)
exec "$(dirname "$0")/apt-install.sh" ${need[@]+"${need[@]}"}
