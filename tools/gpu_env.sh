# Sourced by the device checks (tools/gpu_optim_check.sh, tools/gpu_models_check.sh) from their own
# directory: the repository root as working directory, $OUT made, tools/gpu_dist.sh's gpu-dist.tgz
# unpacked when it came without its directory, its libraries first on the loader's path, O the
# ounce binary and T a fresh scratch directory.
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
[ -f gpu-dist.tgz ] && [ ! -d gpu-dist ] && tar xzf gpu-dist.tgz
export LD_LIBRARY_PATH="$PWD/gpu-dist/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
O=gpu-dist/ounce
T=$(mktemp -d)
