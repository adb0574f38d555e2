/* A Llama in a GGUF file (see gguf_model.h). */
#include "model/gguf_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/tokenizer.h"
#include "data/tokenizer_gguf.h"
#include "numeric/ggml_quant.h"

/* ---- names ---- */

static const struct {
    const char *hf, *gguf;
} layer_names[] = {
    {"input_layernorm", "attn_norm"}, {"self_attn.q_proj", "attn_q"},  {"self_attn.k_proj", "attn_k"},
    {"self_attn.v_proj", "attn_v"},   {"self_attn.o_proj", "attn_output"}, {"post_attention_layernorm", "ffn_norm"},
    {"mlp.gate_proj", "ffn_gate"},    {"mlp.up_proj", "ffn_up"},      {"mlp.down_proj", "ffn_down"},
};

int oz_gguf_tensor_name(const char *hf, char *out, size_t cap) {
    const char *fixed = !strcmp(hf, "model.embed_tokens.weight") ? "token_embd.weight"
                      : !strcmp(hf, "model.norm.weight")         ? "output_norm.weight"
                      : !strcmp(hf, "lm_head.weight")            ? "output.weight"
                                                                 : NULL;
    if (fixed) return snprintf(out, cap, "%s", fixed) < (int)cap;
    int layer, used = 0;
    if (sscanf(hf, "model.layers.%d.%n", &layer, &used) != 1 || used == 0) return 0;
    const char *rest = hf + used;
    size_t n = strlen(rest);
    if (n < 7 || strcmp(rest + n - 7, ".weight") != 0) return 0;
    for (size_t i = 0; i < sizeof layer_names / sizeof layer_names[0]; i++)
        if (strlen(layer_names[i].hf) == n - 7 && strncmp(rest, layer_names[i].hf, n - 7) == 0)
            return snprintf(out, cap, "blk.%d.%s.weight", layer, layer_names[i].gguf) < (int)cap;
    return 0;
}

/* Row r (Hugging Face order) of a q/k matrix with heads of hd rows, as llama.cpp stores it. */
static size_t gguf_row(size_t r, int hd) {
    size_t h = r / (size_t)hd, w = r % (size_t)hd, half = (size_t)hd / 2;
    return h * (size_t)hd + (w % half) * 2 + w / half;
}

static int is_qk(const oz_param_info *p) { return p->kind == OZ_P_Q || p->kind == OZ_P_K; }

/* ---- config ---- */

static oz_status str_key(const oz_gguf *g, const char *key, char *out, size_t cap) {
    oz_gguf_str s;
    out[0] = '\0';
    if (!oz_gguf_get_str(oz_gguf_find(g, key), &s)) return OZ_OK;
    snprintf(out, cap, "%.*s", (int)(s.len < cap ? s.len : cap - 1), s.s);
    return OZ_OK;
}

/* An integer key in [lo, hi]; absent means dflt, or an error when required. */
static oz_status int_key(const oz_gguf *g, const char *key, int required, int dflt, int lo, int hi, int *out,
                         oz_err *err) {
    const oz_gguf_kv *kv = oz_gguf_find(g, key);
    if (!kv) {
        if (required) return oz_fail(err, OZ_ERR_INPUT, "%s: missing metadata key %s", g->path, key);
        *out = dflt;
        return OZ_OK;
    }
    uint64_t v;
    if (!oz_gguf_get_uint(kv, &v) || v < (uint64_t)lo || v > (uint64_t)hi)
        return oz_fail(err, OZ_ERR_INPUT, "%s: metadata key %s must be an integer from %d to %d", g->path, key, lo, hi);
    *out = (int)v;
    return OZ_OK;
}

static oz_status float_key(const oz_gguf *g, const char *key, float dflt, float *out, oz_err *err) {
    const oz_gguf_kv *kv = oz_gguf_find(g, key);
    double v;
    if (!kv) {
        *out = dflt;
        return OZ_OK;
    }
    if (!oz_gguf_get_number(kv, &v) || !isfinite(v))
        return oz_fail(err, OZ_ERR_INPUT, "%s: metadata key %s must be a finite number", g->path, key);
    *out = (float)v;
    return OZ_OK;
}

/* Llama 3.1's rope scaling reaches GGUF as per-frequency divisors (rope_freqs.weight). ounce's own
 * files name the parameters (ounce.rope.llama3.*); otherwise the usual ones are tried and kept
 * when they give the same divisors. */
static oz_status read_rope_freqs(const oz_gguf *g, oz_llama_config *cfg, oz_err *err) {
    const oz_gguf_tensor *t = oz_gguf_find_tensor(g, "rope_freqs.weight");
    if (!t) return OZ_OK;
    int half = cfg->head_dim / 2;
    if (t->ndim != 1 || t->dims[0] != (uint64_t)half)
        return oz_fail(err, OZ_ERR_INPUT, "%s: rope_freqs.weight must hold %d values", g->path, half);
    float *f = malloc((size_t)half * sizeof *f);
    if (!f) return oz_fail(err, OZ_ERR_NOMEM, "out of memory");
    oz_ggml_dequantize(t->type, t->data, f, (size_t)half);
    float fmax_ = 0;
    for (int i = 0; i < half; i++) fmax_ = fmaxf(fmax_, f[i]);
    oz_llama_config c = *cfg;
    c.rope_type = OZ_ROPE_LLAMA3;
    int have = oz_gguf_find(g, "ounce.rope.llama3.factor") != NULL;
    oz_status st = OZ_OK;
    if (have) {
        if ((st = float_key(g, "ounce.rope.llama3.factor", 1, &c.rope_factor, err)) ||
            (st = float_key(g, "ounce.rope.llama3.low_freq_factor", 1, &c.rope_low_freq_factor, err)) ||
            (st = float_key(g, "ounce.rope.llama3.high_freq_factor", 4, &c.rope_high_freq_factor, err)) ||
            (st = int_key(g, "ounce.rope.llama3.original_context_length", 1, 0, 1, 1 << 30,
                          &c.rope_original_max_position_embeddings, err))) {
            free(f);
            return st;
        }
    }
    /* Llama 3.1 and 3.2 use factors 1 and 4 around 8192 original positions; a file that records
     * its original context length is tried with that. */
    int originals[] = {8192, 8192, 4096, 2048, 16384, 32768, 65536, 131072};
    int orig_key = 0;
    if (oz_gguf_find(g, "llama.rope.scaling.original_context_length") &&
        (st = int_key(g, "llama.rope.scaling.original_context_length", 1, 0, 1, 1 << 30, &orig_key, err)) != OZ_OK) {
        free(f);
        return st;
    }
    if (orig_key) originals[0] = orig_key;
    int found = 0;
    for (size_t k = 0; k < (have ? 1 : sizeof originals / sizeof originals[0]) && !found; k++) {
        if (!have) {
            c.rope_factor = fmax_;
            c.rope_low_freq_factor = 1;
            c.rope_high_freq_factor = 4;
            c.rope_original_max_position_embeddings = originals[k];
        }
        found = 1;
        for (int i = 0; i < half && found; i++) {
            double plain = pow((double)c.rope_theta, -(2.0 * i) / c.head_dim);
            double want = plain / oz_llama_rope_inv_freq(&c, i);
            found = fabs(want - f[i]) <= 1e-4 * fabs(want);
        }
    }
    free(f);
    if (!found)
        return oz_fail(err, OZ_ERR_INPUT, "%s: rope_freqs.weight holds rope factors ounce cannot express (only Llama "
                       "3.1's scaling is supported)", g->path);
    *cfg = c;
    return OZ_OK;
}

oz_status oz_gguf_config(const oz_gguf *g, oz_llama_config *cfg, char *tokenizer, oz_err *err) {
    memset(cfg, 0, sizeof *cfg);
    char arch[64];
    str_key(g, "general.architecture", arch, sizeof arch);
    if (!arch[0]) return oz_fail(err, OZ_ERR_INPUT, "%s: no general.architecture", g->path);
    if (strcmp(arch, "llama") != 0)
        return oz_fail(err, OZ_ERR_INPUT, "%s: architecture \"%s\" is not supported (only \"llama\")", g->path, arch);
    int experts = 0;
    const int big = 1 << 30;
    OZ_TRY(int_key(g, "llama.expert_count", 0, 0, 0, big, &experts, err));
    if (experts > 0)
        return oz_fail(err, OZ_ERR_INPUT, "%s: a mixture of %d experts is not supported", g->path, experts);
    OZ_TRY(int_key(g, "llama.embedding_length", 1, 0, 1, big, &cfg->hidden_size, err));
    OZ_TRY(int_key(g, "llama.block_count", 1, 0, 1, big, &cfg->num_hidden_layers, err));
    OZ_TRY(int_key(g, "llama.feed_forward_length", 1, 0, 1, big, &cfg->intermediate_size, err));
    OZ_TRY(int_key(g, "llama.attention.head_count", 1, 0, 1, big, &cfg->num_attention_heads, err));
    OZ_TRY(int_key(g, "llama.attention.head_count_kv", 0, cfg->num_attention_heads, 1, big,
                   &cfg->num_key_value_heads, err));
    OZ_TRY(int_key(g, "llama.context_length", 0, 2048, 1, big, &cfg->max_position_embeddings, err));
    OZ_TRY(int_key(g, "llama.attention.key_length", 0, cfg->hidden_size / cfg->num_attention_heads, 1, big,
                   &cfg->head_dim, err));
    int vlen = 0, rope_dims = 0;
    OZ_TRY(int_key(g, "llama.attention.value_length", 0, cfg->head_dim, 1, big, &vlen, err));
    OZ_TRY(int_key(g, "llama.rope.dimension_count", 0, cfg->head_dim, 1, big, &rope_dims, err));
    if (vlen != cfg->head_dim || rope_dims != cfg->head_dim)
        return oz_fail(err, OZ_ERR_INPUT, "%s: value_length %d and rope.dimension_count %d must equal the head size %d",
                       g->path, vlen, rope_dims, cfg->head_dim);
    OZ_TRY(float_key(g, "llama.attention.layer_norm_rms_epsilon", 1e-5f, &cfg->rms_norm_eps, err));
    OZ_TRY(float_key(g, "llama.rope.freq_base", 10000.0f, &cfg->rope_theta, err));
    char scaling[32];
    str_key(g, "llama.rope.scaling.type", scaling, sizeof scaling);
    float factor = 1;
    OZ_TRY(float_key(g, "llama.rope.scaling.factor", 1, &factor, err));
    if (!scaling[0] && oz_gguf_find(g, "llama.rope.scale_linear")) { /* the older key */
        OZ_TRY(float_key(g, "llama.rope.scale_linear", 1, &factor, err));
        snprintf(scaling, sizeof scaling, "linear");
    }
    cfg->rope_type = OZ_ROPE_DEFAULT;
    if (!strcmp(scaling, "linear") && factor != 1) {
        cfg->rope_type = OZ_ROPE_LINEAR;
        cfg->rope_factor = factor;
    } else if (scaling[0] && strcmp(scaling, "none") != 0 && strcmp(scaling, "linear") != 0) {
        return oz_fail(err, OZ_ERR_INPUT, "%s: llama.rope.scaling.type \"%s\" is not supported (none, linear)", g->path,
                       scaling);
    }
    OZ_TRY(read_rope_freqs(g, cfg, err));

    const oz_gguf_kv *tokens = oz_gguf_find(g, "tokenizer.ggml.tokens");
    const oz_gguf_tensor *embd = oz_gguf_find_tensor(g, "token_embd.weight");
    if (tokens && tokens->type == OZ_GGUF_ARRAY && tokens->n > 0 && tokens->n <= (uint64_t)big)
        cfg->vocab_size = (int)tokens->n;
    else if (oz_gguf_find(g, "llama.vocab_size"))
        OZ_TRY(int_key(g, "llama.vocab_size", 1, 0, 1, big, &cfg->vocab_size, err));
    else if (embd && embd->ndim == 2 && embd->dims[1] <= (uint64_t)big)
        cfg->vocab_size = (int)embd->dims[1];
    else
        return oz_fail(err, OZ_ERR_INPUT, "%s: no vocabulary size (no token list, llama.vocab_size or token_embd)",
                       g->path);
    cfg->tie_word_embeddings = oz_gguf_find_tensor(g, "output.weight") == NULL;
    OZ_TRY(int_key(g, "tokenizer.ggml.bos_token_id", 0, -1, 0, big, &cfg->bos_token_id, err));
    OZ_TRY(int_key(g, "tokenizer.ggml.eos_token_id", 0, -1, 0, big, &cfg->eos_token_id, err));
    if (tokenizer) {
        /* The names are short: 8 bytes fit every buffer callers pass (OZ_TOKENIZER_NAME_MAX). */
        snprintf(tokenizer, 8, "%s",
                 oz_gguf_is_byte_tokenizer(g) ? "byte" : oz_gguf_has_tokenizer(g) ? OZ_TOKENIZER_HF_NAME : "");
    }
    oz_status st = oz_llama_config_validate(cfg, err);
    if (st != OZ_OK) {
        char msg[sizeof err->msg];
        snprintf(msg, sizeof msg, "%s", err->msg);
        snprintf(err->msg, sizeof err->msg, "%.200s: %.300s", g->path, msg);
    }
    return st;
}

oz_status oz_gguf_config_read(const char *path, oz_llama_config *cfg, char *tokenizer, oz_err *err) {
    oz_gguf g;
    OZ_TRY(oz_gguf_open(&g, path, err));
    oz_status st = oz_gguf_config(&g, cfg, tokenizer, err);
    oz_gguf_close(&g);
    return st;
}

/* ---- weights in ---- */

/* The GGUF tensor for layout tensor p, checked: GGUF dims are innermost first, so an (out, in)
 * matrix is [in, out]. */
static oz_status find_param(const oz_gguf *g, const oz_param_info *p, const oz_gguf_tensor **out, oz_err *err) {
    char name[128];
    if (!oz_gguf_tensor_name(p->name, name, sizeof name))
        return oz_fail(err, OZ_ERR_INPUT, "%s: tensor %s has no GGUF name (a low-rank model?)", g->path, p->name);
    const oz_gguf_tensor *t = oz_gguf_find_tensor(g, name);
    if (!t) return oz_fail(err, OZ_ERR_INPUT, "%s: missing tensor \"%s\"", g->path, name);
    int ok = p->ndim == 1 ? t->ndim == 1 && t->dims[0] == (uint64_t)p->shape[0]
                          : t->ndim == 2 && t->dims[0] == (uint64_t)p->shape[1] && t->dims[1] == (uint64_t)p->shape[0];
    if (!ok) {
        char want[64];
        if (p->ndim == 1) snprintf(want, sizeof want, "[%lld]", (long long)p->shape[0]);
        else snprintf(want, sizeof want, "[%lld, %lld]", (long long)p->shape[1], (long long)p->shape[0]);
        return oz_fail(err, OZ_ERR_INPUT, "%s: tensor \"%s\" has %u dims [%llu, %llu, ...] but the config needs %s",
                       g->path, name, t->ndim, (unsigned long long)t->dims[0], (unsigned long long)t->dims[1], want);
    }
    *out = t;
    return OZ_OK;
}

oz_status oz_gguf_check_tensors(const oz_gguf *g, const oz_param_layout *lay, oz_err *err) {
    for (size_t i = 0; i < g->n_tensors; i++) {
        const char *n = g->tensors[i].name;
        if (!strcmp(n, "rope_freqs.weight")) continue;
        int known = 0;
        char name[128];
        for (int k = 0; k < lay->n && !known; k++)
            known = oz_gguf_tensor_name(lay->params[k].name, name, sizeof name) && !strcmp(name, n);
        if (!known)
            return oz_fail(err, OZ_ERR_INPUT, "%s: unexpected tensor \"%s\" (not part of a Llama with this config)",
                           g->path, n);
    }
    for (int k = 0; k < lay->n; k++) {
        const oz_gguf_tensor *t;
        OZ_TRY(find_param(g, &lay->params[k], &t, err));
    }
    return OZ_OK;
}

oz_status oz_gguf_read_param(const oz_gguf *g, const oz_llama_config *cfg, const oz_param_info *p, float *dst,
                             oz_err *err) {
    const oz_gguf_tensor *t;
    OZ_TRY(find_param(g, p, &t, err));
    if (!is_qk(p)) {
        oz_ggml_dequantize(t->type, t->data, dst, p->numel);
        return OZ_OK;
    }
    /* Row by row, each dequantized straight into its Hugging Face position. */
    size_t rows = (size_t)p->shape[0], cols = (size_t)p->shape[1], rb = oz_ggml_row_bytes(t->type, cols);
    for (size_t r = 0; r < rows; r++)
        oz_ggml_dequantize(t->type, (const uint8_t *)t->data + gguf_row(r, cfg->head_dim) * rb, dst + r * cols, cols);
    return OZ_OK;
}

oz_status oz_gguf_load_weights(oz_llama *m, oz_backend *be, const char *path, oz_err *err) {
    oz_gguf g;
    OZ_TRY(oz_gguf_open(&g, path, err));
    const oz_param_layout *lay = oz_llama_get_layout(m);
    const oz_llama_config *cfg = oz_llama_get_config(m);
    oz_status st = oz_gguf_check_tensors(&g, lay, err);
    float *staging = NULL;
    for (int i = 0; i < lay->n && st == OZ_OK; i++) {
        const oz_param_info *p = &lay->params[i];
        float *dst = oz_llama_param(m, i);
        if (dst && be->host_visible) {
            st = oz_gguf_read_param(&g, cfg, p, dst, err);
            continue;
        }
        float *tmp = realloc(staging, p->numel * sizeof *tmp);
        if (!tmp) {
            st = oz_fail(err, OZ_ERR_NOMEM, "out of memory loading %s", p->name);
            break;
        }
        staging = tmp;
        if ((st = oz_gguf_read_param(&g, cfg, p, staging, err)) == OZ_OK) oz_llama_write_param(m, i, staging);
    }
    free(staging);
    oz_gguf_close(&g);
    return st;
}

/* ---- weights out ---- */

/* llama.cpp's general.file_type for the matrices' type. */
static uint32_t file_type(uint32_t t) {
    switch (t) {
    case OZ_GGML_F16: return 1;
    case OZ_GGML_Q4_0: return 2;
    case OZ_GGML_Q8_0: return 7;
    case OZ_GGML_BF16: return 32;
    default: return 0;
    }
}

static uint32_t tensor_type(const oz_param_info *p, uint32_t want) {
    if (p->ndim == 1) return OZ_GGML_F32;
    if ((size_t)p->shape[1] % oz_ggml_block_elems(want) != 0) return OZ_GGML_F16;
    return want;
}

static oz_status export_meta(oz_gguf_meta *m, const oz_llama_config *c, const oz_gguf_export_opts *o, oz_err *err) {
    oz_gguf_meta_str(m, "general.architecture", "llama");
    if (o->name && o->name[0]) oz_gguf_meta_str(m, "general.name", o->name);
    oz_gguf_meta_u32(m, "general.alignment", OZ_GGUF_DEFAULT_ALIGNMENT);
    oz_gguf_meta_u32(m, "general.file_type", file_type(o->type));
    if (o->type == OZ_GGML_Q8_0 || o->type == OZ_GGML_Q4_0) oz_gguf_meta_u32(m, "general.quantization_version", 2);
    oz_gguf_meta_u32(m, "llama.vocab_size", (uint32_t)c->vocab_size);
    oz_gguf_meta_u32(m, "llama.context_length", (uint32_t)c->max_position_embeddings);
    oz_gguf_meta_u32(m, "llama.embedding_length", (uint32_t)c->hidden_size);
    oz_gguf_meta_u32(m, "llama.block_count", (uint32_t)c->num_hidden_layers);
    oz_gguf_meta_u32(m, "llama.feed_forward_length", (uint32_t)c->intermediate_size);
    oz_gguf_meta_u32(m, "llama.attention.head_count", (uint32_t)c->num_attention_heads);
    oz_gguf_meta_u32(m, "llama.attention.head_count_kv", (uint32_t)c->num_key_value_heads);
    oz_gguf_meta_u32(m, "llama.rope.dimension_count", (uint32_t)c->head_dim);
    if (c->head_dim * c->num_attention_heads != c->hidden_size) {
        oz_gguf_meta_u32(m, "llama.attention.key_length", (uint32_t)c->head_dim);
        oz_gguf_meta_u32(m, "llama.attention.value_length", (uint32_t)c->head_dim);
    }
    oz_gguf_meta_f32(m, "llama.attention.layer_norm_rms_epsilon", c->rms_norm_eps);
    oz_gguf_meta_f32(m, "llama.rope.freq_base", c->rope_theta);
    if (c->rope_type == OZ_ROPE_LINEAR) {
        oz_gguf_meta_str(m, "llama.rope.scaling.type", "linear");
        oz_gguf_meta_f32(m, "llama.rope.scaling.factor", c->rope_factor);
    } else if (c->rope_type == OZ_ROPE_LLAMA3) {
        /* llama.cpp takes the rope_freqs tensor; these let ounce read the parameters back exactly. */
        oz_gguf_meta_f32(m, "ounce.rope.llama3.factor", c->rope_factor);
        oz_gguf_meta_f32(m, "ounce.rope.llama3.low_freq_factor", c->rope_low_freq_factor);
        oz_gguf_meta_f32(m, "ounce.rope.llama3.high_freq_factor", c->rope_high_freq_factor);
        oz_gguf_meta_u32(m, "ounce.rope.llama3.original_context_length",
                         (uint32_t)c->rope_original_max_position_embeddings);
    }
    /* The tokenizer: a GGUF source's keys as they are, a tokenizer.json converted, or ounce's byte
     * vocabulary. A model without any gets none (llama.cpp then refuses it, saying so). */
    const char *src = o->tokenizer_src;
    if (src && src[0] && oz_gguf_is_file(src)) {
        oz_gguf g;
        OZ_TRY(oz_gguf_open(&g, src, err));
        oz_gguf_tokenizer_meta_copy(m, &g);
        const oz_gguf_kv *kind = oz_gguf_find(&g, "ounce.tokenizer");
        if (kind) oz_gguf_meta_copy(m, kind);
        oz_gguf_close(&g);
        return OZ_OK;
    }
    if (src && src[0]) {
        char path[4200];
        snprintf(path, sizeof path, "%s/tokenizer.json", src);
        FILE *f = fopen(path, "rb");
        if (f) {
            fclose(f);
            return oz_gguf_tokenizer_meta_from_dir(m, src, c->vocab_size, err);
        }
    }
    if (o->tokenizer && !strcmp(o->tokenizer, "byte"))
        oz_gguf_tokenizer_meta_byte(m, c->vocab_size, c->bos_token_id >= 0 ? c->bos_token_id : OZ_BYTE_BOS,
                                    c->eos_token_id >= 0 ? c->eos_token_id : OZ_BYTE_EOS);
    return OZ_OK;
}

oz_status oz_gguf_export(const char *path, const oz_llama_config *cfg, const oz_param_layout *lay, oz_gguf_param_fn fn,
                         void *ctx, const oz_gguf_export_opts *o, oz_err *err) {
    if (oz_llama_config_is_low_rank(cfg))
        return oz_fail(err, OZ_ERR_INTERNAL, "GGUF export of a low-rank layout: expand the factors first");
    if (!oz_ggml_type_writable(o->type))
        return oz_fail(err, OZ_ERR_INPUT, "GGUF type %s cannot be written (f32, f16, bf16, q8_0, q4_0)",
                       oz_ggml_type_name(o->type) ? oz_ggml_type_name(o->type) : "?");
    int llama3 = cfg->rope_type == OZ_ROPE_LLAMA3;
    size_t n = (size_t)lay->n + (llama3 ? 1 : 0);
    oz_gguf_tensor_spec *specs = calloc(n, sizeof *specs);
    char (*names)[128] = calloc(n, sizeof *names);
    oz_gguf_meta meta = {0};
    oz_gguf_writer *w = NULL;
    float *f32 = NULL, *perm = NULL;
    void *enc = NULL;
    size_t max_numel = (size_t)cfg->head_dim;
    oz_status st = specs && names ? OZ_OK : oz_fail(err, OZ_ERR_NOMEM, "out of memory writing %s", path);
    for (int i = 0; i < lay->n && st == OZ_OK; i++) {
        const oz_param_info *p = &lay->params[i];
        if (!oz_gguf_tensor_name(p->name, names[i], sizeof names[i])) {
            st = oz_fail(err, OZ_ERR_INTERNAL, "no GGUF name for %s", p->name);
            break;
        }
        specs[i].name = names[i];
        specs[i].type = tensor_type(p, o->type);
        specs[i].ndim = (uint32_t)p->ndim;
        specs[i].dims[0] = (uint64_t)(p->ndim == 1 ? p->shape[0] : p->shape[1]);
        specs[i].dims[1] = p->ndim == 1 ? 1 : (uint64_t)p->shape[0];
        if (p->numel > max_numel) max_numel = p->numel;
    }
    if (llama3 && st == OZ_OK) {
        snprintf(names[n - 1], sizeof names[n - 1], "rope_freqs.weight");
        specs[n - 1] = (oz_gguf_tensor_spec){names[n - 1], OZ_GGML_F32, 1, {(uint64_t)cfg->head_dim / 2, 1, 1, 1}};
    }
    if (st == OZ_OK) st = export_meta(&meta, cfg, o, err);
    if (st == OZ_OK) {
        f32 = malloc(max_numel * sizeof *f32);
        perm = malloc(max_numel * sizeof *perm);
        enc = malloc(max_numel * 4);
        if (!f32 || !perm || !enc) st = oz_fail(err, OZ_ERR_NOMEM, "out of memory writing %s", path);
    }
    if (st == OZ_OK) st = oz_gguf_write_begin(&w, path, &meta, specs, n, OZ_GGUF_DEFAULT_ALIGNMENT, err);
    for (int i = 0; i < lay->n && st == OZ_OK; i++) {
        const oz_param_info *p = &lay->params[i];
        if ((st = fn(ctx, p, f32, err)) != OZ_OK) break;
        const float *src = f32;
        if (is_qk(p)) {
            size_t rows = (size_t)p->shape[0], cols = (size_t)p->shape[1];
            for (size_t r = 0; r < rows; r++)
                memcpy(perm + gguf_row(r, cfg->head_dim) * cols, f32 + r * cols, cols * sizeof *perm);
            src = perm;
        }
        oz_ggml_quantize(specs[i].type, src, enc, p->numel);
        st = oz_gguf_write_tensor(w, enc, oz_ggml_row_bytes(specs[i].type, p->numel), err);
    }
    if (llama3 && st == OZ_OK) {
        int half = cfg->head_dim / 2;
        for (int i = 0; i < half; i++)
            f32[i] = (float)(pow((double)cfg->rope_theta, -(2.0 * i) / cfg->head_dim) / oz_llama_rope_inv_freq(cfg, i));
        st = oz_gguf_write_tensor(w, f32, (size_t)half * sizeof *f32, err);
    }
    if (w) {
        if (st == OZ_OK) st = oz_gguf_write_finish(w, err);
        else oz_gguf_write_abort(w);
    }
    oz_gguf_meta_free(&meta);
    free(specs);
    free(names);
    free(f32);
    free(perm);
    free(enc);
    return st;
}
