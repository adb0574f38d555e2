/* GaLore's subspaces and update (the kinds with oz_optim_traits.galore).
 *
 * GaLore update of a matrix W (a x b) with gradient G, basis P (a x r, left) or Q (r x b, right):
 * R = P^T G or G Q^T (accumulated over micro-batches), Adam moments of R's shape, and
 * W <- W (1 - lr wd) - lr * scale * back(N) with N the Adam direction of R and back(N) = P N or
 * N Q. The Adam direction is computed by running the ordinary Adam step on a zeroed low-rank
 * buffer u (u becomes -N), so GaLore reuses the backend's exact AdamW (and the fused 8-bit step)
 * and needs no code of its own for the moments. */
#include <math.h>
#include <stdlib.h>

#include "numeric/subspace.h"
#include "optim/optimizer_internal.h"

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

oz_status oz_opt_refresh_basis(oz_optimizer *o, slot *s, const float *G, const factors *fc, oz_err *err) {
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
        /* How far the subspace moved (oz_optimizer_subspace_change), the old basis still stored;
         * C = P_old^T P_new (r x r) in the update scratch, free until this tensor's update. */
        const int r = s->r;
        double change = 0;
        int sides = 0;
        if (s->side != SIDE_RIGHT) {
            be->gemm(be, 1, 0, r, r, s->a, 1.0f, basis_P(o, s), r, Pn, r, 0.0f, o->u, r);
            change += 1.0 - be->sumsq(be, o->u, (size_t)r * r) / r;
            sides++;
        }
        if (s->side != SIDE_LEFT) {
            be->gemm(be, 0, 1, r, r, s->b, 1.0f, basis_Q(o, s), s->b, Qn, s->b, 0.0f, o->u, r);
            change += 1.0 - be->sumsq(be, o->u, (size_t)r * r) / r;
            sides++;
        }
        o->change_sum += change / sides;
        o->change_n++;
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

void oz_opt_project(oz_optimizer *o, slot *s, const float *G, float beta, float *dst) {
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
oz_status oz_opt_take_factors(oz_optimizer *o, const oz_grad_event *ev, oz_err *err) {
    slot *s = &o->slots[ev->index];
    int rows = ev->rows, ldy = ev->ldy, ldx = ev->ldx;
    if (!s->factored || s->projected)
        return oz_fail(err, OZ_ERR_INTERNAL, "%s: factors handed over for a tensor that does not take them now",
                       s->p->name);
    if (rows <= 0 || rows > o->cfg.grads.tokens || ldy < s->a || ldx < s->b)
        return oz_fail(err, OZ_ERR_INTERNAL, "%s: factors over %d rows (ld %d, %d) exceed the planned %d tokens",
                       s->p->name, rows, ldy, ldx, o->cfg.grads.tokens);
    factors fc = {ev->dy, ev->x, ldy, ldx, rows};
    if (s->refresh_now) {
        oz_status st = oz_opt_refresh_basis(o, s, NULL, &fc, err);
        if (st == OZ_ERR_NUMERIC)
            return oz_fail(err, st, "the gradient of %s (layer %d) is not finite", s->p->name, s->p->layer);
        OZ_TRY(st);
    }
    project_factored(o, s, &fc, o->rimm);
    s->projected = true;
    return OZ_OK;
}

void oz_opt_galore_update(oz_optimizer *o, slot *s, const float *g, float lr, oz_adamw_args args) {
    oz_backend *be = o->be;
    const oz_optim_config *c = &o->cfg;
    float wd = args.weight_decay;
    float *W = weight_f32(o, s);
    uint8_t *wq = NULL, *wz = NULL;
    float *wsc = NULL;
    bool int8 = weight_int8(o, s->index, &wq, &wsc, &wz);
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
