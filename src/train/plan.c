/* Memory planner: model buffers (oz_llama_plan_memory) + optimizer state. */
#include "train/plan.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "optim/optimizer.h"
#include "train/inrank.h"

oz_status oz_train_plan_memory(const oz_llama_config *cfg, const oz_train_opts *o, oz_train_plan *plan,
                               oz_err *err) {
    memset(plan, 0, sizeof *plan);
    bool cuda = oz_backend_is_cuda(o->device);
    if (strcmp(o->device, "cpu") != 0 && !cuda)
        return oz_fail(err, OZ_ERR_INPUT, "--device %s is not known (choose: cpu, cuda)", o->device);
    if (o->batch <= 0 || o->seq <= 1)
        return oz_fail(err, OZ_ERR_INPUT, "--batch must be positive and --seq at least 2 (got %d, %d)", o->batch,
                       o->seq);
    oz_llama_config c = *cfg;
    if (c.max_position_embeddings < o->seq) c.max_position_embeddings = o->seq; /* as the trainer does for presets */
    /* InRank stores its target matrices as factors at rank min(in, out)/2 (stage 1); a config that
     * is already low-rank (a run after its freeze) is planned as it is. */
    oz_inrank_settings irs;
    OZ_TRY(oz_inrank_settings_from_opts(o, &irs, err));
    if (o->inrank) oz_inrank_factorize_config(&c, &irs);
    oz_optim_config oc;
    OZ_TRY(oz_train_configure(o, &c, &plan->shape, &oc, err));
    oz_llama_plan mp;
    OZ_TRY(oz_llama_plan_memory(&c, plan->shape, &mp, err));
    memcpy(plan->bytes, mp.bytes, sizeof plan->bytes);
    plan->host_bytes = mp.host_bytes;
    oz_param_layout lay;
    OZ_TRY(oz_param_layout_build(&c, &lay, err));
    oz_param_layout_freeze(&lay, plan->shape.freeze); /* frozen tensors have no optimizer state */
    size_t opt_bytes[OZ_MEM_NCATEGORIES];
    oz_optimizer_plan(&oc, &lay, cuda, opt_bytes);
    oz_param_layout_free(&lay);
    for (int i = 0; i < OZ_MEM_NCATEGORIES; i++) plan->bytes[i] += opt_bytes[i];
    /* The CUDA backend allocates the same buffers (fp32, one arena; the subspace workspace planned
     * for the GPU above) plus its own workspace. */
    if (cuda) plan->bytes[OZ_MEM_SCRATCH] += OZ_CUDA_WORKSPACE_BYTES;
    if (o->inrank) plan->bytes[OZ_MEM_SCRATCH] += oz_inrank_check_bytes(&c); /* a rank check's host workspace */
    for (int i = 0; i < OZ_MEM_NCATEGORIES; i++) plan->total += plan->bytes[i];
    return OZ_OK;
}

int oz_train_plan_max_seq(const oz_llama_config *cfg, const oz_train_opts *o, size_t budget, int limit) {
    oz_train_opts probe = *o;
    int lo = 0, hi = limit; /* invariant: lo fits (or is 0), anything > hi does not matter */
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        probe.seq = mid;
        oz_train_plan p;
        oz_err err = {0};
        bool fits = mid >= 2 && oz_train_plan_memory(cfg, &probe, &p, &err) == OZ_OK && p.total <= budget;
        if (fits) lo = mid;
        else hi = mid - 1;
    }
    return lo >= 2 ? lo : 0;
}

size_t oz_parse_bytes(const char *text) {
    char *end;
    double v = strtod(text, &end);
    if (end == text || !(v > 0) || !isfinite(v)) return 0;
    while (isspace((unsigned char)*end)) end++;
    static const struct {
        const char *suffix;
        double mult;
    } units[] = {{"", 1},          {"B", 1},          {"K", 1024.0},     {"KiB", 1024.0},   {"KB", 1e3},
                 {"M", 1048576.0}, {"MiB", 1048576.0}, {"MB", 1e6},     {"G", 1073741824.0}, {"GiB", 1073741824.0},
                 {"GB", 1e9},      {"T", 1099511627776.0}, {"TiB", 1099511627776.0}, {"TB", 1e12}};
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcmp(end, units[i].suffix) != 0) continue;
        /* Converting a double at or past 2^64 to size_t is undefined: such a size is no size. */
        double bytes = v * units[i].mult;
        return bytes < 0x1p64 ? (size_t)bytes : 0;
    }
    return 0;
}
