#!/bin/sh
# tools/check-deps.sh and its hook in the Makefile, without touching the system's packages:
# OZ_DEPS_ROOT points the check at fake roots (empty, or with every file but cJSON's), CC at a
# compiler that does not exist. Each missing package must be named with how to get it, and `make`
# must stop with that list before the compiler runs. Ends with "test_deps: N passed, M failed".
T=$(mktemp -d /tmp/ounce-deps.XXXXXX)
trap 'rm -rf "$T"' EXIT
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   $1"; }
bad() { failed=$((failed + 1)); echo "FAIL $1"; }
# has NAME FILE PATTERN: FILE has a line matching PATTERN
has() { if grep -q -- "$3" "$2"; then ok "$1"; else bad "$1: no /$3/ in: $(head -c 800 "$2")"; fi; }
hasnt() { if grep -q -- "$3" "$2"; then bad "$1: /$3/ in: $(head -c 800 "$2")"; else ok "$1"; fi; }
status() { if [ "$2" -eq "$3" ]; then ok "$1"; else bad "$1: exit $2, wanted $3: $(head -c 800 "$4")"; fi; }

sh tools/check-deps.sh >"$T/here.out" 2>&1
status "this machine has what the build needs" $? 0 "$T/here.out"

mkdir -p "$T/empty"
OZ_DEPS_ROOT="$T/empty" sh tools/check-deps.sh >"$T/empty.out" 2>&1
status "empty root fails" $? 1 "$T/empty.out"
for p in build-essential libopenblas-openmp-dev liblapacke-dev libcjson-dev libpcre2-dev; do
    has "empty root names $p" "$T/empty.out" "^  missing: $p ("
done
has "empty root names the file" "$T/empty.out" "cJSON headers: $T/empty/usr/include/cjson/cJSON.h"
has "empty root says how to install" "$T/empty.out" 'run `make deps` or `sh tools/install-deps.sh` as root'

# Everything but cJSON: only libcjson-dev is named.
for f in usr/include/stdio.h usr/include/x86_64-linux-gnu/openblas-openmp/cblas.h \
    usr/lib/x86_64-linux-gnu/openblas-openmp/libopenblas.so usr/include/lapack.h usr/include/pcre2.h \
    usr/lib/x86_64-linux-gnu/libpcre2-8.so; do
    mkdir -p "$T/part/$(dirname "$f")" && : >"$T/part/$f"
done
OZ_DEPS_ROOT="$T/part" sh tools/check-deps.sh >"$T/part.out" 2>&1
status "root without cJSON fails" $? 1 "$T/part.out"
has "root without cJSON names libcjson-dev" "$T/part.out" "^  missing: libcjson-dev (cJSON headers: .*; cJSON library: "
[ "$(grep -c '^  missing:' "$T/part.out")" -eq 1 ] && ok "root without cJSON names nothing else" ||
    bad "root without cJSON names nothing else: $(cat "$T/part.out")"

CC="$T/no-such-cc" sh tools/check-deps.sh >"$T/cc.out" 2>&1
status "missing compiler fails" $? 1 "$T/cc.out"
has "missing compiler is named" "$T/cc.out" "^  missing: build-essential (a C compiler: $T/no-such-cc)"

NVCC="$T/cuda/bin/nvcc" CUDA_HOME="$T/cuda" sh tools/check-deps.sh --cuda >"$T/cuda.out" 2>&1
status "CUDA=1 without a toolkit fails" $? 1 "$T/cuda.out"
has "CUDA=1 without a toolkit names nvcc" "$T/cuda.out" "missing: CUDA toolkit 12 (nvcc: $T/cuda/bin/nvcc"

# Through make: the list, and no compiler run (no object, no compiler diagnostic).
make --no-print-directory BUILD="$T/b1" OZ_DEPS_ROOT="$T/empty" "$T/b1/src/util/err.o" >"$T/make.out" 2>&1
rc=$?
[ "$rc" -ne 0 ] && ok "make stops" || bad "make stops: exit 0"
has "make names the missing package" "$T/make.out" "^  missing: libcjson-dev ("
hasnt "make does not reach the compiler" "$T/make.out" "error:\|  CC  "
[ ! -e "$T/b1/src/util/err.o" ] && [ ! -e "$T/b1/.deps-ok" ] && ok "make built nothing" || bad "make built nothing"

# With the packages there the check passes once, leaves its stamp, and compiling goes on; later
# builds in that directory do not check again.
make --no-print-directory BUILD="$T/b2" "$T/b2/src/util/err.o" >"$T/make2.out" 2>&1
status "make compiles when all is there" $? 0 "$T/make2.out"
[ -e "$T/b2/.deps-ok" ] && [ -e "$T/b2/src/util/err.o" ] && ok "stamp and object" || bad "stamp and object: $(ls -a "$T/b2")"
make --no-print-directory BUILD="$T/b2" OZ_DEPS_ROOT="$T/empty" "$T/b2/src/util/rng.o" >"$T/make3.out" 2>&1
status "the check runs once per build directory" $? 0 "$T/make3.out"

echo "test_deps: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
