#!/bin/sh
# Runs every unit test binary, the CLI end-to-end tests and the tool self-tests (tests/test_*.sh)
# on the plain build, then the unit and CLI tests again on the sanitizer build if one is given, then
# each libFuzzer target for a few seconds if a fuzz build is given (tests/fuzz/run.sh --check: one
# check per target, all skipped with the reason where clang or libFuzzer is missing).
# Prints each suite's result, one line per run ("plain: ...", "asan+ubsan: ...", "fuzz: ...") and a total:
#     tests: N passed, M failed, K skipped (reason: n; reason: n)
# Skips are counted from the suites' "skip: N checks (reason)" lines (tests/harness.h's SKIP and
# tests/e2e.sh). A suite without a result line, with a non-zero exit, or a test program that was
# not built counts as a failure, and the script then exits non-zero.
# usage: tests/run.sh BUILD_DIR [SANITIZER_BUILD_DIR [FUZZ_BUILD_DIR]]
build=$1
san=$2
fuzz=$3
FUZZ_SECONDS=${FUZZ_SECONDS:-3}
log=$(mktemp)
reasons=$(mktemp) # "run<TAB>count<TAB>reason" per skip line, both runs
trap 'rm -f "$log" "$reasons"' EXIT
: >"$reasons"
RESULT='^[A-Za-z0-9_ -]+: [0-9]+ passed, [0-9]+ failed'

# tally LOG NAME RC RUN: adds one suite's result to RUN's counts and prints it
tally() {
    line=$(grep -E "$RESULT" "$1" | tail -n 1)
    p=$(printf '%s' "$line" | sed -E 's/.*: ([0-9]+) passed.*/\1/')
    f=$(printf '%s' "$line" | sed -E 's/.* ([0-9]+) failed.*/\1/')
    s=$(printf '%s' "$line" | sed -E -n 's/.* ([0-9]+) skipped.*/\1/p')
    if [ -z "$p" ]; then p=0; f=1; echo "  (no result line: counted as a failure)"; fi
    if [ "$3" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; echo "  (exit code $3: counted as a failure)"; fi
    # The skip lines say why; what the result line counts beyond them is "reason not given".
    grep -E '^skip: [0-9]+ checks? \(' "$1" | sed -E 's/^skip: ([0-9]+) checks? \((.*)\)( at .*)?$/\1	\2/' >"$log.skips"
    said=$(awk -F'\t' '{ n += $1 } END { print n + 0 }' "$log.skips")
    { [ -z "$s" ] || [ "$s" -lt "$said" ]; } && s=$said
    [ "$s" -gt "$said" ] && printf '%s\t%s\n' $((s - said)) "reason not given" >>"$log.skips"
    why=$(awk -F'\t' '{ n[$2] += $1; if (!($2 in o)) o[$2] = ++k; r[o[$2]] = $2 }
        END { for (i = 1; i <= k; i++) t = t (i > 1 ? "; " : "") r[i] ": " n[r[i]]; print t }' "$log.skips")
    awk -F'\t' -v run="$4" '{ print run "\t" $1 "\t" $2 }' "$log.skips" >>"$reasons"
    rm -f "$log.skips"
    eval "passed_$4=\$((passed_$4 + p)); failed_$4=\$((failed_$4 + f)); skipped_$4=\$((skipped_$4 + s))"
    if [ "$s" -gt 0 ]; then echo "$2: $p passed, $f failed, $s skipped ($why)"; else echo "$2: $p passed, $f failed"; fi
}
# suite RUN NAME COMMAND...: runs one suite, showing its whole log only when it fails
suite() {
    run=$1 name=$2
    shift 2
    "$@" >"$log" 2>&1; rc=$?
    [ $rc -ne 0 ] && cat "$log"
    tally "$log" "$name" $rc "$run"
}
# unit RUN DIR SUFFIX: every tests/test_*.c program of a build; one that is missing is a failure
unit() {
    for src in tests/test_*.c; do
        t=$2/tests/$(basename "$src" .c)
        if [ -x "$t" ]; then suite "$1" "$(basename "$t")$3" "$t"
        else
            echo "$(basename "$t")$3: not built (counted as a failure)"
            eval "failed_$1=\$((failed_$1 + 1))"
        fi
    done
}
# 1234567 -> 1,234,567
commas() { echo "$1" | sed -E ':a; s/([0-9])([0-9]{3})($|,)/\1,\2\3/; ta'; }
# summary LABEL RUN...: one line of counts over the given runs, skips grouped by reason
summary() {
    label=$1
    shift
    p=0 f=0 s=0
    for r in "$@"; do eval "p=\$((p + passed_$r)); f=\$((f + failed_$r)); s=\$((s + skipped_$r))"; done
    why=$(awk -F'\t' -v runs=" $* " 'index(runs, " " $1 " ") { n[$3] += $2; if (!($3 in o)) o[$3] = ++k; r[o[$3]] = $3 }
        END { for (i = 1; i <= k; i++) t = t (i > 1 ? "; " : "") r[i] ": " n[r[i]]; print t }' "$reasons")
    line="$label $(commas $p) passed, $(commas $f) failed, $(commas $s) skipped"
    [ -n "$why" ] && line="$line ($why)"
    echo "$line"
}

passed_plain=0 failed_plain=0 skipped_plain=0
passed_san=0 failed_san=0 skipped_san=0
passed_fuzz=0 failed_fuzz=0 skipped_fuzz=0
unit plain "$build" ""
suite plain e2e env OUNCE=./ounce sh tests/e2e.sh
for t in tests/test_*.sh; do
    suite plain "$(basename "$t" .sh)" sh "$t"
done
runs=plain
if [ -n "$san" ]; then
    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1:allocator_may_return_null=1
    export LSAN_OPTIONS=suppressions=tests/lsan.supp:print_suppressions=0
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
    unit san "$san" " [asan+ubsan]"
    suite san "e2e [asan+ubsan]" env OUNCE="$san/ounce" sh tests/e2e.sh
    runs="plain san"
fi
if [ -n "$fuzz" ]; then
    suite fuzz "fuzz (${FUZZ_SECONDS}s a target)" sh tests/fuzz/run.sh --check "$fuzz" "$FUZZ_SECONDS"
    runs="$runs fuzz"
fi
echo
summary "plain:" plain
[ -n "$san" ] && summary "asan+ubsan:" san
[ -n "$fuzz" ] && summary "fuzz:" fuzz
# shellcheck disable=SC2086 # $runs is a list of run names
summary "tests:" $runs
[ $((failed_plain + failed_san + failed_fuzz)) -eq 0 ]
