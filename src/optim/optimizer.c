/* The optimizer kinds (one traits row each), their slots and memory plan, and the step protocol
 * (optimizer.h). The GaLore maths is in galore.c, the state files in optimizer_state.c. */
#include "optim/optimizer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "numeric/subspace.h"
#include "optim/optimizer_internal.h"


static const oz_optim_traits kind_traits[] = {
    [OZ_OPTIM_ADAMW] = {"adamw", false, false, false, false, 32},
    [OZ_OPTIM_ADAMW8BIT] = {"adamw8bit", false, true, false, false, 32},
    [OZ_OPTIM_GALORE] = {"galore", true, false, false, false, 32},
    [OZ_OPTIM_GALORE8BIT] = {"galore8bit", true, true, false, false, 32},
    [OZ_OPTIM_QGALORE] = {"qgalore", true, true, true, true, 4},
};
#define N_KINDS ((int)(sizeof kind_traits / sizeof kind_traits[0]))

const oz_optim_traits *oz_optim_traits_of(oz_optim_kind kind) {
    return (unsigned)kind < (unsigned)N_KINDS ? &kind_traits[kind] : &kind_traits[OZ_OPTIM_ADAMW];
}

static const char *const proj_names[] = {"std", "reverse_std", "left", "right", "full"};
static const char *const switch_names[] = {"keep", "reset", "rotate"};

/* Index of `name` in `names`, or -1. */
static int name_index(const char *const *names, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (strcmp(name, names[i]) == 0) return i;
    return -1;
}

#define PARSE_ENUM(names, type, out)                                    \
    do {                                                                \
        int i_ = name_index(names, (int)(sizeof names / sizeof names[0]), name); \
        if (i_ < 0) return false;                                       \
        *(out) = (type)i_;                                              \
        return true;                                                    \
    } while (0)

bool oz_optim_kind_parse(const char *name, oz_optim_kind *kind) {
    for (int i = 0; i < N_KINDS; i++)
        if (strcmp(name, kind_traits[i].name) == 0) {
            *kind = (oz_optim_kind)i;
            return true;
        }
    return false;
}
bool oz_proj_type_parse(const char *name, oz_proj_type *proj) { PARSE_ENUM(proj_names, oz_proj_type, proj); }
bool oz_switch_mode_parse(const char *name, oz_switch_mode *mode) { PARSE_ENUM(switch_names, oz_switch_mode, mode); }

const char *oz_optim_kind_name(oz_optim_kind kind) {
    return (unsigned)kind < (unsigned)N_KINDS ? kind_traits[kind].name : "?";
}

/* ---------------------------------------------------------------- slot shapes */

static bool is_galore_target(const oz_optim_config *c, const oz_param_info *p) {
    if (!oz_optim_traits_of(c->kind)->galore) return false;
    bool attn = p->kind == OZ_P_Q || p->kind == OZ_P_K || p->kind == OZ_P_V || p->kind == OZ_P_O;
    bool mlp = p->kind == OZ_P_GATE || p->kind == OZ_P_UP || p->kind == OZ_P_DOWN;
    return (attn && c->galore_attn) || (mlp && c->galore_mlp);
}

static void shape_slot(const oz_optim_config *c, const oz_param_info *p, int index, slot *s) {
    memset(s, 0, sizeof *s);
    s->index = index;
    s->p = p;
    s->frozen = p->frozen;
    if (s->frozen) return;
    s->galore = is_galore_target(c, p) && c->rank > 0;
    if (s->galore) {
        s->a = (int)p->shape[0];
        s->b = (int)p->shape[1];
        s->r = oz_subspace_rank(s->a, s->b, c->rank);
        bool tall = s->a >= s->b;
        switch (c->proj) {
        case OZ_PROJ_STD: s->side = tall ? SIDE_RIGHT : SIDE_LEFT; break;
        case OZ_PROJ_REVERSE_STD: s->side = tall ? SIDE_LEFT : SIDE_RIGHT; break;
        case OZ_PROJ_LEFT: s->side = SIDE_LEFT; break;
        case OZ_PROJ_RIGHT: s->side = SIDE_RIGHT; break;
        case OZ_PROJ_FULL: s->side = SIDE_FULL; break;
        }
        s->n = s->side == SIDE_LEFT    ? (size_t)s->r * s->b
               : s->side == SIDE_RIGHT ? (size_t)s->a * s->r
                                       : (size_t)s->r * s->r;
    } else {
        s->a = (int)p->numel;
        s->b = 1;
        s->n = p->numel;
    }
    s->q8 = oz_optim_traits_of(c->kind)->moments_8bit && s->n >= OZ_Q8_MIN_SIZE;
    s->factored = s->galore && c->grads.immediate && oz_param_factored(p, c->grads.factored);
}

typedef void (*want_fn)(void *ctx, void **dest, oz_mem_category cat, size_t bytes, const char *what);

/* Every buffer slot s owns, in one place, so creation and the plan cannot disagree. */
static void slot_buffers(const oz_optim_config *c, slot *s, want_fn want, void *ctx) {
    size_t f = sizeof(float);
    if (s->frozen) return;
    if (s->galore) {
        size_t ar = (size_t)s->a * s->r, rb = (size_t)s->r * s->b;
        if (c->proj_bits == 4) {
            if (s->side != SIDE_RIGHT) {
                want(ctx, (void **)&s->Pq, OZ_MEM_PROJ, (ar + 1) / 2, "GaLore basis P (INT4)");
                want(ctx, (void **)&s->Ps, OZ_MEM_QSCALES, oz_qw_groups(ar) * f, "basis P scales");
                want(ctx, (void **)&s->Pz, OZ_MEM_QSCALES, oz_qw_groups(ar), "basis P zero points");
            }
            if (s->side != SIDE_LEFT) {
                want(ctx, (void **)&s->Qq, OZ_MEM_PROJ, (rb + 1) / 2, "GaLore basis Q (INT4)");
                want(ctx, (void **)&s->Qs, OZ_MEM_QSCALES, oz_qw_groups(rb) * f, "basis Q scales");
                want(ctx, (void **)&s->Qz, OZ_MEM_QSCALES, oz_qw_groups(rb), "basis Q zero points");
            }
        } else {
            if (s->side != SIDE_RIGHT) want(ctx, (void **)&s->P, OZ_MEM_PROJ, ar * f, "GaLore basis P");
            if (s->side != SIDE_LEFT) want(ctx, (void **)&s->Q, OZ_MEM_PROJ, rb * f, "GaLore basis Q");
        }
        if (c->lazy) want(ctx, (void **)&s->v1, OZ_MEM_PROJ, (size_t)first_vector_len(s) * f, "first basis vector");
        /* immediate updates apply each gradient as it is taken: no accumulator */
        if (!c->grads.immediate) want(ctx, (void **)&s->racc, OZ_MEM_GRADS, s->n * f, "projected gradient");
    } else if (c->grads.per_layer && s->p->layer >= 0 && !c->grads.immediate) {
        want(ctx, (void **)&s->gacc, OZ_MEM_GRADS, s->n * f, "gradient accumulator");
    }
    if (s->q8) {
        size_t blocks = oz_q8_blocks(s->n);
        want(ctx, (void **)&s->mq, OZ_MEM_OPTIM, s->n, "8-bit first moment");
        want(ctx, (void **)&s->vq, OZ_MEM_OPTIM, s->n, "8-bit second moment");
        want(ctx, (void **)&s->ma, OZ_MEM_QSCALES, blocks * f, "first-moment block scales");
        want(ctx, (void **)&s->va, OZ_MEM_QSCALES, blocks * f, "second-moment block scales");
    } else {
        want(ctx, (void **)&s->m, OZ_MEM_OPTIM, s->n * f, "first moment");
        want(ctx, (void **)&s->v, OZ_MEM_OPTIM, s->n * f, "second moment");
    }
}

/* Scratch sizes shared by all slots: each the largest any slot really uses. */
typedef struct {
    size_t n, work, c, basis, workspace, delta;
    size_t fac; /* factored projections: (tokens, r), twice for full */
    size_t rot; /* the rotation buffer, also where lazy updates stage a first basis vector */
} scratch_sizes;

static size_t delta_rows(const oz_optim_config *c, const slot *s) { return block_rows(c, s, 0); }

static void scratch_of(const oz_optim_config *c, const slot *s, bool gpu, scratch_sizes *z) {
    if (!s->galore) return;
    size_t ar = (size_t)s->a * s->r, rb = (size_t)s->r * s->b;
    /* work: the full projection's intermediate (P^T G, or P u), and the first moment while 8-bit
     * moments rotate; one-sided projections never touch it. */
    size_t work = s->side == SIDE_FULL ? (ar > rb ? ar : rb) : 0;
    if (c->at_switch == OZ_SWITCH_ROTATE && s->q8 && s->n > work) work = s->n;
    if (s->n > z->n) z->n = s->n;
    /* rotate: m and v pass through it (n); lazy updates: the first vector plus the 1.0 its
     * gather multiplies by (lazy_observe). */
    size_t rot = c->at_switch == OZ_SWITCH_ROTATE ? s->n : 0;
    if (c->lazy && (size_t)first_vector_len(s) + 1 > rot) rot = (size_t)first_vector_len(s) + 1;
    if (rot > z->rot) z->rot = rot;
    if (work > z->work) z->work = work;
    if (c->at_switch == OZ_SWITCH_ROTATE && (size_t)2 * s->r * s->r > z->c) z->c = (size_t)2 * s->r * s->r;
    if (basis_len(s) > z->basis) z->basis = basis_len(s);
    if (c->int8_weights && delta_rows(c, s) * s->b > z->delta) z->delta = delta_rows(c, s) * s->b;
    size_t fac = s->factored ? (size_t)c->grads.tokens * s->r * (s->side == SIDE_FULL ? 2 : 1) : 0;
    if (fac > z->fac) z->fac = fac;
    /* The subspace call's workspace: LAPACK's host malloc on the CPU, device scratch on a GPU
     * (with the factored range finder's (tokens, l) intermediate for a factored matrix). */
    size_t ws = s->factored ? (gpu ? oz_subspace_device_factored_workspace_bytes(1, s->a, s->b, s->r, c->grads.tokens)
                                   : oz_subspace_factored_workspace_bytes(s->a, s->b, s->r, c->grads.tokens))
                : gpu ? oz_subspace_device_workspace_bytes(1, s->a, s->b, s->r, c->subspace)
                      : oz_subspace_workspace_bytes(s->a, s->b, s->r, c->subspace);
    if (ws > z->workspace) z->workspace = ws;
}

/* The update buffers (u; the immediate projected gradient rimm; the INT8 update block delta; the
 * dequantized INT4 basis deq; the factored projection's intermediates fac) and a GPU's subspace
 * workspace are never live together: the workspace exists only inside a refresh's subspace calls,
 * which come before the old basis is read again (lazy cosines, moment rotation: after the calls)
 * and before the gradient is projected into rimm and the update built in u and delta. One pool
 * holds whichever is larger. fac lives only while a factored gradient is projected (into rimm,
 * with deq's basis), delta only while the update is built (from u, with deq's basis): they share
 * the pool's tail, and delta takes all of it, the slack a larger workspace leaves included, so
 * the INT8 update of a matrix without a gradient buffer to build it in needs few GEMMs. The
 * CPU's workspace is LAPACK's own malloc, outside it. */
typedef struct {
    size_t u, rimm, delta, deq, bytes; /* byte offsets (fac: at delta); the pool's size */
} pool_layout;

static size_t align256(size_t bytes) { return (bytes + 255) / 256 * 256; }

static pool_layout pool_of(const oz_optim_config *c, const scratch_sizes *z, bool gpu) {
    pool_layout p = {0, 0, 0, 0, 0};
    size_t f = sizeof(float), cur = align256(z->n * f);
    if (c->grads.immediate) p.rimm = cur, cur += align256(z->n * f);
    if (c->proj_bits == 4) p.deq = cur, cur += align256(z->basis * f);
    size_t tail = (c->int8_weights ? z->delta : 0) > z->fac ? z->delta : z->fac;
    p.delta = cur, cur += align256(tail * f);
    p.bytes = gpu && z->workspace > cur ? z->workspace : cur;
    return p;
}

static void plan_want(void *ctx, void **dest, oz_mem_category cat, size_t bytes, const char *what) {
    (void)dest;
    (void)what;
    ((size_t *)ctx)[cat] += bytes;
}

void oz_optimizer_plan(const oz_optim_config *c, const oz_param_layout *layout, bool gpu,
                       size_t bytes[OZ_MEM_NCATEGORIES]) {
    memset(bytes, 0, OZ_MEM_NCATEGORIES * sizeof *bytes);
    scratch_sizes z = {0};
    for (int i = 0; i < layout->n; i++) {
        slot s;
        shape_slot(c, &layout->params[i], i, &s);
        slot_buffers(c, &s, plan_want, bytes);
        scratch_of(c, &s, gpu, &z);
    }
    size_t f = sizeof(float);
    if (z.n) {
        bytes[OZ_MEM_SCRATCH] += (z.rot + z.work + z.c + z.basis) * f + pool_of(c, &z, gpu).bytes;
        if (!gpu) bytes[OZ_MEM_SCRATCH] += z.workspace; /* LAPACK's, while a subspace call runs */
    }
}

/* ---------------------------------------------------------------- create / destroy */

typedef struct {
    oz_optimizer *opt;
    oz_status st;
    oz_err *err;
} alloc_ctx;

static void alloc_want(void *ctx, void **dest, oz_mem_category cat, size_t bytes, const char *what) {
    alloc_ctx *a = ctx;
    if (a->st != OZ_OK) return;
    oz_optimizer *o = a->opt;
    if (o->n_owned == o->cap_owned) {
        int cap = o->cap_owned ? 2 * o->cap_owned : 64;
        void **grown = realloc(o->owned, (size_t)cap * sizeof *grown);
        if (!grown) {
            a->st = oz_fail(a->err, OZ_ERR_NOMEM, "out of memory creating the optimizer");
            return;
        }
        o->owned = grown;
        o->cap_owned = cap;
    }
    if (bytes == 0) return; /* a buffer this configuration never uses (the plan adds 0 too) */
    a->st = oz_arena_alloc(o->arena, cat, bytes, what, dest, a->err);
    if (a->st == OZ_OK) o->owned[o->n_owned++] = *dest;
}

oz_status oz_optimizer_create(oz_optimizer **out, const oz_optim_config *cfg, const oz_param_layout *layout,
                              oz_backend *be, oz_arena *arena, oz_err *err) {
    *out = NULL;
    if (oz_optim_traits_of(cfg->kind)->galore && (cfg->rank <= 0 || cfg->update_gap <= 0 || !(cfg->scale > 0)))
        return oz_fail(err, OZ_ERR_INPUT, "GaLore needs --rank > 0, --update-gap > 0 and --galore-scale > 0");
    if (cfg->proj_bits != 0 && cfg->proj_bits != 32 && cfg->proj_bits != 4)
        return oz_fail(err, OZ_ERR_INPUT, "--proj-bits must be 32 or 4 (got %d)", cfg->proj_bits);
    if (cfg->lazy && (cfg->cos_window < 1 || cfg->cos_window > OZ_LAZY_MAX_WINDOW || !(cfg->gap_growth >= 1) ||
                      cfg->max_gap < cfg->update_gap))
        return oz_fail(err, OZ_ERR_INPUT,
                       "lazy updates need a window of 1..%d, a gap growth >= 1 and a maximum gap >= --update-gap",
                       OZ_LAZY_MAX_WINDOW);
    if (cfg->grads.factored &&
        (!cfg->grads.immediate || cfg->subspace != OZ_SUBSPACE_RANDOMIZED || cfg->grads.tokens <= 0))
        return oz_fail(err, OZ_ERR_INTERNAL,
                       "factored gradients need immediate updates, randomized subspaces and a token count");
    oz_optimizer *o = calloc(1, sizeof *o);
    if (!o) return oz_fail(err, OZ_ERR_NOMEM, "out of memory creating the optimizer");
    o->cfg = *cfg;
    o->layout = layout;
    o->be = be;
    o->arena = arena;
    o->step = -1;
    *out = o;
    o->slots = calloc((size_t)layout->n, sizeof *o->slots);
    if (!o->slots) return oz_fail(err, OZ_ERR_NOMEM, "out of memory creating the optimizer");
    o->n_slots = layout->n;
    alloc_ctx ctx = {o, OZ_OK, err};
    scratch_sizes z = {0};
    for (int i = 0; i < layout->n && ctx.st == OZ_OK; i++) {
        slot *s = &o->slots[i];
        shape_slot(cfg, &layout->params[i], i, s);
        s->gap = cfg->update_gap;
        slot_buffers(cfg, s, alloc_want, &ctx);
        scratch_of(cfg, s, !be->host_visible, &z);
    }
    if (ctx.st == OZ_OK && z.n) {
        size_t f = sizeof(float);
        pool_layout pl = pool_of(cfg, &z, !be->host_visible);
        alloc_want(&ctx, &o->pool, OZ_MEM_SCRATCH, pl.bytes,
                   "GaLore update buffers (the subspace workspace during a refresh)");
        if (z.work) alloc_want(&ctx, (void **)&o->work, OZ_MEM_SCRATCH, z.work * f, "GaLore work buffer");
        alloc_want(&ctx, (void **)&o->rot, OZ_MEM_SCRATCH, z.rot * f, "GaLore rotation buffer");
        alloc_want(&ctx, (void **)&o->cbuf, OZ_MEM_SCRATCH, z.c * f, "GaLore change of basis");
        alloc_want(&ctx, (void **)&o->newbasis, OZ_MEM_SCRATCH, z.basis * f, "GaLore new basis");
        if (ctx.st == OZ_OK) {
            char *p = o->pool;
            o->pool_bytes = pl.bytes;
            o->u = (float *)p;
            if (cfg->grads.immediate) o->rimm = (float *)(p + pl.rimm);
            if (cfg->int8_weights) o->delta = (float *)(p + pl.delta);
            if (z.fac) o->fac = (float *)(p + pl.delta);
            o->delta_cap = (pl.bytes - pl.delta) / f;
            if (cfg->proj_bits == 4) o->deq = (float *)(p + pl.deq);
        }
    }
    if (ctx.st != OZ_OK) return ctx.st;
    for (int i = 0; i < o->n_slots; i++) {
        slot *s = &o->slots[i];
        if (s->q8) {
            be->q8_zero(be, s->mq, s->ma, s->n, OZ_Q8_MAP_SIGNED);
            be->q8_zero(be, s->vq, s->va, s->n, OZ_Q8_MAP_UNSIGNED);
        }
    }
    return OZ_OK;
}

void oz_optimizer_destroy(oz_optimizer *o) {
    if (!o) return;
    for (int i = 0; i < o->n_owned; i++) oz_arena_free(o->arena, o->owned[i]);
    free(o->owned);
    free(o->slots);
    free(o);
}

long oz_optimizer_subspace_refreshes(const oz_optimizer *o) {
    long n = 0;
    for (int i = 0; i < o->n_slots; i++) n += o->slots[i].refreshes;
    return n;
}


void oz_optimizer_bind_weights(oz_optimizer *o, oz_weights_view w) { o->w = w; }

/* ---------------------------------------------------------------- the step */

void oz_optimizer_begin_step(oz_optimizer *o, int step, float lr) {
    o->step = step;
    o->lr = lr;
    o->applied_sumsq = 0;
    o->takes = 0;
    o->status = OZ_OK;
    o->prev_total = o->prev_seen = 0;
    o->change_sum = 0;
    o->change_n = 0;
    for (int i = 0; i < o->n_slots; i++) {
        slot *s = &o->slots[i];
        s->cur_ss = 0; /* running clipping: prev_ss is last step's (oz_optimizer_apply) */
        s->clip_scale = 1.0f;
        o->prev_total += s->prev_ss;
        s->taken = false;
        s->applied = false;
        s->projected = false;
        s->grad = NULL;
        /* GaLore's rule: a new subspace at steps 0, T, 2T, ... (and whenever none exists yet). */
        s->refresh_now = s->galore && !s->frozen_basis && (s->refreshes == 0 || step % s->gap == 0);
    }
    o->refresh_total = oz_optimizer_refreshes_due(o);
    o->refresh_done = 0;
}

int oz_optimizer_refreshes_due(const oz_optimizer *o) {
    int n = 0;
    for (int i = 0; i < o->n_slots; i++) n += o->slots[i].refresh_now;
    return n;
}

void oz_optimizer_on_refresh(oz_optimizer *o, oz_refresh_progress_fn fn, void *user) {
    o->on_refresh = fn;
    o->refresh_user = user;
}

oz_adamw_args oz_opt_slot_args(const oz_optimizer *o, const slot *s, float lr, float grad_scale) {
    const oz_optim_config *c = &o->cfg;
    float wd = s->p->is_norm ? 0.0f : c->weight_decay;
    oz_adamw_args args = {
        .lr = lr,
        .beta1 = c->beta1,
        .beta2 = c->beta2,
        .eps = c->eps,
        .weight_decay = wd,
        .bias_correction1 = (float)(1.0 - pow(c->beta1, (double)s->step)),
        .bias_correction2 = (float)(1.0 - pow(c->beta2, (double)s->step)),
        .grad_scale = grad_scale,
    };
    return args;
}


/* One slot's update from gradient g (the projected gradient for GaLore slots). */
static void apply_slot(oz_optimizer *o, slot *s, const float *g, float lr, float grad_scale) {
    oz_backend *be = o->be;
    s->step++;
    s->applied = true;
    oz_adamw_args args = oz_opt_slot_args(o, s, lr, grad_scale);
    if (s->galore) {
        oz_opt_galore_update(o, s, g, lr, args);
        return;
    }
    float *W = weight_f32(o, s);
    uint16_t *W16;
    size_t ld16;
    if (!W && !s->q8 && o->w.bf16 && o->w.bf16(o->w.owner, s->index, &W16, &ld16)) {
        /* bf16 weights: the step on them widened, rounded back stochastically from a stream keyed
         * by (seed, step, tensor), as the INT8 and bf16-row updates are (so resume repeats it). */
        const oz_param_info *p = s->p;
        const size_t rows = p->ndim == 2 ? (size_t)p->shape[0] : 1, cols = p->ndim == 2 ? (size_t)p->shape[1] : p->numel;
        be->adamw_step_bf16(be, W16, ld16, g, s->m, s->v, rows, cols, &args,
                            oz_qw_stream_key(tensor_seed(o, s), (uint64_t)o->step, 0));
        return;
    }
    if (s->q8)
        be->adam8bit_step(be, W, g, s->mq, s->ma, s->vq, s->va, s->n, &args);
    else
        be->adamw_step(be, W, g, s->m, s->v, s->n, &args);
}

/* A non-finite gradient, named with its layer (or as an outer tensor). */
static oz_status nonfinite(const slot *s, oz_err *err) {
    if (s->p->layer >= 0)
        return oz_fail(err, OZ_ERR_NUMERIC, "the gradient of %s (layer %d) is not finite", s->p->name, s->p->layer);
    return oz_fail(err, OZ_ERR_NUMERIC, "the gradient of %s is not finite", s->p->name);
}

/* A subspace refresh from G: the subspace op's non-finite input error names the tensor. */
static oz_status refresh_from(oz_optimizer *o, slot *s, const float *G, oz_err *err) {
    oz_status st = oz_opt_refresh_basis(o, s, G, NULL, err);
    return st == OZ_ERR_NUMERIC ? nonfinite(s, err) : st;
}

/* Records the backward order of a tensor's first gradient event of the step. */
static void mark_taken(oz_optimizer *o, slot *s) {
    if (!s->taken) s->taken_at = o->takes++;
    s->taken = true;
}

/* Running clipping (oz_optim_config.clip_running): the scale for an update of sum of squares ss,
 * of which `after` of slot s's history is still to come (rows after this block; 0 for a whole
 * tensor), given what this step has applied so far. Then counts it as seen. */
static float running_clip(oz_optimizer *o, slot *s, double ss, double after_fraction, bool last_piece) {
    float scale = 1.0f;
    if (o->cfg.clip_running && o->cfg.clip > 0) {
        double seen_prev = o->prev_seen + (double)s->prev_ss * (1.0 - after_fraction);
        double unseen = o->prev_total - seen_prev;
        double est = sqrt(o->applied_sumsq + ss + (unseen > 0 ? unseen : 0));
        if (est > o->cfg.clip) scale = (float)(o->cfg.clip / (est + 1e-6));
        s->clip_scale = scale < s->clip_scale ? scale : s->clip_scale;
    }
    s->cur_ss += ss;
    if (last_piece) o->prev_seen += s->prev_ss;
    return scale;
}

double oz_optimizer_subspace_change(const oz_optimizer *o) {
    return o->change_n ? o->change_sum / o->change_n : NAN;
}

float oz_optimizer_clip_scale(const oz_optimizer *o, int index) {
    return index >= 0 && index < o->n_slots ? o->slots[index].clip_scale : 1.0f;
}

/* A tensor's gradient (grad NULL for a factored one, whose factors came first). A second one in a
 * step accumulates (per-layer mode over micro-batches). */
static oz_status take_tensor(oz_optimizer *o, int index, const float *grad, oz_err *err) {
    slot *s = &o->slots[index];
    bool accumulate = s->taken;
    if (s->frozen) return OZ_OK; /* never changes: nothing to take (grad is NULL) */
    if (o->cfg.grads.immediate) {
        /* Project (GaLore) and update right away: this tensor's gradient is never kept. */
        const float *g = grad;
        if (s->factored) { /* its factors' event projected it into rimm already */
            if (!s->projected)
                return oz_fail(err, OZ_ERR_INTERNAL, "%s: its gradient's factors never arrived", s->p->name);
            s->projected = false;
            g = o->rimm;
        } else if (s->galore) {
            if (s->refresh_now) OZ_TRY(refresh_from(o, s, grad, err));
            oz_opt_project(o, s, grad, 0.0f, o->rimm);
            g = o->rimm;
        }
        /* Applied at once, so checked at once: a NaN never reaches the weights or the moments. */
        double ss = o->be->sumsq(o->be, g, s->n);
        if (!isfinite(ss)) return nonfinite(s, err);
        float scale = running_clip(o, s, ss, 0.0, true);
        o->applied_sumsq += ss;
        mark_taken(o, s);
        apply_slot(o, s, g, o->lr, scale);
        return OZ_OK;
    }
    if (s->galore) {
        if (s->refresh_now) OZ_TRY(refresh_from(o, s, grad, err));
        oz_opt_project(o, s, grad, accumulate ? 1.0f : 0.0f, s->racc);
    } else if (s->gacc) {
        if (accumulate) o->be->axpy(o->be, s->gacc, 1.0f, grad, s->n);
        else o->be->copy(o->be, s->gacc, grad, s->n * sizeof(float));
    } else {
        s->grad = grad;
    }
    mark_taken(o, s);
    return OZ_OK;
}

/* Rows [row0, row0 + rows) of a dense 2-D tensor, updated at once with this step's learning rate as
 * the whole-tensor update would be (blocks in order from row 0, each on a multiple of 256 elements
 * for 8-bit moments). */
static oz_status take_rows(oz_optimizer *o, int index, int row0, int rows, const float *grad, oz_err *err) {
    slot *s = &o->slots[index];
    if (s->frozen) return OZ_OK;
    const oz_param_info *p = s->p;
    if (!o->cfg.grads.immediate || s->galore || p->ndim != 2 || (!o->w.flat && !o->w.rows_load))
        return oz_fail(err, OZ_ERR_INTERNAL, "row blocks of %s need immediate updates of a dense matrix of bound weights",
                       p->name);
    size_t cols = (size_t)p->shape[1], off = (size_t)row0 * cols, n = (size_t)rows * cols;
    if (row0 < 0 || rows <= 0 || row0 + rows > p->shape[0] || (s->q8 && off % OZ_Q8_BLOCK != 0) ||
        (row0 == 0) == s->taken)
        return oz_fail(err, OZ_ERR_INTERNAL, "row block %d+%d of %s is out of order or misaligned", row0, rows, p->name);
    double ss = o->be->sumsq(o->be, grad, n);
    if (!isfinite(ss)) return nonfinite(s, err);
    if (row0 == 0) s->step++; /* one Adam step per optimizer step, whatever the block count */
    mark_taken(o, s);
    s->applied = row0 + rows == p->shape[0];
    float scale = running_clip(o, s, ss, (double)(p->shape[0] - row0 - rows) / (double)p->shape[0], s->applied);
    o->applied_sumsq += ss;
    oz_adamw_args args = oz_opt_slot_args(o, s, o->lr, scale);
    /* The rows in fp32 (a bf16 tensor's widened into the model's scratch), updated, and rounded
     * back stochastically from a stream keyed by (seed, step, tensor) as the INT8 updates are. */
    float *W = o->w.flat ? o->w.flat + p->offset + off : o->w.rows_load(o->w.owner, s->index, row0, rows);
    if (s->q8)
        o->be->adam8bit_step(o->be, W, grad, s->mq + off, s->ma + off / OZ_Q8_BLOCK, s->vq + off,
                             s->va + off / OZ_Q8_BLOCK, n, &args);
    else
        o->be->adamw_step(o->be, W, grad, s->m + off, s->v + off, n, &args);
    uint64_t key = oz_qw_stream_key(tensor_seed(o, s), (uint64_t)o->step, 0);
    if (!o->w.flat) o->w.rows_store(o->w.owner, s->index, row0, rows, key);
    return OZ_OK;
}

oz_status oz_optimizer_take(oz_optimizer *o, const oz_grad_event *ev, oz_err *err) {
    if (ev->index < 0 || ev->index >= o->n_slots)
        return oz_fail(err, OZ_ERR_INTERNAL, "gradient event for parameter %d of %d", ev->index, o->n_slots);
    slot *s = &o->slots[ev->index];
    switch (ev->form) {
    case OZ_GRAD_TENSOR:
        if (ev->partial) /* the first micro-batch's gradient: a due subspace comes from it */
            return s->refresh_now ? refresh_from(o, s, ev->grad, err) : OZ_OK;
        {
            /* Immediate updates may build the update in a buffer nothing reads again (Q-GaLore then
             * back-projects a whole matrix in one GEMM instead of in row blocks: the same codes). */
            o->grad_scratch = o->cfg.grads.immediate && ev->scratch ? ev->grad : NULL;
            oz_status st = take_tensor(o, ev->index, ev->grad, err);
            o->grad_scratch = NULL;
            return st;
        }
    case OZ_GRAD_ROWS: return s->frozen ? OZ_OK : take_rows(o, ev->index, ev->row0, ev->rows, ev->grad, err);
    case OZ_GRAD_FACTORS: return oz_opt_take_factors(o, ev, err);
    }
    return oz_fail(err, OZ_ERR_INTERNAL, "unknown gradient event form %d", (int)ev->form);
}

static void sink_take(void *self, const oz_grad_event *ev) {
    oz_optimizer *o = self;
    if (o->status != OZ_OK) return; /* the step has failed: the trainer reports the first error */
    o->status = oz_optimizer_take(o, ev, &o->status_err);
}

oz_grad_sink oz_optimizer_sink(oz_optimizer *o) {
    oz_grad_sink sink = {sink_take, o};
    return sink;
}

oz_status oz_optimizer_status(const oz_optimizer *o, oz_err *err) {
    if (o->status != OZ_OK && err) *err = o->status_err;
    return o->status;
}

double oz_optimizer_grad_sumsq(oz_optimizer *o) {
    double total = o->applied_sumsq;
    for (int i = 0; i < o->n_slots; i++) {
        slot *s = &o->slots[i];
        if (!s->taken || s->applied) continue;
        const float *g = s->galore ? s->racc : s->gacc ? s->gacc : s->grad;
        total += o->be->sumsq(o->be, g, s->n);
    }
    return total;
}

int oz_optimizer_first_nonfinite(oz_optimizer *o) {
    int first = -1;
    for (int i = 0; i < o->n_slots; i++) {
        slot *s = &o->slots[i];
        if (!s->taken || s->applied) continue;
        const float *g = s->galore ? s->racc : s->gacc ? s->gacc : s->grad;
        if (!isfinite(o->be->sumsq(o->be, g, s->n)) && (first < 0 || s->taken_at < o->slots[first].taken_at)) first = i;
    }
    return first;
}

void oz_optimizer_apply(oz_optimizer *o, float lr, float grad_scale) {
    for (int i = 0; i < o->n_slots; i++) {
        slot *s = &o->slots[i];
        /* Running clipping's history for the next step: what this step saw of each tensor (its
         * last state, so a checkpoint written now holds what the next step starts from). */
        if (s->taken) s->prev_ss = (float)s->cur_ss;
        if (!s->taken || s->applied) continue;
        apply_slot(o, s, s->galore ? s->racc : s->gacc ? s->gacc : s->grad, lr, grad_scale);
    }
}

