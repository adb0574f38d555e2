/* AdamW, 8-bit AdamW, GaLore and 8-bit GaLore (see optimizer.h for the step protocol).
 *
 * GaLore update of a matrix W (a x b) with gradient G, basis P (a x r, left) or Q (r x b, right):
 * R = P^T G or G Q^T (accumulated over micro-batches), Adam moments of R's shape, and
 * W <- W (1 - lr wd) - lr * scale * back(N) with N the Adam direction of R and back(N) = P N or
 * N Q. The Adam direction is computed by running the ordinary Adam step on a zeroed low-rank
 * buffer u (u becomes -N), so GaLore reuses the backend's exact AdamW (and the fused 8-bit step)
 * and needs no code of its own for the moments. */
#include "optim/optimizer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/safetensors.h"
#include "numeric/quant.h"
#include "numeric/subspace.h"

enum { SIDE_LEFT = 0, SIDE_RIGHT = 1, SIDE_FULL = 2 };

typedef struct {
    int index;
    const oz_param_info *p;
    bool galore, q8;
    bool frozen;          /* a frozen tensor: no state at all, its gradient is never consumed */
    int a, b;             /* matrix rows, cols (dense: numel x 1) */
    int side, r;
    size_t n;             /* elements of the moments: low-rank shape for GaLore, numel otherwise */
    float *P, *Q;         /* bases: P (a, r), Q (r, b), fp32 ... */
    uint8_t *Pq, *Qq, *Pz, *Qz; /* ... or INT4 codes and zero points */
    float *Ps, *Qs;       /* INT4 scales */
    float *v1;            /* lazy updates: the previous first basis vector (a or b) */
    float cos_hist[OZ_LAZY_MAX_WINDOW];
    int cos_n;            /* cosines recorded (the window holds the last min(cos_n, window)) */
    int gap;              /* this matrix's refresh interval */
    float *racc;          /* GaLore: this step's projected gradient (n) */
    float *gacc;          /* dense, per-layer mode, layer tensors: this step's gradient (numel) */
    const float *grad;    /* dense: where this step's gradient is */
    float *m, *v;         /* fp32 moments (n) */
    uint8_t *mq, *vq;     /* 8-bit moments (n) */
    float *ma, *va;       /* their per-block absmax (blocks) */
    long step;            /* Adam steps taken (bias correction) */
    long refreshes;       /* subspaces computed */
    bool refresh_now, frozen_basis, consumed, applied;
    /* factored: the gradient arrives as its factors (consume_factors), never as a matrix;
     * projected: consume_factors has put this step's projected gradient in rimm */
    bool factored, projected;
} slot;

struct oz_optimizer {
    oz_optim_config cfg;
    const oz_param_layout *layout;
    oz_backend *be;
    oz_arena *arena;
    slot *slots;
    int n_slots;
    int step;
    float *u, *work, *rot, *cbuf, *newbasis, *deq, *delta, *rimm; /* scratch */
    float *fac;             /* factored projections' (tokens, r) intermediates (shares delta's place) */
    size_t delta_cap;       /* floats the INT8 update block may use (the pool's slack included) */
    void *pool;             /* u, rimm, deq, delta / fac, and on a GPU the subspace workspace (pool_of) */
    size_t pool_bytes;
    float *grad_scratch;    /* consume_scratch: the gradient being consumed, free to overwrite */
    oz_weights_view w;      /* where the weights are (oz_optimizer_bind_weights) */
    oz_status status;       /* the first failure of this step's sink events */
    oz_err status_err;
    float lr;               /* this step's learning rate (immediate updates need it in the hook) */
    double applied_sumsq;   /* gradient norm squared of what immediate updates consumed */
    oz_refresh_progress_fn on_refresh; /* after each subspace refresh of a step (progress lines) */
    void *refresh_user;
    int refresh_total, refresh_done;    /* this step's refreshes: planned, done */
    void **owned;
    int n_owned, cap_owned;
};

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

/* The seed of a tensor's stochastic-rounding streams (INT8 updates, bf16 rows): the run's seed
 * told apart per tensor. */
static uint64_t tensor_seed(const oz_optimizer *o, const slot *s) {
    return o->cfg.seed ^ (0x9E3779B97F4A7C15ull * (uint64_t)(s->index + 1));
}

/* The vector whose drift drives lazy updates: P's first column (left, full) or Q's first row. */
static int first_vector_len(const slot *s) { return s->side == SIDE_RIGHT ? s->b : s->a; }

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
        /* immediate updates apply each gradient as it is consumed: no accumulator */
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

/* Elements of the stored basis: P for left, Q for right, both for full (P first). */
static size_t basis_len(const slot *s) {
    size_t ar = (size_t)s->a * s->r, rb = (size_t)s->r * s->b;
    return s->side == SIDE_LEFT ? ar : s->side == SIDE_RIGHT ? rb : ar + rb;
}

/* Where Q sits in the new-basis and dequantized-basis scratch: after P only for full. */
static size_t q_offset(const slot *s) { return s->side == SIDE_FULL ? (size_t)s->a * s->r : 0; }

/* Rows per block of the INT8 update: the back-projected update is built a row block at a time in
 * a small buffer (at least ~4 MiB; cfg->int8_block_bytes exactly) instead of one fp32 matrix the
 * weight's size. A block holds whole quantization groups so each group is updated from one block
 * (oz_qw_block_rows). cap: floats the block may take (0: the default target). */
static size_t block_rows(const oz_optim_config *c, const slot *s, size_t cap) {
    size_t target = c->int8_block_bytes ? c->int8_block_bytes / sizeof(float) : cap ? cap : ((size_t)4 << 20) / sizeof(float);
    return oz_qw_block_rows((size_t)s->a, (size_t)s->b, target);
}

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

/* Slot s's fp32 weights (NULL when they are INT8 codes). */
static float *weight_f32(oz_optimizer *o, const slot *s) {
    return o->w.flat ? o->w.flat + s->p->offset : o->w.f32 ? o->w.f32(o->w.owner, s->index) : NULL;
}

static bool weight_int8(const oz_optimizer *o, int index, uint8_t **q, float **scale, uint8_t **zero) {
    return o->w.int8 && o->w.int8(o->w.owner, index, q, scale, zero);
}


/* ---------------------------------------------------------------- bases */

/* The fp32 bases to use now: the stored ones, or INT4 ones dequantized into scratch. */
static const float *basis_P(oz_optimizer *o, const slot *s) {
    if (s->P || !s->Pq) return s->P;
    o->be->i4_dequantize(o->be, s->Pq, s->Ps, s->Pz, (size_t)s->a * s->r, o->deq);
    return o->deq;
}

static const float *basis_Q(oz_optimizer *o, const slot *s) {
    if (s->Q || !s->Qq) return s->Q;
    float *dst = o->deq + q_offset(s);
    o->be->i4_dequantize(o->be, s->Qq, s->Qs, s->Qz, (size_t)s->r * s->b, dst);
    return dst;
}

static void store_bases(oz_optimizer *o, slot *s, const float *P, const float *Q) {
    oz_backend *be = o->be;
    size_t ar = (size_t)s->a * s->r, rb = (size_t)s->r * s->b;
    if (P && s->P) be->copy(be, s->P, P, ar * sizeof(float));
    if (P && s->Pq) be->i4_quantize(be, P, ar, s->Pq, s->Ps, s->Pz);
    if (Q && s->Q) be->copy(be, s->Q, Q, rb * sizeof(float));
    if (Q && s->Qq) be->i4_quantize(be, Q, rb, s->Qq, s->Qs, s->Qz);
}

bool oz_optimizer_set_basis(oz_optimizer *o, int index, const float *P, const float *Q) {
    slot *s = &o->slots[index];
    if (!s->galore) return false;
    store_bases(o, s, P, Q);
    s->frozen_basis = true;
    s->refreshes = s->refreshes ? s->refreshes : 1;
    return true;
}

int oz_optimizer_gap(const oz_optimizer *o, int index) { return o->slots[index].galore ? o->slots[index].gap : 0; }

/* Q-GaLore's rule: cosine of the old and new first basis vectors into a window; a full window
 * whose mean reaches the threshold multiplies the gap (the window is not cleared, so a stable
 * subspace keeps growing the gap at every later refresh, up to the ceiling). Basis vector signs
 * are fixed by the subspace code (largest entry positive), so the signed cosine is meaningful. */
static oz_status lazy_observe(oz_optimizer *o, slot *s, const float *Pn, const float *Qn, oz_err *err) {
    oz_backend *be = o->be;
    int len = first_vector_len(s);
    float *d = o->rot; /* free at this point */
    if (s->side == SIDE_RIGHT) {
        be->copy(be, d, Qn, (size_t)len * sizeof *d); /* Q's first row */
    } else {
        /* P's first column, strided by r, gathered in backend memory as the product of the (a, 1)
         * matrix of leading dimension r with the 1x1 matrix [1.0]: x * 1.0 is exact. */
        be->fill(be, d + len, 1.0f, 1);
        be->gemm(be, 0, 0, len, 1, 1, 1.0f, Pn, s->r, d + len, 1, 0.0f, d, 1);
    }
    /* The cosine needs a and b floats on the host: the only optimizer data that leaves the device. */
    float *v = malloc((size_t)2 * len * sizeof *v), *v1 = v + len;
    if (!v) return oz_fail(err, OZ_ERR_NOMEM, "out of memory comparing subspaces");
    be->to_host(be, v, d, (size_t)len * sizeof *v);
    if (s->refreshes > 0) be->to_host(be, v1, s->v1, (size_t)len * sizeof *v);
    if (s->refreshes > 0) {
        double dot = 0, n1 = 0, n2 = 0;
        for (int i = 0; i < len; i++) {
            dot += (double)v1[i] * v[i];
            n1 += (double)v1[i] * v1[i];
            n2 += (double)v[i] * v[i];
        }
        float cosv = (float)(dot / (sqrt(n1 * n2) + 1e-30));
        int w = o->cfg.cos_window;
        s->cos_hist[s->cos_n % w] = cosv;
        s->cos_n++;
        if (s->cos_n >= w) {
            double mean = 0;
            for (int i = 0; i < w; i++) mean += s->cos_hist[i];
            mean /= w;
            if (mean >= o->cfg.cos_threshold) {
                double grown = (double)s->gap * o->cfg.gap_growth;
                s->gap = grown > o->cfg.max_gap ? o->cfg.max_gap : (int)grown;
            }
        }
    }
    be->copy(be, s->v1, d, (size_t)len * sizeof *d);
    free(v);
    return OZ_OK;
}

/* ---------------------------------------------------------------- the step */

void oz_optimizer_begin_step(oz_optimizer *o, int step, float lr) {
    o->step = step;
    o->lr = lr;
    o->applied_sumsq = 0;
    o->status = OZ_OK;
    for (int i = 0; i < o->n_slots; i++) {
        slot *s = &o->slots[i];
        s->consumed = false;
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

static void moments_zero(oz_optimizer *o, slot *s) {
    oz_backend *be = o->be;
    if (s->q8) {
        be->q8_zero(be, s->mq, s->ma, s->n, OZ_Q8_MAP_SIGNED);
        be->q8_zero(be, s->vq, s->va, s->n, OZ_Q8_MAP_UNSIGNED);
    } else {
        be->fill(be, s->m, 0.0f, s->n);
        be->fill(be, s->v, 0.0f, s->n);
    }
}

/* Moments follow the basis change: m' = C m (left) or m C (right), v' likewise with the entrywise
 * squares of C, which keeps v' non-negative (the diagonal of the rotated covariance when the
 * coordinates are uncorrelated). C = P_new^T P_old, or Q_old Q_new^T. */
static void moments_rotate(oz_optimizer *o, slot *s, const float *Pn, const float *Qn) {
    oz_backend *be = o->be;
    float *m = s->m, *v = s->v;
    float *mtmp = NULL, *vtmp = NULL;
    if (s->q8) { /* rotate in fp32: dequantize into work/u, requantize after */
        mtmp = o->work;
        vtmp = o->u;
        be->q8_dequantize(be, s->mq, s->ma, s->n, OZ_Q8_MAP_SIGNED, mtmp);
        be->q8_dequantize(be, s->vq, s->va, s->n, OZ_Q8_MAP_UNSIGNED, vtmp);
        m = mtmp;
        v = vtmp;
    }
    int r = s->r;
    float *C = o->cbuf, *C2 = o->cbuf + (size_t)r * r;
    /* Left side (also the left half of full): rows of m live in P's basis. */
    if (s->side != SIDE_RIGHT) {
        int cols = s->side == SIDE_LEFT ? s->b : r;
        be->gemm(be, 1, 0, r, r, s->a, 1.0f, Pn, r, basis_P(o, s), r, 0.0f, C, r);
        be->square(be, C2, C, (size_t)r * r);
        float *t = o->rot;
        be->gemm(be, 0, 0, r, cols, r, 1.0f, C, r, m, cols, 0.0f, t, cols);
        be->copy(be, m, t, (size_t)r * cols * sizeof *t);
        be->gemm(be, 0, 0, r, cols, r, 1.0f, C2, r, v, cols, 0.0f, t, cols);
        be->copy(be, v, t, (size_t)r * cols * sizeof *t);
    }
    if (s->side != SIDE_LEFT) {
        int rows = s->side == SIDE_RIGHT ? s->a : r;
        be->gemm(be, 0, 1, r, r, s->b, 1.0f, basis_Q(o, s), s->b, Qn, s->b, 0.0f, C, r);
        be->square(be, C2, C, (size_t)r * r);
        float *t = o->rot;
        be->gemm(be, 0, 0, rows, r, r, 1.0f, m, r, C, r, 0.0f, t, r);
        be->copy(be, m, t, (size_t)rows * r * sizeof *t);
        be->gemm(be, 0, 0, rows, r, r, 1.0f, v, r, C2, r, 0.0f, t, r);
        be->copy(be, v, t, (size_t)rows * r * sizeof *t);
    }
    if (s->q8) {
        be->q8_quantize(be, mtmp, s->n, OZ_Q8_MAP_SIGNED, s->mq, s->ma);
        be->q8_quantize(be, vtmp, s->n, OZ_Q8_MAP_UNSIGNED, s->vq, s->va);
    }
}

/* A gradient given by its factors G = dY^T X: dY (rows, a), X (rows, b), leading dimensions ldy, ldx. */
typedef struct {
    const float *dy, *x;
    int ldy, ldx, rows;
} factors;

/* A new basis from G, or from its factors f (G NULL). */
static oz_status refresh_basis(oz_optimizer *o, slot *s, const float *G, const factors *fc, oz_err *err) {
    oz_backend *be = o->be;
    float *Pn = o->newbasis, *Qn = o->newbasis + q_offset(s);
    oz_rng rng;
    oz_rng_seed(&rng, o->cfg.seed * 0x9E3779B97F4A7C15ull + (uint64_t)o->step * 0xBF58476D1CE4E5B9ull +
                          (uint64_t)s->index);
    /* The subspace workspace: device scratch the arena lends for the call (GPU), or LAPACK's own
     * malloc, which the arena records as transient scratch (CPU). Same figure as the plan. */
    size_t wsb = fc ? oz_backend_subspace_factored_workspace_bytes(be, s->a, s->b, s->r, fc->rows)
                    : oz_backend_subspace_workspace_bytes(be, s->a, s->b, s->r, o->cfg.subspace);
    /* On a GPU the workspace is the update pool (free until the gradient is projected, after
     * these calls); on the CPU LAPACK mallocs it, which the arena notes as transient scratch. */
    void *ws = NULL;
    if (wsb > o->pool_bytes)
        return oz_fail(err, OZ_ERR_INTERNAL, "subspace workspace of %zu bytes exceeds the %zu-byte pool", wsb,
                       o->pool_bytes);
    if (wsb) ws = o->pool;
    else
        oz_arena_note_transient(o->arena, OZ_MEM_SCRATCH,
                                fc ? oz_subspace_factored_workspace_bytes(s->a, s->b, s->r, fc->rows)
                                   : oz_subspace_workspace_bytes(s->a, s->b, s->r, o->cfg.subspace));
    for (int side = SIDE_LEFT; side <= SIDE_RIGHT; side++) {
        if ((side == SIDE_LEFT && s->side == SIDE_RIGHT) || (side == SIDE_RIGHT && s->side == SIDE_LEFT)) continue;
        float *dst = side == SIDE_LEFT ? Pn : Qn;
        if (fc)
            OZ_TRY(be->subspace_factored(be, fc->dy, fc->ldy, fc->x, fc->ldx, fc->rows, s->a, s->b, s->r, side, &rng,
                                         ws, dst, err));
        else
            OZ_TRY(be->subspace(be, G, s->a, s->b, s->r, side, o->cfg.subspace, &rng, ws, dst, err));
    }
    if (s->refreshes > 0) {
        if (o->cfg.at_switch == OZ_SWITCH_RESET) {
            moments_zero(o, s);
            s->step = 0;
        } else if (o->cfg.at_switch == OZ_SWITCH_ROTATE) {
            moments_rotate(o, s, Pn, Qn);
        }
    }
    if (o->cfg.lazy) OZ_TRY(lazy_observe(o, s, Pn, Qn, err));
    store_bases(o, s, s->side != SIDE_RIGHT ? Pn : NULL, s->side != SIDE_LEFT ? Qn : NULL);
    s->refreshes++;
    o->refresh_done++;
    if (o->on_refresh) o->on_refresh(o->refresh_user, o->refresh_done, o->refresh_total);
    s->refresh_now = false;
    return OZ_OK;
}

/* dst (s->n) = projection of G, plus beta times what dst held. */
static void project(oz_optimizer *o, slot *s, const float *G, float beta, float *dst) {
    oz_backend *be = o->be;
    int a = s->a, b = s->b, r = s->r;
    const float *P = s->side != SIDE_RIGHT ? basis_P(o, s) : NULL;
    const float *Q = s->side != SIDE_LEFT ? basis_Q(o, s) : NULL;
    switch (s->side) {
    case SIDE_LEFT: be->gemm(be, 1, 0, r, b, a, 1.0f, P, r, G, b, beta, dst, b); break;
    case SIDE_RIGHT: be->gemm(be, 0, 1, a, r, b, 1.0f, G, b, Q, b, beta, dst, r); break;
    default:
        be->gemm(be, 1, 0, r, b, a, 1.0f, P, r, G, b, 0.0f, o->work, b);
        be->gemm(be, 0, 1, r, r, b, 1.0f, o->work, b, Q, b, beta, dst, r);
    }
}

/* dst (s->n) = projection of G = dY^T X from its factors, G never formed: (dY P)^T X, dY^T (X Q^T)
 * or (dY P)^T (X Q^T), through fac's (rows, r) intermediates. */
static void project_factored(oz_optimizer *o, slot *s, const factors *fc, float *dst) {
    oz_backend *be = o->be;
    int a = s->a, b = s->b, r = s->r, R = fc->rows;
    const float *P = s->side != SIDE_RIGHT ? basis_P(o, s) : NULL;
    const float *Q = s->side != SIDE_LEFT ? basis_Q(o, s) : NULL;
    float *t1 = o->fac, *t2 = o->fac + (s->side == SIDE_FULL ? (size_t)R * r : 0);
    if (P) be->gemm(be, 0, 0, R, r, a, 1.0f, fc->dy, fc->ldy, P, r, 0.0f, t1, r); /* dY P */
    if (Q) be->gemm(be, 0, 1, R, r, b, 1.0f, fc->x, fc->ldx, Q, b, 0.0f, t2, r); /* X Q^T */
    switch (s->side) {
    case SIDE_LEFT: be->gemm(be, 1, 0, r, b, R, 1.0f, t1, r, fc->x, fc->ldx, 0.0f, dst, b); break;
    case SIDE_RIGHT: be->gemm(be, 1, 0, a, r, R, 1.0f, fc->dy, fc->ldy, t2, r, 0.0f, dst, r); break;
    default: be->gemm(be, 1, 0, r, r, R, 1.0f, t1, r, t2, r, 0.0f, dst, r);
    }
}

/* A factored tensor's gradient G = dY^T X by its factors: refreshes the subspace if due (the factored
 * range finder, the same draws as on G) and projects G from the factors, never forming it; the
 * update follows with the tensor's (grad NULL) event, once the weight is no longer read. */
static oz_status take_factors(oz_optimizer *o, int index, const float *dY, int ldy, const float *X, int ldx, int rows,
                              oz_err *err) {
    slot *s = &o->slots[index];
    if (!s->factored || s->projected)
        return oz_fail(err, OZ_ERR_INTERNAL, "%s: factors handed over for a tensor that does not take them now",
                       s->p->name);
    if (rows <= 0 || rows > o->cfg.grads.tokens || ldy < s->a || ldx < s->b)
        return oz_fail(err, OZ_ERR_INTERNAL, "%s: factors over %d rows (ld %d, %d) exceed the planned %d tokens",
                       s->p->name, rows, ldy, ldx, o->cfg.grads.tokens);
    factors fc = {dY, X, ldy, ldx, rows};
    if (s->refresh_now) OZ_TRY(refresh_basis(o, s, NULL, &fc, err));
    project_factored(o, s, &fc, o->rimm);
    s->projected = true;
    return OZ_OK;
}

static void apply_slot(oz_optimizer *o, slot *s, const float *g, float lr, float grad_scale);
static oz_adamw_args slot_args(const oz_optimizer *o, const slot *s, float lr, float grad_scale);

/* A tensor's gradient (grad NULL for a factored one, whose factors came first). A second one in a
 * step accumulates (per-layer mode over micro-batches). */
static oz_status take_tensor(oz_optimizer *o, int index, const float *grad, oz_err *err) {
    slot *s = &o->slots[index];
    bool accumulate = s->consumed;
    if (s->frozen) return OZ_OK; /* never changes: nothing to consume (grad is NULL) */
    if (o->cfg.grads.immediate) {
        /* Project (GaLore) and update right away: this tensor's gradient is never kept. */
        const float *g = grad;
        if (s->factored) { /* consume_factors projected it into rimm already */
            if (!s->projected)
                return oz_fail(err, OZ_ERR_INTERNAL, "%s: its gradient's factors never arrived", s->p->name);
            s->projected = false;
            g = o->rimm;
        } else if (s->galore) {
            if (s->refresh_now) OZ_TRY(refresh_basis(o, s, grad, NULL, err));
            project(o, s, grad, 0.0f, o->rimm);
            g = o->rimm;
        }
        o->applied_sumsq += o->be->sumsq(o->be, g, s->n);
        s->consumed = true;
        apply_slot(o, s, g, o->lr, 1.0f);
        return OZ_OK;
    }
    if (s->galore) {
        if (s->refresh_now) OZ_TRY(refresh_basis(o, s, grad, NULL, err));
        project(o, s, grad, accumulate ? 1.0f : 0.0f, s->racc);
    } else if (s->gacc) {
        if (accumulate) o->be->axpy(o->be, s->gacc, 1.0f, grad, s->n);
        else o->be->copy(o->be, s->gacc, grad, s->n * sizeof(float));
    } else {
        s->grad = grad;
    }
    s->consumed = true;
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
        (row0 == 0) == s->consumed)
        return oz_fail(err, OZ_ERR_INTERNAL, "row block %d+%d of %s is out of order or misaligned", row0, rows, p->name);
    if (row0 == 0) s->step++; /* one Adam step per optimizer step, whatever the block count */
    s->consumed = true;
    s->applied = row0 + rows == p->shape[0];
    o->applied_sumsq += o->be->sumsq(o->be, grad, n);
    oz_adamw_args args = slot_args(o, s, o->lr, 1.0f);
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
            return s->refresh_now ? refresh_basis(o, s, ev->grad, NULL, err) : OZ_OK;
        {
            /* Immediate updates may build the update in a buffer nothing reads again (Q-GaLore then
             * back-projects a whole matrix in one GEMM instead of in row blocks: the same codes). */
            o->grad_scratch = o->cfg.grads.immediate && ev->scratch ? ev->grad : NULL;
            oz_status st = take_tensor(o, ev->index, ev->grad, err);
            o->grad_scratch = NULL;
            return st;
        }
    case OZ_GRAD_ROWS: return s->frozen ? OZ_OK : take_rows(o, ev->index, ev->row0, ev->rows, ev->grad, err);
    case OZ_GRAD_FACTORS: return take_factors(o, ev->index, ev->dy, ev->ldy, ev->x, ev->ldx, ev->rows, err);
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
        if (!s->consumed || s->applied) continue;
        const float *g = s->galore ? s->racc : s->gacc ? s->gacc : s->grad;
        total += o->be->sumsq(o->be, g, s->n);
    }
    return total;
}

/* AdamW arguments for slot s's current step. */
static oz_adamw_args slot_args(const oz_optimizer *o, const slot *s, float lr, float grad_scale) {
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
    const oz_optim_config *c = &o->cfg;
    s->step++;
    s->applied = true;
    float wd = s->p->is_norm ? 0.0f : c->weight_decay;
    oz_adamw_args args = slot_args(o, s, lr, grad_scale);
    float *W = weight_f32(o, s);
    uint8_t *wq = NULL, *wz = NULL;
    float *wsc = NULL;
    bool int8 = weight_int8(o, s->index, &wq, &wsc, &wz);
    if (!s->galore) {
        if (s->q8)
            be->adam8bit_step(be, W, g, s->mq, s->ma, s->vq, s->va, s->n, &args);
        else
            be->adamw_step(be, W, g, s->m, s->v, s->n, &args);
        return;
    }
    /* u <- -(Adam direction of R), then W <- W (1 - lr wd) + lr scale back(u). */
    args.lr = 1.0f;
    args.weight_decay = 0.0f;
    be->fill(be, o->u, 0.0f, s->n);
    if (s->q8)
        be->adam8bit_step(be, o->u, g, s->mq, s->ma, s->vq, s->va, s->n, &args);
    else
        be->adamw_step(be, o->u, g, s->m, s->v, s->n, &args);
    float alpha = lr * c->scale;
    int a = s->a, b = s->b, r = s->r;
    if (int8) {
        /* The back-projected update, then dequantize + add + stochastic requantize per group
         * (Q-GaLore), one row block at a time: a row block of P u is P's row block times u, of u Q
         * u's row block times Q, and for full (P u) Q is computed as before, P u (a, r) first in
         * the work buffer, so every element is the product the whole-matrix GEMM gave. Blocks hold
         * whole groups and pass their first group's index, so the SR streams, and the codes, are
         * the whole-matrix update's; no fp32 matrix the weight's size exists. */
        /* A gradient buffer handed over as scratch holds the whole matrix: one block, one GEMM (many
         * small GEMMs cost a 7b step more than its forward and backward on an H200). */
        float *D = o->grad_scratch ? o->grad_scratch : o->delta;
        const float *P = s->side != SIDE_RIGHT ? basis_P(o, s) : NULL;
        const float *Q = s->side != SIDE_LEFT ? basis_Q(o, s) : NULL;
        if (s->side == SIDE_FULL) be->gemm(be, 0, 0, a, r, r, 1.0f, P, r, o->u, r, 0.0f, o->work, r);
        uint64_t key = tensor_seed(o, s);
        size_t rows_blk = o->grad_scratch ? (size_t)a : block_rows(c, s, o->delta_cap);
        for (size_t r0 = 0; r0 < (size_t)a; r0 += rows_blk) {
            int rows = (int)((size_t)a - r0 < rows_blk ? (size_t)a - r0 : rows_blk);
            switch (s->side) {
            case SIDE_LEFT: be->gemm(be, 0, 0, rows, b, r, 1.0f, P + r0 * r, r, o->u, b, 0.0f, D, b); break;
            case SIDE_RIGHT: be->gemm(be, 0, 0, rows, b, r, 1.0f, o->u + r0 * r, r, Q, b, 0.0f, D, b); break;
            default: be->gemm(be, 0, 0, rows, b, r, 1.0f, o->work + r0 * r, r, Q, b, 0.0f, D, b);
            }
            size_t e0 = r0 * (size_t)b, g0 = e0 / OZ_QW_GROUP;
            be->i8_update_sr(be, wq + e0, wsc + g0, wz + g0, (size_t)rows * b, D, 1.0f - lr * wd, alpha, key,
                             (uint64_t)o->step, g0);
        }
        return;
    }
    if (wd > 0) be->scale(be, W, 1.0f - lr * wd, (size_t)s->a * s->b);
    const float *P = s->side != SIDE_RIGHT ? basis_P(o, s) : NULL;
    const float *Q = s->side != SIDE_LEFT ? basis_Q(o, s) : NULL;
    switch (s->side) {
    case SIDE_LEFT: be->gemm(be, 0, 0, a, b, r, alpha, P, r, o->u, b, 1.0f, W, b); break;
    case SIDE_RIGHT: be->gemm(be, 0, 0, a, b, r, alpha, o->u, r, Q, b, 1.0f, W, b); break;
    default:
        be->gemm(be, 0, 0, a, r, r, 1.0f, P, r, o->u, r, 0.0f, o->work, r);
        be->gemm(be, 0, 0, a, b, r, alpha, o->work, r, Q, b, 1.0f, W, b);
    }
}

void oz_optimizer_apply(oz_optimizer *o, float lr, float grad_scale) {
    for (int i = 0; i < o->n_slots; i++) {
        slot *s = &o->slots[i];
        if (!s->consumed || s->applied) continue;
        apply_slot(o, s, s->galore ? s->racc : s->gacc ? s->gacc : s->grad, lr, grad_scale);
    }
}

/* ---------------------------------------------------------------- checkpoints */

typedef struct {
    oz_st_entry *e;
    char (*names)[160];
    int n, cap;
} entry_list;

static void add_entry(entry_list *l, const char *role, const char *name, const char *suffix, oz_dtype dt, int ndim,
                      int64_t d0, int64_t d1, const void *data) {
    if (l->n >= l->cap) {
        l->n++;
        return;
    }
    snprintf(l->names[l->n], sizeof l->names[l->n], "%s.%s%s", role, name, suffix);
    oz_st_entry *e = &l->e[l->n++];
    memset(e, 0, sizeof *e);
    e->name = l->names[l->n - 1];
    e->dtype = dt;
    e->ndim = ndim;
    e->shape[0] = d0;
    e->shape[1] = d1;
    e->data = data;
}

/* The persistent state of every slot (moments, bases, counters), in a fixed order. counters
 * must hold 2 int64 per slot. */
static void list_state(const oz_optimizer *o, entry_list *l, int64_t *counters) {
    for (int i = 0; i < o->n_slots; i++) {
        const slot *s = &o->slots[i];
        const char *nm = s->p->name;
        /* INT8 weights' exact codes, frozen ones included: requantizing the dequantized weights of
         * model.safetensors would not give the same grid back, and resume must be bit-exact. */
        uint8_t *wq, *wz;
        float *wsc;
        if (weight_int8(o, i, &wq, &wsc, &wz)) {
            size_t groups = oz_qw_groups(s->p->numel);
            add_entry(l, "qweight", nm, ".q8", OZ_DT_U8, 1, (int64_t)s->p->numel, 0, wq);
            add_entry(l, "qweight", nm, ".scale", OZ_DT_F32, 1, (int64_t)groups, 0, wsc);
            add_entry(l, "qweight", nm, ".zero", OZ_DT_U8, 1, (int64_t)groups, 0, wz);
        }
        if (s->frozen) continue;
        int64_t rows = s->galore ? (s->side == SIDE_RIGHT ? s->a : s->r) : s->p->shape[0];
        int64_t cols = s->galore ? (int64_t)(s->n / (size_t)rows) : (s->p->ndim > 1 ? s->p->shape[1] : 0);
        int nd = s->galore || s->p->ndim > 1 ? 2 : 1;
        if (s->q8) {
            size_t blocks = oz_q8_blocks(s->n);
            add_entry(l, "exp_avg", nm, ".codes", OZ_DT_U8, 1, (int64_t)s->n, 0, s->mq);
            add_entry(l, "exp_avg", nm, ".absmax", OZ_DT_F32, 1, (int64_t)blocks, 0, s->ma);
            add_entry(l, "exp_avg_sq", nm, ".codes", OZ_DT_U8, 1, (int64_t)s->n, 0, s->vq);
            add_entry(l, "exp_avg_sq", nm, ".absmax", OZ_DT_F32, 1, (int64_t)blocks, 0, s->va);
        } else {
            add_entry(l, "exp_avg", nm, "", OZ_DT_F32, nd, rows, cols, s->m);
            add_entry(l, "exp_avg_sq", nm, "", OZ_DT_F32, nd, rows, cols, s->v);
        }
        if (s->P) add_entry(l, "galore_P", nm, "", OZ_DT_F32, 2, s->a, s->r, s->P);
        if (s->Q) add_entry(l, "galore_Q", nm, "", OZ_DT_F32, 2, s->r, s->b, s->Q);
        size_t ar = (size_t)s->a * s->r, rb = (size_t)s->r * s->b;
        if (s->Pq) {
            add_entry(l, "galore_P", nm, ".q4", OZ_DT_U8, 1, (int64_t)(ar + 1) / 2, 0, s->Pq);
            add_entry(l, "galore_P", nm, ".scale", OZ_DT_F32, 1, (int64_t)oz_qw_groups(ar), 0, s->Ps);
            add_entry(l, "galore_P", nm, ".zero", OZ_DT_U8, 1, (int64_t)oz_qw_groups(ar), 0, s->Pz);
        }
        if (s->Qq) {
            add_entry(l, "galore_Q", nm, ".q4", OZ_DT_U8, 1, (int64_t)(rb + 1) / 2, 0, s->Qq);
            add_entry(l, "galore_Q", nm, ".scale", OZ_DT_F32, 1, (int64_t)oz_qw_groups(rb), 0, s->Qs);
            add_entry(l, "galore_Q", nm, ".zero", OZ_DT_U8, 1, (int64_t)oz_qw_groups(rb), 0, s->Qz);
        }
        if (s->v1) {
            add_entry(l, "galore_v1", nm, "", OZ_DT_F32, 1, first_vector_len(s), 0, s->v1);
            add_entry(l, "galore_cos", nm, "", OZ_DT_F32, 1, OZ_LAZY_MAX_WINDOW, 0, s->cos_hist);
        }
        int64_t *cnt = &counters[4 * i];
        cnt[0] = s->step;
        cnt[1] = s->refreshes;
        cnt[2] = s->gap;
        cnt[3] = s->cos_n;
        add_entry(l, "state", nm, "", OZ_DT_I64, 1, 4, 0, cnt);
    }
}

static oz_status entries_alloc(const oz_optimizer *o, entry_list *l, int64_t **counters, oz_err *err) {
    l->cap = 16 * o->n_slots;
    l->n = 0;
    l->e = calloc((size_t)l->cap, sizeof *l->e);
    l->names = calloc((size_t)l->cap, sizeof *l->names);
    *counters = calloc((size_t)4 * o->n_slots, sizeof **counters);
    if (!l->e || !l->names || !*counters) {
        free(l->e);
        free(l->names);
        free(*counters);
        return oz_fail(err, OZ_ERR_NOMEM, "out of memory listing optimizer state");
    }
    return OZ_OK;
}

/* An entry whose data is backend memory (moments, bases, INT8 codes: everything the arena holds)
 * rather than a host array (the counters and the cosine history), on a backend that needs staging. */
static bool entry_on_device(const oz_optimizer *o, const oz_st_entry *e) {
    return !o->be->host_visible && strncmp(e->name, "state.", 6) != 0 && strncmp(e->name, "galore_cos.", 11) != 0;
}

/* Replaces each device entry's data by a host copy (staging[i], freed by the caller). */
static oz_status stage_entries(const oz_optimizer *o, entry_list *l, void **staging, oz_err *err) {
    for (int i = 0; i < l->n; i++) {
        oz_st_entry *e = &l->e[i];
        if (!entry_on_device(o, e)) continue;
        size_t bytes = (size_t)e->shape[0] * (size_t)(e->ndim > 1 ? e->shape[1] : 1) * oz_dtype_size(e->dtype);
        if (!(staging[i] = malloc(bytes ? bytes : 1))) return oz_fail(err, OZ_ERR_NOMEM, "out of memory staging %s", e->name);
        o->be->to_host(o->be, staging[i], e->data, bytes);
        e->data = staging[i];
    }
    return OZ_OK;
}

oz_status oz_optimizer_save(const oz_optimizer *o, const char *path, oz_err *err) {
    entry_list l;
    int64_t *counters;
    OZ_TRY(entries_alloc(o, &l, &counters, err));
    list_state(o, &l, counters);
    char kind[32];
    snprintf(kind, sizeof kind, "%s", oz_optim_kind_name(o->cfg.kind));
    const char *meta[] = {"optimizer", kind, NULL};
    void **staging = o->be->host_visible ? NULL : calloc((size_t)l.n + 1, sizeof *staging);
    oz_status st = o->be->host_visible || staging ? OZ_OK : oz_fail(err, OZ_ERR_NOMEM, "out of memory staging state");
    if (st == OZ_OK && staging) st = stage_entries(o, &l, staging, err);
    if (st == OZ_OK) st = oz_safetensors_write(path, l.e, l.n, meta, err);
    for (int i = 0; staging && i < l.n; i++) free(staging[i]);
    free(staging);
    free(l.e);
    free(l.names);
    free(counters);
    return st;
}

oz_status oz_optimizer_load(oz_optimizer *o, const char *path, oz_err *err) {
    entry_list l;
    int64_t *counters;
    OZ_TRY(entries_alloc(o, &l, &counters, err));
    list_state(o, &l, counters);
    oz_safetensors st;
    oz_status s = oz_safetensors_open(&st, path, err);
    if (s == OZ_OK && st.n_tensors != l.n)
        s = oz_fail(err, OZ_ERR_INPUT, "%s: holds %d tensors but this optimizer (%s) has %d", path, st.n_tensors,
                    oz_optim_kind_name(o->cfg.kind), l.n);
    for (int i = 0; s == OZ_OK && i < l.n; i++) {
        const oz_st_entry *e = &l.e[i];
        const oz_st_tensor *t = oz_safetensors_find(&st, e->name);
        size_t numel = (size_t)e->shape[0] * (size_t)(e->ndim > 1 ? e->shape[1] : 1);
        if (!t) {
            s = oz_fail(err, OZ_ERR_INPUT, "%s: missing tensor \"%s\"", path, e->name);
        } else if (t->dtype != e->dtype || t->numel != numel || t->ndim != e->ndim) {
            s = oz_fail(err, OZ_ERR_INPUT, "%s: tensor \"%s\" has the wrong dtype or shape for this optimizer",
                        path, e->name);
        } else {
            if (entry_on_device(o, e)) o->be->to_device(o->be, (void *)e->data, t->data, t->nbytes);
            else memcpy((void *)e->data, t->data, t->nbytes);
        }
    }
    if (st.map) oz_safetensors_close(&st);
    if (s == OZ_OK) {
        for (int i = 0; i < o->n_slots; i++) {
            slot *sl = &o->slots[i];
            sl->step = counters[4 * i];
            sl->refreshes = counters[4 * i + 1];
            sl->gap = (int)counters[4 * i + 2];
            sl->cos_n = (int)counters[4 * i + 3];
        }
    }
    free(l.e);
    free(l.names);
    free(counters);
    return s;
}

/* The parameter name inside a state entry's name "<role>.<param name><suffix>": parameter names
 * end in ".weight", suffixes (".codes", ".q4", ...) never contain it. */
static bool entry_param(const char *entry, char *name, size_t cap) {
    const char *dot = strchr(entry, '.');
    const char *end = NULL;
    for (const char *p = dot ? strstr(dot, ".weight") : NULL; p; p = strstr(p + 1, ".weight")) end = p;
    if (!dot || !end) return false;
    size_t n = (size_t)(end + 7 - (dot + 1));
    if (n >= cap) return false;
    memcpy(name, dot + 1, n);
    name[n] = '\0';
    return true;
}

oz_status oz_optimizer_copy_state(oz_optimizer *dst, const oz_optimizer *src, bool reset_factors, oz_err *err) {
    if (dst->cfg.kind != src->cfg.kind)
        return oz_fail(err, OZ_ERR_INPUT, "optimizer state transfer between %s and %s", oz_optim_kind_name(src->cfg.kind),
                       oz_optim_kind_name(dst->cfg.kind));
    entry_list ld, ls;
    int64_t *cd, *cs;
    OZ_TRY(entries_alloc(dst, &ld, &cd, err));
    oz_status st = entries_alloc(src, &ls, &cs, err);
    if (st != OZ_OK) {
        free(ld.e);
        free(ld.names);
        free(cd);
        return st;
    }
    list_state(dst, &ld, cd);
    list_state(src, &ls, cs);
    for (int i = 0; i < ld.n; i++) {
        const oz_st_entry *e = &ld.e[i];
        char pname[128];
        if (!entry_param(e->name, pname, sizeof pname)) continue;
        const oz_param_info *p = oz_param_layout_find(dst->layout, pname);
        if (!p || (reset_factors && p->factor)) continue;
        for (int j = 0; j < ls.n; j++) {
            const oz_st_entry *f = &ls.e[j];
            if (strcmp(f->name, e->name) != 0) continue;
            size_t ne = (size_t)e->shape[0] * (size_t)(e->ndim > 1 ? e->shape[1] : 1);
            size_t nf = (size_t)f->shape[0] * (size_t)(f->ndim > 1 ? f->shape[1] : 1);
            if (f->dtype == e->dtype && ne == nf && f->ndim == e->ndim) {
                /* Moments live in backend memory (device to device on a GPU); counters on the host. */
                if (entry_on_device(dst, e)) dst->be->copy(dst->be, (void *)e->data, f->data, ne * oz_dtype_size(e->dtype));
                else memcpy((void *)e->data, f->data, ne * oz_dtype_size(e->dtype));
            }
            break;
        }
    }
    /* The counters were copied into dst's list ("state.<name>"); hand them to the slots. */
    for (int i = 0; i < dst->n_slots; i++) {
        slot *sl = &dst->slots[i];
        sl->step = cd[4 * i];
        sl->refreshes = cd[4 * i + 1];
        sl->gap = (int)cd[4 * i + 2];
        sl->cos_n = (int)cd[4 * i + 3];
    }
    free(ld.e);
    free(ld.names);
    free(cd);
    free(ls.e);
    free(ls.names);
    free(cs);
    return OZ_OK;
}
