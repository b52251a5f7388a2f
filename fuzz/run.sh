#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers of untrusted bytes, for a bounded time.
#
#   fuzz/run.sh                 # every target, 60 s each
#   fuzz/run.sh header 600      # one target, 10 minutes
#
# libFuzzer (built by the libfuzzer-sys crate) with SanitizerCoverage instrumentation passed as
# stable rustc flags: no nightly toolchain and no cargo-fuzz binary are needed. Without
# AddressSanitizer (nightly-only), so it finds panics, overflows (overflow-checks are on),
# failed assertions, timeouts and unbounded allocations (-rss_limit_mb), not memory errors in
# unsafe code (the format and server crates have none: #![forbid(unsafe_code)]).
# The corpus is seeded from tests/vectors and kept in fuzz/corpus/TARGET (git-ignored);
# crashes land in fuzz/artifacts/TARGET and make this script exit non-zero.
set -euo pipefail
cd "$(dirname "$0")"
targets=("${1:-header tail range}")
secs="${2:-60}"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions"
# With an explicit --target, RUSTFLAGS reach the fuzzed code but not build scripts.
host="$(rustc -vV | sed -n 's/^host: //p')"
cargo build --release --locked --quiet --target "$host"
status=0
for t in ${targets[@]}; do
    mkdir -p "corpus/$t" "artifacts/$t"
    if [ "$t" = header ]; then
        for q in ../tests/vectors/*.qltx; do head -c 8192 "$q" > "corpus/$t/seed-$(basename "$q")"; done
    fi
    if [ "$t" = range ]; then
        printf '\x00\x00\x01\x00\x00\x00\x00\x00bytes=0-9,20-,-5' > "corpus/$t/seed-basic"
    fi
    echo "== fuzzing $t for ${secs}s"
    ./target/"$host"/release/"$t" "corpus/$t" -max_total_time="$secs" -rss_limit_mb=2048 -max_len=16384 \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1 2>&1 | tail -n 12 || status=1
done
exit $status
