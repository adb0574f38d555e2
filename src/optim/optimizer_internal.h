/* Inside the optimizer, shared by its three files: optimizer.c (the kind table, slots, memory
 * plan and the step protocol), galore.c (subspaces and the GaLore update) and optimizer_state.c
 * (save, load, copy). One slot per tensor of the layout holds its state. */
#ifndef OZ_OPTIMIZER_INTERNAL_H
#define OZ_OPTIMIZER_INTERNAL_H
#include "numeric/adamw.h"
#include "numeric/quant.h"
#include "optim/optimizer.h"

enum { SIDE_LEFT = 0, SIDE_RIGHT = 1, SIDE_FULL = 2 };

typedef struct {
    int index;
    const oz_param_info *p;
    bool galore, q8;
    bool frozen;          /* a frozen tensor: no state at all, its gradient is ignored */
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
    bool refresh_now, frozen_basis, taken, applied; /* taken: a gradient arrived this step */
    long taken_at;        /* this step's order of its first gradient event (backward order) */
    /* factored: the gradient arrives as its factors (OZ_GRAD_FACTORS), never as a matrix;
     * projected: the factors' projected gradient for this step is in rimm */
    bool factored, projected;
    /* running clipping (cfg.clip_running): this tensor's sum of squares last step (float, so the
     * saved history restores it exactly), this step's so far, and the scale its update used */
    float prev_ss;
    double cur_ss;
    float clip_scale;
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
    float *grad_scratch;    /* a scratch event's gradient, free to overwrite while it is taken */
    oz_weights_view w;      /* where the weights are (oz_optimizer_bind_weights) */
    oz_status status;       /* the first failure of this step's sink events */
    oz_err status_err;
    float lr;               /* this step's learning rate (immediate updates apply inside take) */
    long takes;             /* gradient events this step (slot.taken_at) */
    double applied_sumsq;   /* gradient norm squared of what immediate updates applied */
    double prev_total;      /* running clipping: the sum of every slot's prev_ss */
    double prev_seen;       /* running clipping: prev_ss of the slots seen so far this step */
    double change_sum;      /* this step's refreshes of an existing subspace: their changes summed */
    int change_n;           /* and counted (oz_optimizer_subspace_change) */
    oz_refresh_progress_fn on_refresh; /* after each subspace refresh of a step (progress lines) */
    void *refresh_user;
    int refresh_total, refresh_done;    /* this step's refreshes: planned, done */
    void **owned;
    int n_owned, cap_owned;
};

/* The seed of a tensor's stochastic-rounding streams (INT8 updates, bf16 rows): the run's seed
 * told apart per tensor. */
static inline uint64_t tensor_seed(const oz_optimizer *o, const slot *s) {
    return o->cfg.seed ^ (0x9E3779B97F4A7C15ull * (uint64_t)(s->index + 1));
}

/* The vector whose drift drives lazy updates: P's first column (left, full) or Q's first row. */
static inline int first_vector_len(const slot *s) { return s->side == SIDE_RIGHT ? s->b : s->a; }
/* Elements of the stored basis: P for left, Q for right, both for full (P first). */
static inline size_t basis_len(const slot *s) {
    size_t ar = (size_t)s->a * s->r, rb = (size_t)s->r * s->b;
    return s->side == SIDE_LEFT ? ar : s->side == SIDE_RIGHT ? rb : ar + rb;
}

/* Where Q sits in the new-basis and dequantized-basis scratch: after P only for full. */
static inline size_t q_offset(const slot *s) { return s->side == SIDE_FULL ? (size_t)s->a * s->r : 0; }

/* Rows per block of the INT8 update: the back-projected update is built a row block at a time in
 * a small buffer (at least ~4 MiB; cfg->int8_block_bytes exactly) instead of one fp32 matrix the
 * weight's size. A block holds whole quantization groups so each group is updated from one block
 * (oz_qw_block_rows). cap: floats the block may take (0: the default target). */
static inline size_t block_rows(const oz_optim_config *c, const slot *s, size_t cap) {
    size_t target = c->int8_block_bytes ? c->int8_block_bytes / sizeof(float) : cap ? cap : ((size_t)4 << 20) / sizeof(float);
    return oz_qw_block_rows((size_t)s->a, (size_t)s->b, target);
}

/* Slot s's fp32 weights (NULL when they are INT8 codes). */
static inline float *weight_f32(oz_optimizer *o, const slot *s) {
    return o->w.flat ? o->w.flat + s->p->offset : o->w.f32 ? o->w.f32(o->w.owner, s->index) : NULL;
}

static inline bool weight_int8(const oz_optimizer *o, int index, uint8_t **q, float **scale, uint8_t **zero) {
    return o->w.int8 && o->w.int8(o->w.owner, index, q, scale, zero);
}

/* A gradient given by its factors G = dY^T X: dY (rows, a), X (rows, b), leading dimensions ldy, ldx. */
typedef struct {
    const float *dy, *x;
    int ldy, ldx, rows;
} factors;

/* optimizer.c: AdamW arguments for slot s's current step. */
oz_adamw_args oz_opt_slot_args(const oz_optimizer *o, const slot *s, float lr, float grad_scale);

/* galore.c */
/* A new basis for s from G, or from its factors fc (G NULL); moments follow per at_switch. */
oz_status oz_opt_refresh_basis(oz_optimizer *o, slot *s, const float *G, const factors *fc, oz_err *err);
/* dst (s->n) = projection of G, plus beta times what dst held. */
void oz_opt_project(oz_optimizer *o, slot *s, const float *G, float beta, float *dst);
/* An OZ_GRAD_FACTORS event: refresh if due, project into rimm (the tensor's event applies it). */
oz_status oz_opt_take_factors(oz_optimizer *o, const oz_grad_event *ev, oz_err *err);
/* The GaLore update of s from its projected gradient g, with s's AdamW arguments. */
void oz_opt_galore_update(oz_optimizer *o, slot *s, const float *g, float lr, oz_adamw_args args);

#endif
