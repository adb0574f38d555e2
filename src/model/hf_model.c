/* config.json and safetensors mapping for Llama models. */
#include "model/hf_model.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/atomic.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "io/weights.h"
#include "numeric/half.h"
#include "data/tokenizer_gguf.h"
#include "model/gguf_model.h"

static oz_status json_float(const cJSON *root, const char *path, const char *key, float dflt, float *out,
                            oz_err *err);

static oz_status json_int(const cJSON *root, const char *path, const char *key, bool required, int dflt,
                          int *out, oz_err *err) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!item || cJSON_IsNull(item)) {
        if (required) return oz_fail(err, OZ_ERR_INPUT, "%s: missing required field \"%s\"", path, key);
        *out = dflt;
        return OZ_OK;
    }
    if (!oz_json_int_in(item, -2147483648.0, 2147483647.0, out))
        return oz_fail(err, OZ_ERR_INPUT, "%s: field \"%s\" must be an integer", path, key);
    return OZ_OK;
}

/* bos/eos ids: an integer, or (Llama 3.1's eos_token_id) a list of them, of which the first is the
 * one ounce appends; null (or -1, how ounce holds it) means unknown. */
static oz_status json_token_id(const cJSON *root, const char *path, const char *key, int *out, oz_err *err) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(root, key);
    if (cJSON_IsArray(item)) {
        const cJSON *first = cJSON_GetArrayItem(item, 0);
        if (!first) {
            *out = -1;
            return OZ_OK;
        }
        if (!oz_json_int_in(first, 0, 2147483647.0, out))
            return oz_fail(err, OZ_ERR_INPUT, "%s: field \"%s\" must hold integer token ids", path, key);
        return OZ_OK;
    }
    if (!item || cJSON_IsNull(item)) {
        *out = -1;
        return OZ_OK;
    }
    if (!oz_json_int_in(item, -1, 2147483647.0, out))
        return oz_fail(err, OZ_ERR_INPUT, "%s: field \"%s\" must be a token id (an integer >= 0) or null", path, key);
    return OZ_OK;
}

/* rope_scaling (transformers < 5) or rope_parameters (>= 5, which also moves rope_theta inside). */
static oz_status read_rope(const cJSON *root, const char *path, oz_llama_config *cfg, oz_err *err) {
    const char *key = "rope_parameters";
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!rp || cJSON_IsNull(rp)) {
        key = "rope_scaling";
        rp = cJSON_GetObjectItemCaseSensitive(root, key);
    }
    OZ_TRY(json_float(root, path, "rope_theta", 10000.0f, &cfg->rope_theta, err));
    cfg->rope_type = OZ_ROPE_DEFAULT;
    if (!rp || cJSON_IsNull(rp)) return OZ_OK;
    if (!cJSON_IsObject(rp)) return oz_fail(err, OZ_ERR_INPUT, "%s: field \"%s\" must be an object", path, key);
    if (cJSON_GetObjectItemCaseSensitive(rp, "rope_theta"))
        OZ_TRY(json_float(rp, path, "rope_theta", cfg->rope_theta, &cfg->rope_theta, err));
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(rp, "rope_type");
    if (!type) type = cJSON_GetObjectItemCaseSensitive(rp, "type");
    const char *name = cJSON_IsString(type) ? type->valuestring : "default";
    if (strcmp(name, "default") == 0) return OZ_OK;
    if (strcmp(name, "linear") == 0) cfg->rope_type = OZ_ROPE_LINEAR;
    else if (strcmp(name, "llama3") == 0) cfg->rope_type = OZ_ROPE_LLAMA3;
    else
        return oz_fail(err, OZ_ERR_INPUT, "%s: field \"%s.rope_type\" = \"%s\" is not supported (default, linear, llama3)",
                       path, key, name);
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(rp, "factor");
    if (!oz_json_float(f, &cfg->rope_factor))
        return oz_fail(err, OZ_ERR_INPUT, "%s: field \"%s.factor\" must be a finite number", path, key);
    if (cfg->rope_type == OZ_ROPE_LLAMA3) {
        OZ_TRY(json_float(rp, path, "low_freq_factor", 1.0f, &cfg->rope_low_freq_factor, err));
        OZ_TRY(json_float(rp, path, "high_freq_factor", 4.0f, &cfg->rope_high_freq_factor, err));
        OZ_TRY(json_int(rp, path, "original_max_position_embeddings", true, 0,
                        &cfg->rope_original_max_position_embeddings, err));
    }
    return OZ_OK;
}

static oz_status json_float(const cJSON *root, const char *path, const char *key, float dflt, float *out,
                            oz_err *err) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!item || cJSON_IsNull(item)) {
        *out = dflt;
        return OZ_OK;
    }
    if (!oz_json_float(item, out))
        return oz_fail(err, OZ_ERR_INPUT, "%s: field \"%s\" must be a finite number", path, key);
    return OZ_OK;
}

/* A low-rank model's config.json: a model_type and architecture transformers does not know, so it
 * refuses the checkpoint with a clear message instead of loading random q_proj/... weights, and the
 * stored rank of every factored matrix ("model.layers.L.<module>": R). */
#define LOW_RANK_MODEL_TYPE "ounce_lowrank_llama"
#define LOW_RANK_ARCH "OunceLowRankLlamaForCausalLM"

static oz_status read_low_rank(const cJSON *root, const char *path, bool low_rank_type, oz_llama_config *cfg,
                               oz_err *err) {
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "ounce_low_rank");
    if (!map || cJSON_IsNull(map)) {
        if (low_rank_type) return oz_fail(err, OZ_ERR_INPUT, "%s: model_type \"%s\" needs an \"ounce_low_rank\" map",
                                          path, LOW_RANK_MODEL_TYPE);
        return OZ_OK;
    }
    if (!low_rank_type)
        return oz_fail(err, OZ_ERR_INPUT, "%s: \"ounce_low_rank\" needs model_type \"%s\"", path, LOW_RANK_MODEL_TYPE);
    if (!cJSON_IsObject(map)) return oz_fail(err, OZ_ERR_INPUT, "%s: \"ounce_low_rank\" must be an object", path);
    const cJSON *e;
    cJSON_ArrayForEach(e, map) {
        int layer = -1, used = 0, matrix = -1;
        if (sscanf(e->string, "model.layers.%d.%n", &layer, &used) == 1 && used > 0)
            for (int j = 0; j < OZ_LLAMA_MATRICES; j++)
                if (strcmp(e->string + used, oz_llama_matrix_path(j)) == 0) matrix = j;
        if (matrix < 0 || layer < 0 || layer >= OZ_LLAMA_MAX_LAYERS || layer >= cfg->num_hidden_layers)
            return oz_fail(err, OZ_ERR_INPUT, "%s: \"ounce_low_rank\" names \"%s\", not a layer matrix of this model",
                           path, e->string);
        int rank;
        if (!oz_json_int_in(e, 1, 1e9, &rank))
            return oz_fail(err, OZ_ERR_INPUT, "%s: rank of \"%s\" must be a positive integer", path, e->string);
        cfg->low_rank[layer][matrix] = rank;
    }
    return OZ_OK;
}

oz_status oz_config_read(const char *path, oz_llama_config *cfg, char *tokenizer, oz_err *err) {
    char *text;
    size_t n;
    OZ_TRY(oz_read_file(path, &text, &n, err));
    cJSON *root = cJSON_ParseWithLength(text, n);
    free(text);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return oz_fail(err, OZ_ERR_INPUT, "%s: not a valid JSON object", path);
    }
    oz_status st = OZ_OK;
    memset(cfg, 0, sizeof *cfg);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    bool low_rank_type = cJSON_IsString(type) && strcmp(type->valuestring, LOW_RANK_MODEL_TYPE) == 0;
    if (type && !low_rank_type && (!cJSON_IsString(type) || strcmp(type->valuestring, "llama") != 0)) {
        st = oz_fail(err, OZ_ERR_INPUT, "%s: model_type \"%s\" is not supported (only \"llama\")", path,
                     cJSON_IsString(type) ? type->valuestring : "?");
        goto done;
    }
    const cJSON *mlp_bias = cJSON_GetObjectItemCaseSensitive(root, "mlp_bias");
    if (mlp_bias && cJSON_IsTrue(mlp_bias)) {
        st = oz_fail(err, OZ_ERR_INPUT, "%s: field \"mlp_bias\" = true is not supported", path);
        goto done;
    }
    const cJSON *bias = cJSON_GetObjectItemCaseSensitive(root, "attention_bias");
    if (bias && cJSON_IsTrue(bias)) {
        st = oz_fail(err, OZ_ERR_INPUT, "%s: field \"attention_bias\" = true is not supported", path);
        goto done;
    }
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
    if (act && (!cJSON_IsString(act) || strcmp(act->valuestring, "silu") != 0)) {
        st = oz_fail(err, OZ_ERR_INPUT, "%s: field \"hidden_act\" must be \"silu\"", path);
        goto done;
    }
    if ((st = json_int(root, path, "vocab_size", true, 0, &cfg->vocab_size, err)) ||
        (st = json_int(root, path, "hidden_size", true, 0, &cfg->hidden_size, err)) ||
        (st = json_int(root, path, "intermediate_size", true, 0, &cfg->intermediate_size, err)) ||
        (st = json_int(root, path, "num_hidden_layers", true, 0, &cfg->num_hidden_layers, err)) ||
        (st = json_int(root, path, "num_attention_heads", true, 0, &cfg->num_attention_heads, err)) ||
        (st = json_int(root, path, "num_key_value_heads", false, cfg->num_attention_heads,
                       &cfg->num_key_value_heads, err)) ||
        (st = json_int(root, path, "max_position_embeddings", false, 2048, &cfg->max_position_embeddings,
                       err)) ||
        (st = json_token_id(root, path, "bos_token_id", &cfg->bos_token_id, err)) ||
        (st = json_token_id(root, path, "eos_token_id", &cfg->eos_token_id, err)) ||
        (st = json_float(root, path, "rms_norm_eps", 1e-6f, &cfg->rms_norm_eps, err)) ||
        (st = read_rope(root, path, cfg, err)))
        goto done;
    int default_hd = cfg->num_attention_heads > 0 ? cfg->hidden_size / cfg->num_attention_heads : 0;
    if ((st = json_int(root, path, "head_dim", false, default_hd, &cfg->head_dim, err))) goto done;
    if ((st = read_low_rank(root, path, low_rank_type, cfg, err))) goto done;
    const cJSON *tie = cJSON_GetObjectItemCaseSensitive(root, "tie_word_embeddings");
    cfg->tie_word_embeddings = tie && cJSON_IsTrue(tie);
    if (tokenizer) {
        const cJSON *tok = cJSON_GetObjectItemCaseSensitive(root, "ounce_tokenizer");
        snprintf(tokenizer, OZ_TOKENIZER_NAME_MAX, "%s", cJSON_IsString(tok) ? tok->valuestring : "");
    }
    st = oz_llama_config_validate(cfg, err);
    if (st != OZ_OK) {
        /* Prefix the message with the file so the user knows which config is wrong. */
        char msg[sizeof err->msg];
        snprintf(msg, sizeof msg, "%s", err->msg);
        oz_err_clear(err);
        oz_fail(err, st, "%.200s: %.300s", path, msg);
    }
done:
    cJSON_Delete(root);
    return st;
}

oz_status oz_config_write(const char *path, const oz_llama_config *c, const char *tokenizer, oz_err *err) {
    return oz_config_write_dtype(path, c, tokenizer, "float32", err);
}

oz_status oz_copy_hf_side_files(const char *from, const char *to, oz_err *err) {
    static const char *const names[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                        "generation_config.json"};
    if (!from || !from[0] || strcmp(from, to) == 0) return OZ_OK;
    if (oz_gguf_is_file(from)) { /* a GGUF's tokenizer as Hugging Face files */
        oz_gguf g;
        OZ_TRY(oz_gguf_open(&g, from, err));
        oz_status st = oz_gguf_tokenizer_write_files(&g, to, err);
        oz_gguf_close(&g);
        return st;
    }
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char src[4200], dst[4200];
        snprintf(src, sizeof src, "%s/%s", from, names[i]);
        snprintf(dst, sizeof dst, "%s/%s", to, names[i]);
        if (access(src, R_OK) != 0) continue;
        char *text;
        size_t n;
        OZ_TRY(oz_read_file(src, &text, &n, err));
        oz_status st = oz_atomic_write(dst, text, n, err);
        free(text);
        OZ_TRY(st);
    }
    return OZ_OK;
}

oz_status oz_config_write_dtype(const char *path, const oz_llama_config *c, const char *tokenizer,
                                const char *torch_dtype, oz_err *err) {
    cJSON *root = cJSON_CreateObject();
    cJSON *arch = cJSON_AddArrayToObject(root, "architectures");
    bool low_rank = oz_llama_config_is_low_rank(c);
    cJSON_AddItemToArray(arch, cJSON_CreateString(low_rank ? LOW_RANK_ARCH : "LlamaForCausalLM"));
    cJSON_AddStringToObject(root, "model_type", low_rank ? LOW_RANK_MODEL_TYPE : "llama");
    cJSON_AddNumberToObject(root, "vocab_size", c->vocab_size);
    cJSON_AddNumberToObject(root, "hidden_size", c->hidden_size);
    cJSON_AddNumberToObject(root, "intermediate_size", c->intermediate_size);
    cJSON_AddNumberToObject(root, "num_hidden_layers", c->num_hidden_layers);
    cJSON_AddNumberToObject(root, "num_attention_heads", c->num_attention_heads);
    cJSON_AddNumberToObject(root, "num_key_value_heads", c->num_key_value_heads);
    cJSON_AddNumberToObject(root, "head_dim", c->head_dim);
    cJSON_AddNumberToObject(root, "max_position_embeddings", c->max_position_embeddings);
    cJSON_AddNumberToObject(root, "rms_norm_eps", c->rms_norm_eps);
    cJSON_AddNumberToObject(root, "rope_theta", c->rope_theta);
    if (c->rope_type != OZ_ROPE_DEFAULT) {
        /* The pre-5 spelling: transformers 5 still reads it (into rope_parameters), 4.x only reads this. */
        cJSON *rs = cJSON_AddObjectToObject(root, "rope_scaling");
        cJSON_AddStringToObject(rs, "rope_type", c->rope_type == OZ_ROPE_LINEAR ? "linear" : "llama3");
        cJSON_AddNumberToObject(rs, "factor", c->rope_factor);
        if (c->rope_type == OZ_ROPE_LLAMA3) {
            cJSON_AddNumberToObject(rs, "low_freq_factor", c->rope_low_freq_factor);
            cJSON_AddNumberToObject(rs, "high_freq_factor", c->rope_high_freq_factor);
            cJSON_AddNumberToObject(rs, "original_max_position_embeddings", c->rope_original_max_position_embeddings);
        }
    }
    cJSON_AddBoolToObject(root, "tie_word_embeddings", c->tie_word_embeddings);
    cJSON_AddStringToObject(root, "hidden_act", "silu");
    cJSON_AddBoolToObject(root, "attention_bias", 0);
    cJSON_AddBoolToObject(root, "mlp_bias", 0);
    cJSON_AddNumberToObject(root, "initializer_range", 0.02);
    cJSON_AddStringToObject(root, "torch_dtype", torch_dtype);
    if (c->bos_token_id >= 0) cJSON_AddNumberToObject(root, "bos_token_id", c->bos_token_id);
    if (c->eos_token_id >= 0) cJSON_AddNumberToObject(root, "eos_token_id", c->eos_token_id);
    if (tokenizer && tokenizer[0]) cJSON_AddStringToObject(root, "ounce_tokenizer", tokenizer);
    if (low_rank) {
        cJSON *map = cJSON_AddObjectToObject(root, "ounce_low_rank");
        for (int l = 0; l < c->num_hidden_layers && l < OZ_LLAMA_MAX_LAYERS; l++)
            for (int j = 0; j < OZ_LLAMA_MATRICES; j++) {
                if (!c->low_rank[l][j]) continue;
                char key[64];
                snprintf(key, sizeof key, "model.layers.%d.%s", l, oz_llama_matrix_path(j));
                cJSON_AddNumberToObject(map, key, c->low_rank[l][j]);
            }
    }
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) return oz_fail(err, OZ_ERR_NOMEM, "out of memory writing %s", path);
    size_t len = strlen(text);
    char *with_nl = realloc(text, len + 2);
    if (!with_nl) {
        free(text);
        return oz_fail(err, OZ_ERR_NOMEM, "out of memory writing %s", path);
    }
    with_nl[len] = '\n';
    oz_status st = oz_atomic_write(path, with_nl, len + 1, err);
    free(with_nl);
    return st;
}

oz_status oz_llama_resolve(const char *spec, oz_llama_config *cfg, char *tokenizer, bool *is_preset,
                           oz_err *err) {
    if (tokenizer) tokenizer[0] = '\0';
    *is_preset = false;
    if (oz_llama_preset(spec, cfg)) {
        *is_preset = true;
        return OZ_OK;
    }
    struct stat sb;
    if (stat(spec, &sb) != 0)
        return oz_fail(err, OZ_ERR_INPUT, "--model %s: not a preset (%s), and no such file or directory",
                       spec, oz_llama_preset_names());
    if (S_ISDIR(sb.st_mode)) {
        char path[4096];
        snprintf(path, sizeof path, "%s/config.json", spec);
        return oz_config_read(path, cfg, tokenizer, err);
    }
    if (oz_gguf_is_file(spec)) return oz_gguf_config_read(spec, cfg, tokenizer, err);
    return oz_config_read(spec, cfg, tokenizer, err);
}

oz_status oz_tensors_save(const char *path, const oz_param_layout *layout, const float *const *buffers,
                          const char *const *prefixes, int n_buffers, oz_err *err) {
    int n = layout->n * n_buffers;
    oz_st_entry *entries = calloc((size_t)n, sizeof *entries);
    char(*names)[128] = calloc((size_t)n, sizeof *names);
    if (!entries || !names) {
        free(entries);
        free(names);
        return oz_fail(err, OZ_ERR_NOMEM, "out of memory saving %s", path);
    }
    for (int b = 0; b < n_buffers; b++) {
        for (int i = 0; i < layout->n; i++) {
            const oz_param_info *p = &layout->params[i];
            int e = b * layout->n + i;
            snprintf(names[e], sizeof names[e], "%s%s", prefixes[b], p->name);
            entries[e].name = names[e];
            entries[e].dtype = OZ_DT_F32;
            entries[e].ndim = p->ndim;
            entries[e].shape[0] = p->shape[0];
            entries[e].shape[1] = p->shape[1];
            entries[e].data = buffers[b] + p->offset;
        }
    }
    oz_status st = oz_safetensors_write(path, entries, n, NULL, err);
    free(entries);
    free(names);
    return st;
}

static void shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t used = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && used < cap; i++)
        used += (size_t)snprintf(buf + used, cap - used, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (used < cap) snprintf(buf + used, cap - used, "]");
}

/* A stored tensor can be read as layout tensor p: floating, with p's shape. `name` is what the file
 * calls it (prefixed for optimizer state). */
static oz_status check_tensor(const oz_st_tensor *t, const oz_param_info *p, const char *name, oz_err *err) {
    if (!oz_dtype_is_float(t->dtype))
        return oz_fail(err, OZ_ERR_INPUT, "%s: tensor \"%s\" has dtype %s, not a floating type", t->path, name,
                       oz_dtype_name(t->dtype));
    if (t->ndim != p->ndim || t->shape[0] != p->shape[0] || (p->ndim == 2 && t->shape[1] != p->shape[1])) {
        char have[64], want[64];
        shape_str(have, sizeof have, t->ndim, t->shape);
        shape_str(want, sizeof want, p->ndim, p->shape);
        return oz_fail(err, OZ_ERR_INPUT, "%s: tensor \"%s\" has shape %s but the config needs %s", t->path, name,
                       have, want);
    }
    return OZ_OK;
}

oz_status oz_tensors_load(const char *path, const oz_param_layout *layout, float *const *buffers,
                          const char *const *prefixes, int n_buffers, oz_err *err) {
    oz_safetensors st;
    OZ_TRY(oz_safetensors_open(&st, path, err));
    oz_status s = OZ_OK;
    int expected = layout->n * n_buffers;
    if (st.n_tensors != expected) {
        /* Find a name that is not ours to make the message concrete. */
        for (int t = 0; t < st.n_tensors && s == OZ_OK; t++) {
            bool known = false;
            for (int b = 0; b < n_buffers && !known; b++) {
                size_t plen = strlen(prefixes[b]);
                const char *nm = st.tensors[t].name;
                known = strncmp(nm, prefixes[b], plen) == 0 && oz_param_layout_find(layout, nm + plen);
            }
            if (!known)
                s = oz_fail(err, OZ_ERR_INPUT,
                            "%s: unexpected tensor \"%s\" (not part of a Llama with this config)", path,
                            st.tensors[t].name);
        }
    }
    for (int b = 0; b < n_buffers && s == OZ_OK; b++) {
        for (int i = 0; i < layout->n && s == OZ_OK; i++) {
            const oz_param_info *p = &layout->params[i];
            char name[160];
            snprintf(name, sizeof name, "%s%s", prefixes[b], p->name);
            const oz_st_tensor *t = oz_safetensors_find(&st, name);
            if (!t) {
                s = oz_fail(err, OZ_ERR_INPUT, "%s: missing tensor \"%s\"", path, name);
                break;
            }
            if ((s = check_tensor(t, p, name, err)) != OZ_OK) break;
            s = oz_st_tensor_to_f32(t, buffers[b] + p->offset, p->numel, err);
        }
    }
    if (s == OZ_OK && st.n_tensors != expected)
        s = oz_fail(err, OZ_ERR_INPUT, "%s: holds %d tensors, expected %d", path, st.n_tensors, expected);
    oz_safetensors_close(&st);
    return s;
}

oz_status oz_llama_save(const char *dir, const oz_llama_config *cfg, const char *tokenizer,
                        const oz_param_layout *layout, const float *params, oz_err *err) {
    OZ_TRY(oz_mkdir_p(dir, err));
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    const float *bufs[1] = {params};
    const char *prefixes[1] = {""};
    OZ_TRY(oz_tensors_save(path, layout, bufs, prefixes, 1, err));
    snprintf(path, sizeof path, "%s/config.json", dir);
    return oz_config_write(path, cfg, tokenizer, err);
}

oz_status oz_llama_save_bf16(const char *dir, const oz_llama_config *cfg, const char *tokenizer,
                             const oz_param_layout *layout, const float *params, oz_err *err) {
    OZ_TRY(oz_mkdir_p(dir, err));
    oz_st_entry *entries = calloc((size_t)layout->n, sizeof *entries);
    uint16_t *half = malloc(layout->total * sizeof *half);
    if (!entries || !half) {
        free(entries);
        free(half);
        return oz_fail(err, OZ_ERR_NOMEM, "out of memory saving %s in bf16", dir);
    }
    for (int i = 0; i < layout->n; i++) {
        const oz_param_info *p = &layout->params[i];
        for (size_t j = 0; j < p->numel; j++) half[p->offset + j] = oz_f32_to_bf16(params[p->offset + j]);
        entries[i] = (oz_st_entry){.name = p->name, .dtype = OZ_DT_BF16, .ndim = p->ndim,
                                   .shape = {p->shape[0], p->shape[1]}, .data = half + p->offset};
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    oz_status st = oz_safetensors_write(path, entries, layout->n, NULL, err);
    free(entries);
    free(half);
    OZ_TRY(st);
    snprintf(path, sizeof path, "%s/config.json", dir);
    return oz_config_write_dtype(path, cfg, tokenizer, "bfloat16", err);
}

/* Tensors a Hugging Face checkpoint may hold that are not parameters of the model: old Llama
 * checkpoints stored RoPE's inverse frequencies, and some tied models still save the head. */
static bool ignorable_tensor(const oz_llama_config *cfg, const char *name) {
    size_t n = strlen(name);
    const char *inv = ".rotary_emb.inv_freq";
    if (n >= strlen(inv) && strcmp(name + n - strlen(inv), inv) == 0) return true;
    return cfg->tie_word_embeddings && strcmp(name, "lm_head.weight") == 0;
}

oz_status oz_weight_files_check(const oz_weight_files *w, const oz_param_layout *lay, const oz_llama_config *cfg,
                                oz_err *err) {
    for (int f = 0; f < w->n_files; f++)
        for (int t = 0; t < w->files[f].n_tensors; t++) {
            const char *name = w->files[f].tensors[t].name;
            if (!oz_param_layout_find(lay, name) && !ignorable_tensor(cfg, name))
                return oz_fail(err, OZ_ERR_INPUT, "%s: unexpected tensor \"%s\" (not part of a Llama with this config)",
                               w->files[f].path, name);
        }
    const char *where = w->index_path[0] ? w->index_path : w->files[0].path;
    for (int i = 0; i < lay->n; i++) {
        const oz_param_info *p = &lay->params[i];
        const oz_st_tensor *t = oz_weight_files_find(w, p->name);
        if (!t) return oz_fail(err, OZ_ERR_INPUT, "%s: missing tensor \"%s\"", where, p->name);
        OZ_TRY(check_tensor(t, p, p->name, err));
    }
    return OZ_OK;
}

oz_status oz_llama_load_weights(oz_llama *m, oz_backend *be, const char *dir, oz_err *err) {
    if (oz_gguf_is_file(dir)) return oz_gguf_load_weights(m, be, dir, err);
    oz_weight_files w;
    OZ_TRY(oz_weight_files_open(&w, dir, err));
    const oz_param_layout *lay = oz_llama_get_layout(m);
    oz_status st = oz_weight_files_check(&w, lay, oz_llama_get_config(m), err);
    float *staging = NULL;
    for (int i = 0; i < lay->n && st == OZ_OK; i++) {
        const oz_param_info *p = &lay->params[i];
        const oz_st_tensor *t = oz_weight_files_find(&w, p->name);
        /* Straight from the mapping into the weights when they are plain host memory; through one
         * tensor's staging buffer otherwise (device memory, or INT8 codes to quantize). */
        float *dst = oz_llama_param(m, i); /* NULL for INT8 codes and bf16 rows */
        if (dst && be->host_visible) {
            st = oz_st_tensor_to_f32(t, dst, p->numel, err);
            oz_st_tensor_release(t);
            continue;
        }
        float *tmp = realloc(staging, p->numel * sizeof *tmp);
        if (!tmp) {
            st = oz_fail(err, OZ_ERR_NOMEM, "out of memory loading %s", p->name);
            break;
        }
        staging = tmp;
        if ((st = oz_st_tensor_to_f32(t, staging, p->numel, err)) == OZ_OK) oz_llama_write_param(m, i, staging);
        oz_st_tensor_release(t);
    }
    free(staging);
    oz_weight_files_close(&w);
    return st;
}

oz_status oz_llama_load(oz_llama **out, const char *dir, oz_backend *be, oz_arena *arena,
                        oz_llama_shape shape, char *tokenizer, oz_err *err) {
    *out = NULL;
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    oz_llama_config cfg;
    if (oz_gguf_is_file(dir)) OZ_TRY(oz_gguf_config_read(dir, &cfg, tokenizer, err));
    else OZ_TRY(oz_config_read(path, &cfg, tokenizer, err));
    oz_llama *m;
    OZ_TRY(oz_llama_create(&m, &cfg, be, arena, shape, err));
    oz_status st = oz_llama_load_weights(m, be, dir, err);
    if (st != OZ_OK) {
        oz_llama_destroy(m);
        return st;
    }
    *out = m;
    return OZ_OK;
}
