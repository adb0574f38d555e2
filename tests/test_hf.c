/* Hugging Face interop: models that transformers saved (tests/fixtures/hf, made by
 * tools/gen_hf_fixtures.py) load with ounce and give transformers' logits; config.json in both
 * transformers spellings; sharded and half-precision files; broken files fail with one clear
 * message; what ounce saves loads back bit for bit. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend/backend.h"
#include "harness.h"
#include "io/atomic.h"
#include "model/hf_model.h"
#include "io/safetensors.h"
#include "model/llama.h"

#ifndef FIXTURE_DIR
#define FIXTURE_DIR "tests/fixtures"
#endif

static oz_backend be;
static char g_tmp[64]; /* a fresh mkdtemp directory, removed at the end */

/* g_tmp/name */
static const char *tmp_path(char *buf, size_t cap, const char *name) {
    snprintf(buf, cap, "%s/%s", g_tmp, name);
    return buf;
}

/* Logits of `dir`'s model for the fixture's ids, against the fixture's (transformers') logits:
 * max |ours - theirs| / max |theirs|. Returns -1 (and records a failure) when it cannot run. */
static double logits_error(const char *dir, const char *expected_dir) {
    char path[1024];
    snprintf(path, sizeof path, "%s/expected.safetensors", expected_dir);
    oz_err err = {0};
    oz_safetensors st;
    if (oz_safetensors_open(&st, path, &err) != OZ_OK) {
        CHECK(0, "%s", err.msg);
        return -1;
    }
    const oz_st_tensor *ids_t = oz_safetensors_find(&st, "input_ids");
    const oz_st_tensor *ref_t = oz_safetensors_find(&st, "logits");
    CHECK(ids_t && ref_t && ids_t->ndim == 2 && ref_t->ndim == 3, "fixture %s is incomplete", path);
    if (!ids_t || !ref_t) {
        oz_safetensors_close(&st);
        return -1;
    }
    int B = (int)ids_t->shape[0], T = (int)ids_t->shape[1], V = (int)ref_t->shape[2];
    int32_t *ids = malloc(ids_t->nbytes);
    float *ref = malloc(ref_t->numel * sizeof *ref), *ours = malloc(ref_t->numel * sizeof *ours);
    memcpy(ids, ids_t->data, ids_t->nbytes);
    oz_st_tensor_to_f32(ref_t, ref, ref_t->numel, &err);
    oz_safetensors_close(&st);

    oz_arena arena;
    oz_arena_init(&arena, be.allocator);
    oz_llama *m = NULL;
    oz_llama_shape shape = {.batch = B, .seq = T};
    double rel = -1;
    if (oz_llama_load(&m, dir, &be, &arena, shape, NULL, &err) != OZ_OK) {
        CHECK(0, "loading %s: %s", dir, err.msg);
    } else {
        CHECK(oz_llama_get_config(m)->vocab_size == V, "vocab %d vs %d", oz_llama_get_config(m)->vocab_size, V);
        oz_llama_batch batch = {ids, NULL, B, T, ours};
        if (oz_llama_forward(m, &batch, NULL, NULL, &err) != OZ_OK) {
            CHECK(0, "forward: %s", err.msg);
        } else {
            double max_diff = 0, max_ref = 0;
            for (size_t i = 0; i < (size_t)B * T * V; i++) {
                double d = fabs((double)ours[i] - ref[i]);
                if (d > max_diff) max_diff = d;
                if (fabs(ref[i]) > max_ref) max_ref = fabs(ref[i]);
            }
            rel = max_diff / max_ref;
        }
    }
    oz_llama_destroy(m);
    oz_arena_destroy(&arena);
    free(ids);
    free(ref);
    free(ours);
    return rel;
}

static void check_case(const char *name) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/hf/%s", FIXTURE_DIR, name);
    double rel = logits_error(dir, dir);
    CHECK(rel >= 0 && rel <= 1e-4, "%s: logits differ from transformers by %.3g (relative)", name, rel);
    fprintf(stderr, "     %s: max |ounce - transformers| / max |transformers| = %.2g\n", name, rel);
}

static void test_gqa_linear_rope_f32(void) { check_case("gqa_linear_f32"); }
static void test_tied_bf16(void) { check_case("tied_bf16"); }
static void test_llama3_rope_sharded_f16(void) { check_case("llama3_sharded_f16"); }

static void test_llama3_config_read(void) {
    oz_llama_config cfg;
    oz_err err = {0};
    CHECK(oz_config_read(FIXTURE_DIR "/hf/llama3_sharded_f16/config.json", &cfg, NULL, &err) == OZ_OK, "%s",
          err.msg);
    CHECK(cfg.rope_type == OZ_ROPE_LLAMA3 && cfg.rope_factor == 8.0f && cfg.rope_original_max_position_embeddings == 8,
          "rope_parameters not read");
    CHECK(cfg.rope_theta == 500000.0f && cfg.head_dim == 16, "theta %g head_dim %d", (double)cfg.rope_theta,
          cfg.head_dim);
    /* Llama 3.1's own numbers (head_dim 128, 8192 original positions): the highest frequency is
     * kept, the lowest divided by the factor, one in the band blended. */
    cfg.head_dim = 128;
    cfg.rope_original_max_position_embeddings = 8192;
    double base_hi = 1.0, base_lo = pow(500000.0, -126.0 / 128.0);
    CHECK_CLOSE(oz_llama_rope_inv_freq(&cfg, 0), base_hi, 1e-12, 0, "highest frequency kept");
    CHECK_CLOSE(oz_llama_rope_inv_freq(&cfg, 63), base_lo / 8.0, 1e-12, 0, "lowest frequency scaled");
    /* Pair 40: wavelength 2 pi / 500000^(-80/128) ~ 24600 > 8192 / 1: fully scaled; pair 30: ~ 2680,
     * between 8192 / 4 and 8192: blended, so strictly between the scaled and the original. */
    double f40 = pow(500000.0, -80.0 / 128.0), f30 = pow(500000.0, -60.0 / 128.0);
    CHECK_CLOSE(oz_llama_rope_inv_freq(&cfg, 40), f40 / 8.0, 1e-12, 0, "low band scaled");
    double b = oz_llama_rope_inv_freq(&cfg, 30);
    double smooth = (8192.0 / (2 * M_PI / f30) - 1.0) / 3.0;
    CHECK_CLOSE(b, (1 - smooth) * f30 / 8.0 + smooth * f30, 1e-12, 0, "middle band blended");
    CHECK(b > f30 / 8.0 && b < f30, "blend outside its bounds");
}

/* A scratch directory with links to `src`'s files (all but `except`), so a test can replace one
 * file and leave the committed fixture alone. */
static void scratch_copy(const char *src, const char *dst, const char *except) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s' && for f in '%s'/*; do b=$(basename \"$f\"); "
             "[ \"$b\" = '%s' ] || cp \"$f\" '%s/'; done", dst, dst, src, except ? except : "", dst);
    CHECK(system(cmd) == 0, "cannot copy %s", src);
}

static void write_text(const char *path, const char *text) {
    oz_err err = {0};
    CHECK(oz_atomic_write(path, text, strlen(text), &err) == OZ_OK, "%s", err.msg);
}

/* transformers 4 wrote rope_theta beside rope_scaling (with "type" or "rope_type") and Llama 3.1
 * lists several eos ids: the same model must come out. */
static void test_legacy_config_spelling(void) {
    const char *src = FIXTURE_DIR "/hf/llama3_sharded_f16";
    char dst[256], cfg_path[256];
    tmp_path(dst, sizeof dst, "hf_legacy");
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", dst);
    scratch_copy(src, dst, "config.json");
    write_text(cfg_path,
               "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"vocab_size\": 80,"
               " \"hidden_size\": 32, \"intermediate_size\": 48, \"num_hidden_layers\": 2,"
               " \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"head_dim\": 16,"
               " \"max_position_embeddings\": 64, \"rms_norm_eps\": 1e-05, \"rope_theta\": 500000.0,"
               " \"rope_scaling\": {\"type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0,"
               " \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8},"
               " \"bos_token_id\": 1, \"eos_token_id\": [2, 3], \"torch_dtype\": \"float16\","
               " \"tie_word_embeddings\": false, \"pretraining_tp\": 1}\n");
    double rel = logits_error(dst, src);
    CHECK(rel >= 0 && rel <= 1e-4, "legacy spelling: logits differ by %.3g", rel);
    oz_llama_config cfg;
    oz_err err = {0};
    CHECK(oz_config_read(cfg_path, &cfg, NULL, &err) == OZ_OK, "%s", err.msg);
    CHECK(cfg.eos_token_id == 2, "first eos id of a list: %d", cfg.eos_token_id);
}

/* Loading `dir` fails with OZ_ERR_INPUT and a message containing `needle`. */
static void expect_load_error(const char *dir, const char *needle) {
    oz_arena arena;
    oz_arena_init(&arena, be.allocator);
    oz_llama *m = NULL;
    oz_err err = {0};
    oz_llama_shape shape = {.batch = 1, .seq = 8};
    oz_status st = oz_llama_load(&m, dir, &be, &arena, shape, NULL, &err);
    CHECK(st == OZ_ERR_INPUT, "%s: expected an input error, got %s", dir, oz_status_name(st));
    CHECK(strstr(err.msg, needle) != NULL, "message \"%s\" lacks \"%s\"", err.msg, needle);
    CHECK(strchr(err.msg, '\n') == NULL, "one line: %s", err.msg);
    oz_llama_destroy(m);
    oz_arena_destroy(&arena);
}

/* `src` copied to `d` with one fragment of its config.json replaced by another of the same length:
 * loading fails naming `needle`. */
static void expect_config_edit_error(const char *src, const char *d, const char *from, const char *to,
                                     const char *needle) {
    char src_cfg[512], dst_cfg[512];
    snprintf(src_cfg, sizeof src_cfg, "%s/config.json", src);
    snprintf(dst_cfg, sizeof dst_cfg, "%s/config.json", d);
    scratch_copy(src, d, "config.json");
    char *text = NULL;
    size_t n;
    oz_err err = {0};
    CHECK(oz_read_file(src_cfg, &text, &n, &err) == OZ_OK, "%s", err.msg);
    char *p = text ? strstr(text, from) : NULL;
    CHECK(p != NULL && strlen(from) == strlen(to), "fixture config spelling changed (%s)", from);
    if (p && strlen(from) == strlen(to)) {
        memcpy(p, to, strlen(to));
        write_text(dst_cfg, text);
        expect_load_error(d, needle);
    }
    free(text);
}

static void test_broken_checkpoints(void) {
    const char *sharded = FIXTURE_DIR "/hf/llama3_sharded_f16";
    const char *single = FIXTURE_DIR "/hf/gqa_linear_f32";
    char d[256], index[256], weights[256];
    tmp_path(d, sizeof d, "hf_broken");
    snprintf(index, sizeof index, "%s/model.safetensors.index.json", d);
    snprintf(weights, sizeof weights, "%s/model.safetensors", d);

    scratch_copy(sharded, d, "model-00002-of-00003.safetensors");
    expect_load_error(d, "shard model-00002-of-00003.safetensors is missing");

    scratch_copy(sharded, d, "model.safetensors.index.json");
    write_text(index, "{\"weight_map\": {\"model.norm.weight\": ");
    expect_load_error(d, "weight_map");

    scratch_copy(sharded, d, "model.safetensors.index.json");
    write_text(index,
               "{\"weight_map\": {\"model.norm.weight\": \"model-00001-of-00003.safetensors\"}}");
    expect_load_error(d, "is not in shard");

    scratch_copy(sharded, d, "model.safetensors.index.json");
    write_text(index,
               "{\"weight_map\": {\"model.norm.weight\": \"../../etc/passwd\"}}");
    expect_load_error(d, "invalid file name");

    /* A truncated shard. */
    scratch_copy(single, d, NULL);
    CHECK(truncate(weights, 5000) == 0, "truncate");
    expect_load_error(d, "model.safetensors");

    /* Shapes that do not match the config; an unsupported rope type names its field. */
    expect_config_edit_error(single, d, "\"intermediate_size\": 48", "\"intermediate_size\": 40",
                             "has shape [48, 32] but the config needs [40, 32]");
    expect_config_edit_error(single, d, "\"linear\"", "\"yarn\"  ",
                             "rope_parameters.rope_type\" = \"yarn\" is not supported");

    /* No weights at all. */
    scratch_copy(single, d, "model.safetensors");
    expect_load_error(d, "no model.safetensors or model.safetensors.index.json");
}

/* ounce writes what it read: save the bf16 tied model as ounce does (fp32, our config.json), load
 * it back, same logits (exactly: the weights are the same fp32 values). */
static void test_save_roundtrip(void) {
    const char *src = FIXTURE_DIR "/hf/llama3_sharded_f16";
    oz_arena arena;
    oz_arena_init(&arena, be.allocator);
    oz_llama *m = NULL;
    oz_err err = {0};
    oz_llama_shape shape = {.batch = 1, .seq = 8};
    if (oz_llama_load(&m, src, &be, &arena, shape, NULL, &err) != OZ_OK) {
        CHECK(0, "%s", err.msg);
        oz_arena_destroy(&arena);
        return;
    }
    const oz_param_layout *lay = oz_llama_get_layout(m);
    float *host = malloc(lay->total * sizeof *host);
    oz_llama_export_params(m, host);
    char saved[256], saved_cfg[256];
    tmp_path(saved, sizeof saved, "hf_saved");
    snprintf(saved_cfg, sizeof saved_cfg, "%s/config.json", saved);
    CHECK(oz_llama_save(saved, oz_llama_get_config(m), "", lay, host, &err) == OZ_OK, "%s",
          err.msg);
    free(host);
    oz_llama_destroy(m);
    oz_arena_destroy(&arena);
    oz_llama_config back;
    CHECK(oz_config_read(saved_cfg, &back, NULL, &err) == OZ_OK, "%s", err.msg);
    CHECK(back.rope_type == OZ_ROPE_LLAMA3 && back.rope_factor == 8.0f && back.rope_high_freq_factor == 4.0f &&
              back.rope_original_max_position_embeddings == 8 && back.head_dim == 16,
          "rope scaling does not round-trip");
    double rel = logits_error(saved, src);
    CHECK(rel >= 0 && rel <= 1e-4, "saved copy: logits differ by %.3g", rel);
}

/* Sizes in config.json are bounded by documented limits (llama.h: OZ_LLAMA_MAX_*) before anything
 * is sized by them: a 300-byte file with 2,000,000 layers made the parameter table allocate 5.9 GB,
 * and vocab_size x hidden_size near 2^62 wrapped the layout's size_t offsets (both found by the
 * config fuzz target). Each field past its limit is one line naming it; the limits themselves pass. */
static void test_config_bounds(void) {
    struct {
        const char *fields, *needle;
    } cases[] = {
        {"\"num_hidden_layers\": 2000000", "num_hidden_layers"},
        {"\"num_hidden_layers\": 257", "num_hidden_layers"},
        {"\"vocab_size\": 2147483647, \"hidden_size\": 262144, \"num_attention_heads\": 1, \"num_key_value_heads\": 1,"
         " \"head_dim\": 2",
         "vocab_size"},
        {"\"vocab_size\": 16777217", "vocab_size"},
        {"\"hidden_size\": 262145, \"num_attention_heads\": 1, \"num_key_value_heads\": 1, \"head_dim\": 2", "hidden_size"},
        {"\"intermediate_size\": 2147483647", "intermediate_size"},
        {"\"head_dim\": 4098", "head_dim"},
        {"\"num_attention_heads\": 1024, \"num_key_value_heads\": 1, \"head_dim\": 512", "num_attention_heads"},
        {"\"num_key_value_heads\": 1024, \"num_attention_heads\": 1024, \"head_dim\": 2, \"hidden_size\": 2048",
         NULL},
        {"\"max_position_embeddings\": 2147483647", "max_position_embeddings"},
        {"\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, \"original_max_position_embeddings\": 2147483647}",
         "original_max_position_embeddings"},
        /* bos/eos: an id, or null / -1 for none (what ounce writes as absent); another negative
         * number came back from a round trip as -1 (found by the config fuzz target). */
        {"\"eos_token_id\": -2", "eos_token_id"},
        {"\"bos_token_id\": -2147483648", "bos_token_id"},
        {"\"bos_token_id\": -1, \"eos_token_id\": null", NULL},
        {"\"num_hidden_layers\": 256, \"vocab_size\": 16777216, \"hidden_size\": 262144, \"intermediate_size\": 262144,"
         " \"num_attention_heads\": 64, \"num_key_value_heads\": 64, \"head_dim\": 4096, \"max_position_embeddings\": 16777216",
         NULL},
    };
    char path[256];
    tmp_path(path, sizeof path, "bounds_config.json");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        /* cJSON finds a key's first occurrence: the case's fields, written first, override the rest. */
        char text[1024];
        snprintf(text, sizeof text,
                 "{%s, \"model_type\": \"llama\", \"vocab_size\": 64, \"hidden_size\": 32, \"intermediate_size\": 48,"
                 " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"head_dim\": 8,"
                 " \"max_position_embeddings\": 64}",
                 cases[i].fields);
        write_text(path, text);
        oz_llama_config cfg;
        oz_err err = {0};
        oz_status st = oz_config_read(path, &cfg, NULL, &err);
        if (!cases[i].needle) {
            CHECK(st == OZ_OK, "at the limits: %s", err.msg);
            continue;
        }
        CHECK(st == OZ_ERR_INPUT && strstr(err.msg, cases[i].needle) && !strchr(err.msg, '\n'),
              "{%s}: status %s, \"%s\"", cases[i].fields, oz_status_name(st), err.msg);
    }
}

int main(void) {
    oz_err err = {0};
    if (oz_backend_cpu_create(&be, 1, &err) != OZ_OK) {
        fprintf(stderr, "backend: %s\n", err.msg);
        return 1;
    }
    snprintf(g_tmp, sizeof g_tmp, "/tmp/oz_test_hf.XXXXXX");
    if (!mkdtemp(g_tmp)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_gqa_linear_rope_f32);
    RUN(test_tied_bf16);
    RUN(test_llama3_rope_sharded_f16);
    RUN(test_llama3_config_read);
    RUN(test_legacy_config_spelling);
    RUN(test_broken_checkpoints);
    RUN(test_save_roundtrip);
    RUN(test_config_bounds);
    be.destroy(&be);
    oz_remove_tree(g_tmp, &err);
    return oz_test_finish("test_hf");
}
