/* The optimizer's state as one safetensors file ("<role>.<HF tensor name>" entries), and the copy
 * between two optimizers of one kind (InRank's freeze). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/safetensors.h"
#include "optim/optimizer_internal.h"

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
 * must hold 4 int64 per slot. */
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
        /* running clipping's history (host memory): what the coming step's estimate starts from */
        if (o->cfg.clip_running) add_entry(l, "clip_history", nm, "", OZ_DT_F32, 1, 1, 0, &s->prev_ss);
    }
}

static oz_status entries_alloc(const oz_optimizer *o, entry_list *l, int64_t **counters, oz_err *err) {
    l->cap = 20 * o->n_slots; /* at most 17 entries a slot (INT8 weights, 8-bit moments, two INT4 bases, lazy, counters, clipping) */
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
 * rather than a host array (the counters, the cosine and clipping histories), on a backend that
 * needs staging. */
static bool entry_on_device(const oz_optimizer *o, const oz_st_entry *e) {
    return !o->be->host_visible && strncmp(e->name, "state.", 6) != 0 && strncmp(e->name, "galore_cos.", 11) != 0 &&
           strncmp(e->name, "clip_history.", 13) != 0;
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
