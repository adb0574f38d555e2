/* GGUF files (io/gguf.c; model/gguf_model.c for the llama.* config and the weights;
 * data/tokenizer_gguf.c for tokenizer.ggml.*): the input is a whole .gguf file. An accepted file
 * must hand out values and tensors inside the mapping, read its values through the typed getters,
 * dequantize its tensors, and come back unchanged through the writer (every key's bytes, every
 * tensor's info and data). When it describes a Llama: a config that validates, the layout check,
 * and (small models) every weight read; when it carries a tokenizer: a tokenizer.json that loads,
 * or one OZ_ERR_INPUT line, and encodes and decodes a text. */
#include "fuzz.h"

#include "data/bpe.h"
#include "data/tokenizer_gguf.h"
#include "io/gguf.h"
#include "model/gguf_model.h"
#include "model/hf_model.h"
#include "model/llama.h"
#include "numeric/ggml_quant.h"

static const char *const names[] = {"in.gguf", "out.gguf", NULL};

/* Largest tensor or model dequantized per input. */
#define DECODE_MAX ((size_t)1 << 18)

static void check_error(oz_status s, const oz_err *err) {
    OZ_FUZZ_CHECK(s == OZ_ERR_INPUT && err->msg[0], "a bad file must be OZ_ERR_INPUT with a message (got %d: %s)",
                  (int)s, err->msg);
    OZ_FUZZ_CHECK(!strchr(err->msg, '\n'), "the message is one line: %s", err->msg);
    oz_fuzz_note("gguf", err->msg);
}

static int inside(const oz_gguf *g, const void *p, size_t n) {
    const uint8_t *lo = g->map, *q = p;
    return q >= lo && q <= lo + g->size && n <= (size_t)(lo + g->size - q);
}

static void check_values(const oz_gguf *g) {
    for (size_t i = 0; i < g->n_kv; i++) {
        const oz_gguf_kv *kv = &g->kv[i];
        OZ_FUZZ_CHECK(kv->key && inside(g, kv->raw, kv->raw_len), "key %zu outside the map", i);
        OZ_FUZZ_CHECK(oz_gguf_find(g, kv->key) != NULL, "key '%s' not found", kv->key);
        uint64_t u;
        double d;
        int b;
        oz_gguf_str s;
        (void)oz_gguf_get_uint(kv, &u);
        (void)oz_gguf_get_number(kv, &d);
        (void)oz_gguf_get_bool(kv, &b);
        if (oz_gguf_get_str(kv, &s)) OZ_FUZZ_CHECK(inside(g, s.s, s.len), "string of '%s' outside the map", kv->key);
        if (kv->type != OZ_GGUF_ARRAY) continue;
        for (uint64_t j = 0; j < kv->n && j < 4096; j++) (void)oz_gguf_array_number(kv, j, &d);
        if (kv->elem_type == OZ_GGUF_STRING) {
            OZ_FUZZ_CHECK(kv->n <= g->size / 8 + 1, "'%s': %llu strings in a %zu-byte file", kv->key,
                          (unsigned long long)kv->n, g->size);
            oz_gguf_str *all = malloc((size_t)kv->n * sizeof *all + 1);
            if (!all) abort();
            OZ_FUZZ_CHECK(oz_gguf_array_strings(kv, all), "'%s' is an array of strings", kv->key);
            for (uint64_t j = 0; j < kv->n; j++)
                OZ_FUZZ_CHECK(inside(g, all[j].s, all[j].len), "'%s'[%llu] outside the map", kv->key,
                              (unsigned long long)j);
            free(all);
        }
    }
}

static void check_tensors(const oz_gguf *g) {
    for (size_t i = 0; i < g->n_tensors; i++) {
        const oz_gguf_tensor *t = &g->tensors[i];
        OZ_FUZZ_CHECK(inside(g, t->data, t->nbytes), "tensor '%s' outside the map", t->name);
        OZ_FUZZ_CHECK(oz_gguf_find_tensor(g, t->name) == t, "tensor '%s' not found", t->name);
        OZ_FUZZ_CHECK(t->ndim >= 1 && t->ndim <= OZ_GGUF_MAX_DIMS && oz_ggml_type_readable(t->type), "'%s'", t->name);
        unsigned __int128 numel = 1;
        for (uint32_t k = 0; k < t->ndim; k++) numel *= t->dims[k];
        OZ_FUZZ_CHECK(numel == t->numel, "tensor '%s': numel", t->name);
        OZ_FUZZ_CHECK(t->nbytes == oz_ggml_row_bytes(t->type, t->dims[0]) * (t->numel / t->dims[0]),
                      "tensor '%s': %zu bytes", t->name, t->nbytes);
        if (t->numel > DECODE_MAX) continue;
        float *f = malloc((size_t)t->numel * sizeof *f + 1);
        if (!f) abort();
        oz_ggml_dequantize(t->type, t->data, f, (size_t)t->numel);
        free(f);
    }
}

/* Every key copied and every tensor written again: the same file, read back. */
static void round_trip(const oz_gguf *g) {
    for (size_t i = 0; i < g->n_tensors; i++)
        if (!oz_ggml_type_writable(g->tensors[i].type)) return;
    oz_gguf_meta m = {0};
    for (size_t i = 0; i < g->n_kv; i++) oz_gguf_meta_copy(&m, &g->kv[i]);
    oz_gguf_tensor_spec *specs = calloc(g->n_tensors + 1, sizeof *specs);
    if (!specs) abort();
    for (size_t i = 0; i < g->n_tensors; i++) {
        const oz_gguf_tensor *t = &g->tensors[i];
        specs[i] = (oz_gguf_tensor_spec){t->name, t->type, t->ndim, {0}};
        memcpy(specs[i].dims, t->dims, sizeof t->dims);
    }
    oz_err err = {0};
    const char *out = oz_fuzz_path("out.gguf", 1);
    oz_gguf_writer *w;
    oz_status s = oz_gguf_write_begin(&w, out, &m, specs, g->n_tensors, g->alignment, &err);
    OZ_FUZZ_CHECK(s == OZ_OK, "writing back a file that was read: %s", err.msg);
    for (size_t i = 0; i < g->n_tensors && s == OZ_OK; i++)
        s = oz_gguf_write_tensor(w, g->tensors[i].data, g->tensors[i].nbytes, &err);
    OZ_FUZZ_CHECK(s == OZ_OK, "writing a tensor back: %s", err.msg);
    OZ_FUZZ_CHECK(oz_gguf_write_finish(w, &err) == OZ_OK, "finishing: %s", err.msg);
    oz_gguf back;
    OZ_FUZZ_CHECK(oz_gguf_open(&back, out, &err) == OZ_OK, "reading back a file ounce wrote: %s", err.msg);
    OZ_FUZZ_CHECK(back.n_kv == g->n_kv && back.n_tensors == g->n_tensors && back.alignment == g->alignment,
                  "%zu keys, %zu tensors, alignment %u back of %zu, %zu, %u", back.n_kv, back.n_tensors,
                  back.alignment, g->n_kv, g->n_tensors, g->alignment);
    for (size_t i = 0; i < g->n_kv; i++) {
        const oz_gguf_kv *a = &g->kv[i], *b = &back.kv[i];
        OZ_FUZZ_CHECK(!strcmp(a->key, b->key) && a->type == b->type && a->raw_len == b->raw_len &&
                          !memcmp(a->raw, b->raw, a->raw_len),
                      "key '%s' changed in the round trip", a->key);
    }
    for (size_t i = 0; i < g->n_tensors; i++) {
        const oz_gguf_tensor *a = &g->tensors[i], *b = &back.tensors[i];
        OZ_FUZZ_CHECK(!strcmp(a->name, b->name) && a->type == b->type && a->ndim == b->ndim &&
                          !memcmp(a->dims, b->dims, sizeof a->dims) && a->nbytes == b->nbytes &&
                          (a->nbytes == 0 || !memcmp(a->data, b->data, a->nbytes)),
                      "tensor '%s' changed in the round trip", a->name);
    }
    oz_gguf_close(&back);
    oz_gguf_meta_free(&m);
    free(specs);
}

static void check_model(const oz_gguf *g) {
    oz_llama_config cfg;
    char tok[OZ_TOKENIZER_NAME_MAX];
    oz_err err = {0};
    oz_status s = oz_gguf_config(g, &cfg, tok, &err);
    if (s != OZ_OK) {
        check_error(s, &err);
        return;
    }
    OZ_FUZZ_CHECK(memchr(tok, '\0', sizeof tok), "tokenizer name not terminated");
    oz_param_layout lay;
    s = oz_param_layout_build(&cfg, &lay, &err);
    OZ_FUZZ_CHECK(s == OZ_OK, "a GGUF config has no layout: %s", err.msg);
    s = oz_gguf_check_tensors(g, &lay, &err);
    if (s != OZ_OK) {
        check_error(s, &err);
    } else if (lay.total <= DECODE_MAX) {
        float *buf = malloc(lay.total * sizeof *buf + 1);
        if (!buf) abort();
        for (int i = 0; i < lay.n; i++) {
            const oz_param_info *p = &lay.params[i];
            s = oz_gguf_read_param(g, &cfg, p, buf + p->offset, &err);
            OZ_FUZZ_CHECK(s == OZ_OK, "checked tensor '%s' does not read: %s", p->name, err.msg);
        }
        free(buf);
    }
    oz_param_layout_free(&lay);
}

static void check_tokenizer(const oz_gguf *g) {
    if (!oz_gguf_has_tokenizer(g)) return;
    char *json = NULL, *config = NULL;
    oz_err err = {0};
    oz_status s = oz_gguf_tokenizer_json(g, &json, &config, &err);
    if (s != OZ_OK) {
        check_error(s, &err);
        return;
    }
    OZ_FUZZ_CHECK(json != NULL, "no tokenizer.json text");
    oz_bpe *b = NULL;
    s = oz_bpe_load_string(&b, json, strlen(json), "gguf tokenizer", &err);
    if (s != OZ_OK) {
        check_error(s, &err);
    } else {
        static const char text[] = "Hello world! 12 caf\xc3\xa9 <s> </s>\n";
        oz_tokens ids = {0};
        oz_err e2 = {0};
        s = oz_bpe_encode(b, text, sizeof text - 1, 1, 1, &ids, &e2);
        if (s == OZ_OK) {
            for (size_t i = 0; i < ids.len; i++)
                OZ_FUZZ_CHECK(ids.ids[i] >= 0 && ids.ids[i] < oz_bpe_vocab_size(b), "id %d outside the vocabulary",
                              (int)ids.ids[i]);
            oz_text out = {0};
            OZ_FUZZ_CHECK(oz_bpe_decode(b, ids.ids, ids.len, 1, &out, &e2) == OZ_OK, "decode: %s", e2.msg);
            oz_text_free(&out);
        } else {
            check_error(s, &e2);
        }
        oz_tokens_free(&ids);
        oz_bpe_free(b);
    }
    free(json);
    free(config);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    oz_fuzz_dir(names);
    const char *path = oz_fuzz_write("in.gguf", data, size, 0);
    oz_gguf g;
    oz_err err = {0};
    oz_status s = oz_gguf_open(&g, path, &err);
    if (s != OZ_OK) {
        check_error(s, &err);
        return 0;
    }
    OZ_FUZZ_CHECK(oz_gguf_is_file(path), "opened, but not a GGUF file");
    /* A file without tensors may end before the padding that would start its data section. */
    OZ_FUZZ_CHECK((g.data_offset <= g.size || g.n_tensors == 0) && g.alignment >= 1 &&
                      (g.alignment & (g.alignment - 1)) == 0,
                  "data offset %zu, alignment %u", g.data_offset, g.alignment);
    check_values(&g);
    check_tensors(&g);
    round_trip(&g);
    check_model(&g);
    check_tokenizer(&g);
    oz_gguf_close(&g);
    return 0;
}
