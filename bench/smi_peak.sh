# Sourced by the GPU benchmarks. smi_peak CMD...: runs CMD and sets SMI_PEAK to the most memory in
# use on GPU 0 while it ran (MiB, nvidia-smi sampled every 100 ms); needs $TMP. Returns CMD's status.
smi_peak() {
    ( while :; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 2>/dev/null; sleep 0.1; done ) \
        >"$TMP/smi" &
    sampler=$!
    "$@"
    rc=$?
    kill "$sampler" 2>/dev/null
    wait "$sampler" 2>/dev/null
    SMI_PEAK=$(sort -n "$TMP/smi" | tail -n 1)
    return $rc
}
