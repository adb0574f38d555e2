#!/bin/sh
# Checks that the include graph of src/ points downward, in this layer order (lowest first):
#
#     util, mem < numeric < io < backend < data < model < optim < train < report < cli < main.c
#
# A file in layer X (its first folder under src/; backend/cpu and backend/cuda are backend, and a
# file directly in src/ such as main.c is the top) may include headers of its own layer or of lower
# ones. util includes nothing else of the project; mem may include util. There must also be no
# include cycle between files, counting x.c, x.h and x_internal.h (x's private half) as one unit:
# bpe.h including tokenizer.h while tokenizer.c includes bpe.h is a cycle although no header
# includes itself.
#
# Prints one line per violation and exits 1 on any, 0 on a clean tree, 2 on a usage error.
# usage: tools/check_layers.sh [SRC_DIR]   (default: src; tests/test_layers.sh feeds it fake trees)
src=${1:-src}
src=${src%/}
if [ ! -d "$src" ]; then
    echo "check_layers: no directory $src" >&2
    exit 2
fi
ORDER="util mem numeric io backend data model optim train report cli"
# Cycles that exist and are to be removed (none today), each as its units in sorted order, ";" between cycles.
# They are printed but do not fail the check; a new cycle does, and so does one of these once it
# is gone (then delete it here, so the list never outlives what it excuses). OZ_LAYERS_KNOWN
# overrides the list (the self-test uses it).
KNOWN=${OZ_LAYERS_KNOWN-""}

# One "file line target" record per project include. Quoted and angled includes both count when
# the name is found the way the compiler finds it (beside the file, then under -Isrc); other quoted
# names are reported, an angled one is a system header.
find "$src" -type f \( -name '*.c' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \) | LC_ALL=C sort |
while IFS= read -r f; do
    grep -n -E '^[[:space:]]*#[[:space:]]*include[[:space:]]*["<][^">]+[">]' "$f" |
    sed -E 's/^([0-9]+):[[:space:]]*#[[:space:]]*include[[:space:]]*(["<])([^">]+)[">].*/\1 \2 \3/' |
    while read -r line kind name; do
        dir=${f%/*}
        if [ "$kind" = '"' ] && [ -f "$dir/$name" ]; then target="$dir/$name"
        elif [ -f "$src/$name" ]; then target="$src/$name"
        elif [ "$kind" = '"' ]; then target="?$name"
        else continue
        fi
        printf '%s %s %s %s\n' "$f" "$line" "$target" "$name"
    done
done | awk -v src="$src" -v order="$ORDER" -v known="$KNOWN" '
function norm(p,    n, a, out, i, k) { # folds "x/../" and "./" so one header has one name
    n = split(p, a, "/"); k = 0
    for (i = 1; i <= n; i++) {
        if (a[i] == "." || a[i] == "") continue
        if (a[i] == ".." && k > 0 && seg[k] != "..") { k--; continue }
        seg[++k] = a[i]
    }
    out = ""
    for (i = 1; i <= k; i++) out = out (i > 1 ? "/" : "") seg[i]
    return out
}
function rel(p) { p = norm(p); return index(p, srcn "/") == 1 ? substr(p, length(srcn) + 2) : p }
function layer(r) { return index(r, "/") ? substr(r, 1, index(r, "/") - 1) : "(top)" }
function unit(r) { sub(/\.(c|h|cu|cuh)$/, "", r); sub(/_internal$/, "", r); return r }
function isort(a, n,    i, k, x) { # sorts a[1..n] in place
    for (i = 2; i <= n; i++) {
        x = a[i]
        for (k = i - 1; k >= 1 && a[k] > x; k--) a[k + 1] = a[k]
        a[k + 1] = x
    }
}
function sorted_members(j0, j1,    a, i, n, t) { # the units stack[j0..j1], sorted, space-joined
    n = 0
    for (i = j0; i <= j1; i++) a[++n] = stack[i]
    isort(a, n)
    t = ""
    for (i = 1; i <= n; i++) t = t (i > 1 ? " " : "") a[i]
    return t
}
function dfs(u,    i, v, j, j0, path, nxt, key) {
    color[u] = 1; stack[++depth] = u
    for (i = 1; i <= nout[u]; i++) {
        v = out[u, i]
        if (color[v] == 1) { # a back edge closes a cycle: print it with the include that makes each step
            path = ""
            for (j0 = depth; j0 >= 1 && stack[j0] != v; j0--);
            for (j = j0; j <= depth; j++) {
                nxt = j < depth ? stack[j + 1] : v
                path = path (path == "" ? "" : ", then ") why[stack[j], nxt]
            }
            key = sorted_members(j0, depth)
            if (key in allowed) { print "known cycle (to remove): " path; seen[key] = 1; nknown++ }
            else { print "cycle: " path; bad++ }
        } else if (!color[v]) dfs(v)
    }
    depth--; color[u] = 2
}
BEGIN {
    srcn = norm(src)
    n = split(order, o, " ")
    for (i = 1; i <= n; i++) rank[o[i]] = i
    rank["(top)"] = n + 1
    nk = split(known, k, ";")
    for (i = 1; i <= nk; i++) if (k[i] != "") allowed[k[i]] = 1
    bad = 0
}
{
    file = $1; line = $2; target = $3; name = $4
    fr = rel(file)
    if (substr(target, 1, 1) == "?") {
        print file ":" line ": includes \"" name "\", which is not a header under " src "/"
        bad++; next
    }
    tr = rel(target)
    fl = layer(fr); tl = layer(tr)
    if (!(fl in rank)) {
        if (!(fl in told)) {
            print file ": folder " fl "/ has no place in the layer order (add it to tools/check_layers.sh)"
            told[fl] = 1; bad++
        }
        next
    }
    if (!(tl in rank)) next # reported once as a file of its own folder
    if (rank[tl] > rank[fl]) {
        print file ":" line ": includes " name " (layer " tl " is above " fl ")"
        bad++
    }
    u = unit(fr); v = unit(tr)
    if (u != v && !((u, v) in why)) {
        why[u, v] = file ":" line " includes " name
        out[u, ++nout[u]] = v
        nodes[u] = 1; nodes[v] = 1
    }
}
END {
    # Sorted start order, so the same tree always reports the same cycles.
    m = 0
    for (u in nodes) list[++m] = u
    isort(list, m)
    for (i = 1; i <= m; i++) if (!color[list[i]]) dfs(list[i])
    for (key in allowed) if (!(key in seen)) {
        print "known cycle \"" key "\" is gone: delete it from KNOWN in tools/check_layers.sh"
        bad++
    }
    if (bad) {
        print "check_layers: " bad " problem" (bad > 1 ? "s" : "") " in " src "/ (order: " order \
              ", then files in " src "/ itself)"
        exit 1
    }
    print "check_layers: " src "/ follows the layer order, no include cycles" \
          (nknown ? " but the " nknown " known above" : "")
}'
