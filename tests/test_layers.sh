#!/bin/sh
# tools/check_layers.sh against small fake src/ trees: a clean one must pass, and each kind of
# violation (an upward include, util including mem, a header cycle, a .c/.h unit cycle, a folder
# outside the order, a quoted include of nothing) must fail with its own line. A layer check that
# cannot fail would let the layers drift unseen. Ends with "test_layers: N passed, M failed".
CHECK=${CHECK:-tools/check_layers.sh}
export OZ_LAYERS_KNOWN="" # the real tree's known cycles are not in these trees
T=$(mktemp -d /tmp/ounce-layers.XXXXXX)
trap 'rm -rf "$T"' EXIT
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   $1"; }
bad() { failed=$((failed + 1)); echo "FAIL $1"; }

put() { # put FILE LINE...: writes a file of the fake tree, one argument a line
    f=$T/$1; shift
    mkdir -p "$(dirname "$f")"
    printf '%s\n' "$@" >"$f"
}
# run NAME: checks the tree in $T/src, keeping its output in $T/NAME.out and its status in rc
run() { sh "$CHECK" "$T/src" >"$T/$1.out" 2>&1; rc=$?; }
# expect NAME RC PATTERN: the last run exited RC and printed a line matching PATTERN
expect() {
    if [ "$rc" -eq "$2" ] && grep -q -- "$3" "$T/$1.out"; then ok "$1"
    else bad "$1 (rc=$rc, wanted $2 and /$3/): $(head -c 600 "$T/$1.out")"; fi
}

clean_tree() {
    rm -rf "$T/src"
    put src/util/err.h '#include <stdio.h>'
    put src/util/err.c '#include "util/err.h"'
    put src/mem/arena.h '#include "util/err.h"'
    put src/numeric/quant.h '#include <stdint.h>' '#include "mem/arena.h"'
    put src/io/atomic.h '#include "util/err.h"'
    put src/backend/backend.h '#include "numeric/quant.h"' '#include "io/atomic.h"'
    put src/backend/cuda/kern_internal.h '#include "backend/backend.h"'
    put src/backend/cuda/kern.cu '#include "kern_internal.h"' '#include <cuda_runtime.h>'
    put src/data/tok.h '#include "util/err.h"'
    put src/data/tok_internal.h '#include "data/tok.h"'
    put src/data/tok.c '#include "data/tok_internal.h"'
    put src/model/llama.h '#include "backend/backend.h"' '#include "data/tok.h"'
    put src/optim/opt.h '#  include "model/llama.h"'
    put src/train/train.h '#include "optim/opt.h"'
    put src/cli/cli.h '#include "train/train.h"'
    put src/main.c '#include "cli/cli.h"'
}

clean_tree
run clean
expect clean 0 "follows the layer order, no include cycles$"
[ "$(wc -l <"$T/clean.out")" -eq 1 ] && ok "clean: one line" || bad "clean: one line: $(cat "$T/clean.out")"

clean_tree
put src/numeric/quant.c '#include "numeric/quant.h"' '' '#include "model/llama.h"'
run upward
expect upward 1 "src/numeric/quant.c:3: includes model/llama.h (layer model is above numeric)$"

clean_tree
put src/util/err.c '#include "util/err.h"' '#include "mem/arena.h"'
run util_mem
expect util_mem 1 "src/util/err.c:2: includes mem/arena.h (layer mem is above util)"

clean_tree
put src/io/atomic.c '#include <model/llama.h>'
run angled
expect angled 1 "src/io/atomic.c:1: includes model/llama.h (layer model is above io)"

clean_tree
put src/backend/cuda/kern.cu '#include "kern_internal.h"' '#include "optim/opt.h"'
run cuda
expect cuda 1 "kern.cu:2: includes optim/opt.h (layer optim is above backend)"

clean_tree
put src/data/p.h '#include "data/q.h"'
put src/data/q.h '#include "data/p.h"'
run header_cycle
expect header_cycle 1 "^cycle: .*src/data/p.h:1 includes data/q.h, then .*src/data/q.h:1 includes data/p.h"

clean_tree
put src/data/a.h '#include "data/b.h"'
put src/data/b.c '#include "data/b.h"' '#include "data/a.h"'
put src/data/b.h '#include <stddef.h>'
run unit_cycle
expect unit_cycle 1 "^cycle: .*src/data/a.h:1 includes data/b.h, then .*src/data/b.c:2 includes data/a.h"

clean_tree
put src/extra/thing.c '#include "util/err.h"'
put src/extra/thing.h '#include "util/err.h"'
run folder
expect folder 1 "folder extra/ has no place in the layer order"
grep -q "check_layers: 1 problem in" "$T/folder.out" && ok "folder: said once" || bad "folder: said once: $(cat "$T/folder.out")"

clean_tree
put src/model/llama.c '#include "model/no_such.h"'
run missing
expect missing 1 "src/model/llama.c:1: includes \"model/no_such.h\", which is not a header"

# A listed known cycle is printed and passes; once it is gone, the stale entry fails.
clean_tree
put src/data/p.h '#include "data/q.h"'
put src/data/q.h '#include "data/p.h"'
OZ_LAYERS_KNOWN="data/p data/q" run known
expect known 0 "^known cycle (to remove): "
clean_tree
OZ_LAYERS_KNOWN="data/p data/q" run stale
expect stale 1 "known cycle \"data/p data/q\" is gone"

# Every problem is reported, not just the first.
clean_tree
put src/model/plain.h '#include <stddef.h>'
put src/numeric/quant.c '#include "model/plain.h"'
put src/data/p.h '#include "data/q.h"'
put src/data/q.h '#include "data/p.h"'
run both
expect both 1 "check_layers: 2 problems"
grep -q "quant.c:1: includes model/plain.h" "$T/both.out" && grep -q "^cycle: " "$T/both.out" && ok "both: each named" ||
    bad "both: each named: $(cat "$T/both.out")"

rc=0
sh "$CHECK" "$T/nonexistent" >"$T/usage.out" 2>&1 || rc=$?
expect usage 2 "no directory"

echo "test_layers: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
