#!/bin/sh
# Runs the libFuzzer targets that `make fuzz-build` put in BUILD (BUILD/fuzz_TARGET, one per
# tests/fuzz/fuzz_TARGET.c), one at a time (the machines are shared: one job, one process each).
#
#   tests/fuzz/run.sh BUILD SECONDS [TARGET...]   `make fuzz SECONDS=N`: each target for SECONDS,
#       growing BUILD/corpus/TARGET (seeded from tests/fuzz/corpus/TARGET); one line per target:
#       executions, coverage (cov = edges, ft = features, from libFuzzer's final status line),
#       corpus size and crashes. A crash's input is saved as BUILD/crashes/TARGET-crash-<sha1>
#       (or -leak-, -oom-, -timeout-) and named; the script then exits 1.
#   tests/fuzz/run.sh --check BUILD SECONDS        `make test`: each target for SECONDS from the
#       committed seeds with a fixed seed (-seed=1), one check per target, then its saved
#       reproducers (tests/fuzz/crashes/TARGET/*, one check each), ending with the line
#       "fuzz: N passed, M failed, K skipped" that tests/run.sh counts. Where clang or libFuzzer
#       is missing every target is a skip with that reason.
#   tests/fuzz/run.sh --replay BUILD               every reproducer in tests/fuzz/crashes/TARGET/
#       run once through its target; one check per file (`make fuzz-replay`).
#   tests/fuzz/run.sh --probe                      exits 0 if $FUZZ_CC (clang) can build a libFuzzer
#       program with ASan, UBSan and OpenMP; otherwise prints why and exits 1.
FUZZ_CC=${FUZZ_CC:-clang}
here=$(dirname "$0")

probe() {
    command -v "$FUZZ_CC" >/dev/null 2>&1 || { echo "clang not installed"; return 1; }
    d=$(mktemp -d /tmp/ounce-fuzz-probe.XXXXXX)
    cat >"$d/p.c" <<'EOF'
#include <omp.h>
#include <stddef.h>
#include <stdint.h>
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return omp_get_max_threads() < 0; }
EOF
    if ! "$FUZZ_CC" -fsanitize=fuzzer,address,undefined -fopenmp -o "$d/p" "$d/p.c" >"$d/log" 2>&1; then
        if grep -q "omp.h" "$d/log"; then echo "clang has no OpenMP (libomp-dev) installed"
        else echo "clang has no libFuzzer (libclang-rt-dev) installed"; fi
        rm -rf "$d"
        return 1
    fi
    rm -rf "$d"
    return 0
}

if [ "$1" = "--probe" ]; then
    probe
    exit $?
fi

mode=fuzz
case "$1" in
--check) mode=check; shift ;;
--replay) mode=replay; shift ;;
esac
build=${1:?usage: tests/fuzz/run.sh [--check|--replay] BUILD [SECONDS [TARGET...]]}
seconds=${2:-60}
[ $# -ge 2 ] && shift 2 || shift $#
targets=$*
[ -z "$targets" ] && targets=$(ls "$here"/fuzz_*.c | sed -E 's|.*/fuzz_(.*)\.c$|\1|')
n_targets=$(echo "$targets" | wc -w)

# The largest input libFuzzer makes, per target (the seeds are below it; encode tiles its input
# past the parallel encoder's threshold itself, from patterns up to 40000 bytes: longer than the
# encoder's half unit of 32 KiB).
max_len() {
    case "$1" in
    cli_args) echo 1024 ;;
    config | trainer_state) echo 8192 ;;
    encode) echo 40000 ;;
    *) echo 32768 ;;
    esac
}

scratch=$(mktemp -d "${TMPDIR:-/tmp}/ounce-fuzz-run.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
export OZ_FUZZ_TMP="$scratch"
export ASAN_OPTIONS=abort_on_error=0:detect_leaks=1:allocator_may_return_null=0
export LSAN_OPTIONS=suppressions=$here/lsan.supp:print_suppressions=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# OpenMP's spinning threads waste the shared cores between the encoder's parallel regions.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}

passed=0 failed=0 skipped=0

if ! why=$(probe); then
    if [ "$mode" = fuzz ]; then
        echo "fuzz: cannot run the targets: $why (sh tools/install-deps.sh installs clang, libclang-rt-dev, libomp-dev)" >&2
        exit 1
    fi
    n=$n_targets
    [ "$mode" = replay ] && n=0
    for t in $targets; do n=$((n + $(find "$here/crashes/$t" -type f 2>/dev/null | wc -l))); done
    echo "skip: $n checks ($why)"
    echo "fuzz: 0 passed, 0 failed, $n skipped"
    exit 0
fi

# stats LOG: "execs cov ft corp" from libFuzzer's output (final stats, else the last status line)
stats() {
    execs=$(sed -n -E 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' "$1" | tail -n 1)
    last=$(grep -E '^#[0-9]+.*cov: ' "$1" | tail -n 1)
    [ -z "$execs" ] && execs=$(printf '%s' "$last" | sed -E -n 's/^#([0-9]+).*/\1/p')
    cov=$(printf '%s' "$last" | sed -E -n 's/.* cov: ([0-9]+).*/\1/p')
    ft=$(printf '%s' "$last" | sed -E -n 's/.* ft: ([0-9]+).*/\1/p')
    corp=$(printf '%s' "$last" | sed -E -n 's/.* corp: ([0-9]+)\/.*/\1/p')
    echo "${execs:-0} ${cov:-0} ${ft:-0} ${corp:-0}"
}

# replay TARGET: every saved reproducer of TARGET once through it, one check each
replay() {
    for f in "$here/crashes/$1"/*; do
        [ -f "$f" ] || continue
        if [ ! -x "$build/fuzz_$1" ]; then
            echo "FAIL $1 $(basename "$f"): $build/fuzz_$1 not built"; failed=$((failed + 1)); continue
        fi
        if "$build/fuzz_$1" -rss_limit_mb=2048 -timeout=60 -close_fd_mask=3 "$f" >"$scratch/replay.log" 2>&1; then
            echo "ok   $1: reproducer $(basename "$f")"; passed=$((passed + 1))
        else
            echo "FAIL $1: reproducer $(basename "$f") (see $here/crashes/README.md):"
            grep -E 'ERROR|SUMMARY|fuzz check failed|runtime error' "$scratch/replay.log" | head -n 5 | sed 's/^/    /'
            failed=$((failed + 1))
        fi
    done
}

if [ "$mode" = replay ]; then
    for t in $targets; do replay "$t"; done
    echo "fuzz-replay: $passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit $?
fi

mkdir -p "$build/crashes"
[ "$mode" = fuzz ] && printf '%-14s %12s %8s %8s %8s  %s\n' target executions cov ft corpus crashes
for t in $targets; do
    bin=$build/fuzz_$t
    if [ ! -x "$bin" ]; then
        echo "$t: not built ($bin; run \`make fuzz-build\`)"
        failed=$((failed + 1))
        continue
    fi
    seeds=$here/corpus/$t
    dict=$here/$t.dict
    if [ "$mode" = check ]; then
        corpus=$scratch/corpus-$t
        extra="-seed=1"
    else
        corpus=$build/corpus/$t
        extra=""
    fi
    mkdir -p "$corpus"
    log=$scratch/$t.log
    # shellcheck disable=SC2086 # $extra and the dict option are word lists
    "$bin" "$corpus" "$seeds" -max_total_time="$seconds" -max_len="$(max_len "$t")" -timeout=30 -rss_limit_mb=2048 \
        -print_final_stats=1 -close_fd_mask=3 -artifact_prefix="$build/crashes/$t-" \
        $([ -f "$dict" ] && echo "-dict=$dict") $extra >"$log" 2>&1
    rc=$?
    set -- $(stats "$log")
    execs=$1 cov=$2 ft=$3 corp=$4
    crash=$(sed -n -E 's/.*Test unit written to (.*)$/\1/p' "$log" | tail -n 1)
    if [ "$mode" = fuzz ]; then
        printf '%-14s %12s %8s %8s %8s  %s\n' "$t" "$execs" "$cov" "$ft" "$corp" "$([ -n "$crash" ] && echo 1 || echo 0)"
    fi
    if [ $rc -ne 0 ] || [ -n "$crash" ]; then
        failed=$((failed + 1))
        echo "$t: CRASH (exit $rc) after $execs executions; reproducer: ${crash:-none written}"
        grep -E '^==[0-9]+==ERROR|^SUMMARY|fuzz check failed|runtime error|^MS:|out-of-memory|timeout' "$log" | head -n 6 | sed 's/^/    /'
        [ -n "$crash" ] && echo "    rerun: $bin $crash"
    else
        passed=$((passed + 1))
        [ "$mode" = check ] && echo "ok   $t: $execs executions, cov $cov, ft $ft, no crash in ${seconds}s"
    fi
    [ "$mode" = check ] && replay "$t"
done
if [ "$mode" = check ]; then
    echo "fuzz: $passed passed, $failed failed, $skipped skipped"
else
    echo "fuzz: $passed of $n_targets targets ran ${seconds}s without a crash"
fi
[ "$failed" -eq 0 ]
