#!/bin/sh
# Checks that what the build needs is installed, before anything is compiled, so a missing package
# is one line naming it instead of a compiler error about a header. The Makefile runs it once per
# build directory and passes the paths it compiles and links with (the defaults below are the same
# Debian 12 paths); tools/install-deps.sh installs what it names.
#   --cuda   also check the CUDA toolkit (make CUDA=1)
# Environment: CC, OPENBLAS_INC, OPENBLAS_DIR, CJSON_INC, LIBDIR, NVCC, CUDA_HOME as in the Makefile;
# OZ_DEPS_ROOT is put in front of every file path (tests point it at an empty directory to see
# every package reported missing without uninstalling anything).
# Exits 0 when all is there, 1 (with the list on stderr) otherwise.
root=${OZ_DEPS_ROOT:-}
CC=${CC:-cc}
OPENBLAS_INC=${OPENBLAS_INC:-/usr/include/x86_64-linux-gnu/openblas-openmp}
OPENBLAS_DIR=${OPENBLAS_DIR:-/usr/lib/x86_64-linux-gnu/openblas-openmp}
CJSON_INC=${CJSON_INC:-/usr/include/cjson}
LIBDIR=${LIBDIR:-/usr/lib/x86_64-linux-gnu}
cuda=0
[ "${1:-}" = "--cuda" ] && cuda=1

missing=""  # one "package|what" entry per line, in the order found
note() { missing="$missing$1|$2
"; }
# need PACKAGE WHAT FILE: FILE (under OZ_DEPS_ROOT) must exist
need() { [ -e "$root$3" ] || note "$1" "$2: $root$3"; }

if command -v "$CC" >/dev/null 2>&1; then
    # omp.h ships inside the compiler (gcc's libgomp headers), so ask the compiler itself.
    if [ -z "$root" ] && ! echo '#include <omp.h>' | "$CC" -fopenmp -E -x c - >/dev/null 2>&1; then
        note build-essential "OpenMP support in $CC (-fopenmp, omp.h)"
    fi
else
    note build-essential "a C compiler: $CC"
fi
need build-essential "C library headers" /usr/include/stdio.h
need libopenblas-openmp-dev "OpenBLAS (OpenMP build) headers" "$OPENBLAS_INC/cblas.h"
need libopenblas-openmp-dev "OpenBLAS (OpenMP build) library" "$OPENBLAS_DIR/libopenblas.so"
need liblapacke-dev "LAPACK declarations" /usr/include/lapack.h
need libcjson-dev "cJSON headers" "$CJSON_INC/cJSON.h"
need libcjson-dev "cJSON library" "$LIBDIR/libcjson.so"
need libpcre2-dev "PCRE2 headers" /usr/include/pcre2.h
need libpcre2-dev "PCRE2 library" "$LIBDIR/libpcre2-8.so"
if [ "$cuda" -eq 1 ]; then
    NVCC=${NVCC:-/usr/local/cuda/bin/nvcc}
    CUDA_HOME=${CUDA_HOME:-${NVCC%/bin/nvcc}}
    command -v "$NVCC" >/dev/null 2>&1 || note "CUDA toolkit 12" "nvcc: $NVCC (set NVCC= or CUDA_HOME=)"
    need "CUDA toolkit 12" "cuBLAS headers" "$CUDA_HOME/include/cublas_v2.h"
    need "CUDA toolkit 12" "cuSOLVER headers" "$CUDA_HOME/include/cusolverDn.h"
fi

[ -z "$missing" ] && exit 0
{
    echo "ounce: cannot build, these are missing:"
    # One line per package: the package, then what of it was not found.
    printf '%s' "$missing" | awk -F'|' '
        !($1 in what) { order[++n] = $1; what[$1] = $2; next }
        { what[$1] = what[$1] "; " $2 }
        END { for (i = 1; i <= n; i++) print "  missing: " order[i] " (" what[order[i]] ")" }'
    if printf '%s' "$missing" | grep -q '^CUDA'; then
        echo "  the CUDA toolkit is not a Debian package here: install CUDA 12 from NVIDIA, or build without CUDA=1"
    fi
    if printf '%s' "$missing" | grep -q -v '^CUDA'; then
        echo "  run \`make deps\` or \`sh tools/install-deps.sh\` as root (Debian 12) to install them"
    fi
} >&2
exit 1
