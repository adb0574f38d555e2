#!/bin/sh
# Runs every unit test binary (plain build, then the sanitizer build if given) and the CLI
# end-to-end tests, then prints one total line: "N passed, N failed".
# usage: tests/run.sh BUILD_DIR [SANITIZER_BUILD_DIR]
build=$1
san=$2
passed=0
failed=0
tally() { # parse "suite: N passed, M failed" lines from a log
    p=$(grep -E '^[A-Za-z0-9_ -]+: [0-9]+ passed, [0-9]+ failed' "$1" | tail -n 1 | sed -E 's/.*: ([0-9]+) passed.*/\1/')
    f=$(grep -E '^[A-Za-z0-9_ -]+: [0-9]+ passed, [0-9]+ failed' "$1" | tail -n 1 | sed -E 's/.* ([0-9]+) failed.*/\1/')
    if [ -z "$p" ]; then p=0; f=1; echo "  (no result line: counted as a failure)"; fi
    if [ "$3" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; echo "  (exit code $3: counted as a failure)"; fi
    passed=$((passed + p)); failed=$((failed + f))
    echo "$2: $p passed, $f failed"
}
log=$(mktemp)
for t in "$build"/tests/test_*; do
    [ -x "$t" ] || continue
    "$t" >"$log" 2>&1; rc=$?
    [ $rc -ne 0 ] && cat "$log"
    tally "$log" "$(basename "$t")" $rc
done
OUNCE=./ounce sh tests/e2e.sh >"$log" 2>&1; rc=$?
[ $rc -ne 0 ] && cat "$log"
tally "$log" "e2e" $rc
if [ -n "$san" ]; then
    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1:allocator_may_return_null=1
    export LSAN_OPTIONS=suppressions=tests/lsan.supp:print_suppressions=0
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
    for t in "$san"/tests/test_*; do
        [ -x "$t" ] || continue
        "$t" >"$log" 2>&1; rc=$?
        [ $rc -ne 0 ] && cat "$log"
        tally "$log" "$(basename "$t") [asan+ubsan]" $rc
    done
    OUNCE="$san/ounce" sh tests/e2e.sh >"$log" 2>&1; rc=$?
    [ $rc -ne 0 ] && cat "$log"
    tally "$log" "e2e [asan+ubsan]" $rc
fi
rm -f "$log"
echo "ounce tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
