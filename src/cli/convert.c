/* `ounce convert`: a model (an ounce checkpoint with its optimizer and trainer state, a step-N
 * directory, a Hugging Face model, single-file or sharded, or a .gguf file) written out as a plain
 * Hugging Face model: config.json, model.safetensors (or shards plus model.safetensors.index.json)
 * in the chosen dtype, and the tokenizer files; or, with --to gguf, as one GGUF file for llama.cpp
 * in the chosen ggml type. It streams one shard (one tensor for GGUF) at a time, so converting a
 * model needs memory for that, not for the model. The output appears atomically. */
#include <cblas.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "io/atomic.h"
#include "io/safetensors.h"
#include "io/weights.h"
#include "model/gguf_model.h"
#include "numeric/ggml_quant.h"
#include "train/plan.h"

typedef struct {
    const char *name; /* ours and safetensors' */
    oz_dtype dtype;
    const char *torch_name;
} dtype_choice;

static const dtype_choice dtypes[] = {
    {"f32", OZ_DT_F32, "float32"}, {"bf16", OZ_DT_BF16, "bfloat16"}, {"f16", OZ_DT_F16, "float16"}};

/* Converts n floats into dst in `dt` (BF16 or F16). */
static void encode(const float *src, size_t n, oz_dtype dt, void *dst) {
    uint16_t *h = dst;
    for (size_t i = 0; i < n; i++) h[i] = dt == OZ_DT_BF16 ? oz_f32_to_bf16(src[i]) : oz_f32_to_f16(src[i]);
}

/* A low-rank model's factored matrix, expanded: W = B A from "<module>.lrc_A.weight" (R x in) and
 * "<module>.lrc_B.weight" (out x R). */
static oz_status expand_factors(const oz_weight_files *w, const oz_param_info *p, float *W, oz_err *err) {
    char name[160];
    size_t base = strlen(p->name) - strlen(".weight");
    snprintf(name, sizeof name, "%.*s.lrc_A.weight", (int)base, p->name);
    const oz_st_tensor *ta = oz_weight_files_find(w, name);
    snprintf(name, sizeof name, "%.*s.lrc_B.weight", (int)base, p->name);
    const oz_st_tensor *tb = oz_weight_files_find(w, name);
    if (!ta || !tb) return oz_fail(err, OZ_ERR_INPUT, "missing tensor \"%s\" or its factors", p->name);
    int R = (int)ta->shape[0], out = (int)p->shape[0], in = (int)p->shape[1];
    float *A = malloc(ta->numel * sizeof *A), *B = malloc(tb->numel * sizeof *B);
    oz_status st = A && B ? OZ_OK : oz_fail(err, OZ_ERR_NOMEM, "out of memory expanding %s", p->name);
    if (st == OZ_OK) st = oz_st_tensor_to_f32(ta, A, ta->numel, err);
    if (st == OZ_OK) st = oz_st_tensor_to_f32(tb, B, tb->numel, err);
    if (st == OZ_OK) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, out, in, R, 1.0f, B, R, A, in, 0.0f, W, in);
    free(A);
    free(B);
    return st;
}

/* The model being converted: a directory's weight files or a GGUF file, and its config (a
 * low-rank one keeps its factors, which source_param multiplies out). */
typedef struct {
    bool gguf;
    oz_gguf g;
    oz_weight_files w;
    oz_llama_config cfg;
    char tokenizer[OZ_TOKENIZER_NAME_MAX];
} source;

static void source_close(source *s) {
    if (s->gguf) oz_gguf_close(&s->g);
    else oz_weight_files_close(&s->w);
}

/* Opens `in` and checks every tensor against its config. */
static oz_status source_open(source *s, const char *in, oz_err *err) {
    memset(s, 0, sizeof *s);
    oz_param_layout lay;
    oz_status st;
    if ((s->gguf = oz_gguf_is_file(in))) {
        OZ_TRY(oz_gguf_open(&s->g, in, err));
        st = oz_gguf_config(&s->g, &s->cfg, s->tokenizer, err);
        if (st == OZ_OK && (st = oz_param_layout_build(&s->cfg, &lay, err)) == OZ_OK) {
            st = oz_gguf_check_tensors(&s->g, &lay, err);
            oz_param_layout_free(&lay);
        }
    } else {
        char path[4200];
        snprintf(path, sizeof path, "%s/config.json", in);
        OZ_TRY(oz_config_read(path, &s->cfg, s->tokenizer, err));
        OZ_TRY(oz_weight_files_open(&s->w, in, err));
        if ((st = oz_param_layout_build(&s->cfg, &lay, err)) == OZ_OK) {
            st = oz_weight_files_check(&s->w, &lay, &s->cfg, err);
            oz_param_layout_free(&lay);
        }
    }
    if (st != OZ_OK) source_close(s);
    return st;
}

/* Dense tensor p of the output layout in fp32, Hugging Face order. */
static oz_status source_param(void *ctx, const oz_param_info *p, float *dst, oz_err *err) {
    const source *s = ctx;
    if (s->gguf) return oz_gguf_read_param(&s->g, &s->cfg, p, dst, err);
    const oz_st_tensor *t = oz_weight_files_find(&s->w, p->name);
    return t ? oz_st_tensor_to_f32(t, dst, p->numel, err) : expand_factors(&s->w, p, dst, err);
}

/* Writes tensors [first, last) of the layout as one safetensors file. */
static oz_status write_shard(const char *path, const oz_param_layout *lay, const source *src, int first,
                             int last, oz_dtype dt, oz_err *err) {
    int n = last - first;
    oz_st_entry *entries = calloc((size_t)n, sizeof *entries);
    void **bufs = calloc((size_t)n, sizeof *bufs);
    float *f32 = NULL;
    oz_status st = OZ_OK;
    if (!entries || !bufs) st = oz_fail(err, OZ_ERR_NOMEM, "out of memory converting");
    for (int i = 0; i < n && st == OZ_OK; i++) {
        const oz_param_info *p = &lay->params[first + i];
        /* fp32 output is converted straight into the entry's buffer; half precision via one fp32 tensor. */
        bool direct = dt == OZ_DT_F32;
        float *tmp = direct ? f32 : realloc(f32, p->numel * sizeof *f32);
        bufs[i] = malloc(p->numel * oz_dtype_size(dt));
        if ((!direct && !tmp) || !bufs[i]) {
            if (tmp) f32 = tmp;
            st = oz_fail(err, OZ_ERR_NOMEM, "out of memory converting %s", p->name);
            break;
        }
        f32 = tmp;
        float *dst = direct ? bufs[i] : f32;
        if ((st = source_param((void *)src, p, dst, err)) != OZ_OK) break;
        if (!direct) encode(f32, p->numel, dt, bufs[i]);
        entries[i] = (oz_st_entry){p->name, dt, p->ndim, {p->shape[0], p->shape[1]}, bufs[i]};
    }
    if (st == OZ_OK) st = oz_safetensors_write(path, entries, n, NULL, err);
    for (int i = 0; bufs && i < n; i++) free(bufs[i]);
    free(bufs);
    free(entries);
    free(f32);
    return st;
}

static oz_status convert(const char *in, const char *out, const dtype_choice *dt, size_t shard_bytes, int *n_shards,
                         oz_err *err) {
    char path[4096];
    source src;
    OZ_TRY(source_open(&src, in, err));
    /* A low-rank model (ounce compress) goes out dense, each factored matrix as B A: transformers
     * has no factors, and the dense model is what it can load. */
    oz_llama_config cfg = src.cfg;
    memset(cfg.low_rank, 0, sizeof cfg.low_rank);
    const char *tokenizer = src.tokenizer;
    oz_param_layout lay;
    oz_status st = oz_param_layout_build(&cfg, &lay, err);
    if (st != OZ_OK) {
        source_close(&src);
        return st;
    }

    /* Everything goes to OUT.tmp first; OUT appears (or is replaced) only when complete. */
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp-convert", out);
    if (st == OZ_OK) st = oz_remove_tree(tmp, err);
    if (st == OZ_OK) st = oz_mkdir_p(tmp, err);

    /* Shards: consecutive tensors in layout order, each file at most shard_bytes (a tensor larger
     * than that gets a file of its own), as transformers' save_pretrained does. */
    int *first = calloc((size_t)lay.n + 1, sizeof *first);
    int shards = 0;
    size_t total = 0;
    if (!first && st == OZ_OK) st = oz_fail(err, OZ_ERR_NOMEM, "out of memory converting");
    if (st == OZ_OK) {
        size_t in_shard = 0;
        for (int i = 0; i < lay.n; i++) {
            size_t bytes = lay.params[i].numel * oz_dtype_size(dt->dtype);
            if (i == 0 || (shard_bytes > 0 && in_shard > 0 && in_shard + bytes > shard_bytes)) {
                first[shards++] = i;
                in_shard = 0;
            }
            in_shard += bytes;
            total += bytes;
        }
        first[shards] = lay.n;
    }
    cJSON *index = NULL, *map = NULL;
    if (st == OZ_OK && shards > 1) {
        index = cJSON_CreateObject();
        cJSON *meta = cJSON_AddObjectToObject(index, "metadata");
        cJSON_AddNumberToObject(meta, "total_size", (double)total);
        map = cJSON_AddObjectToObject(index, "weight_map");
    }
    for (int s = 0; s < shards && st == OZ_OK; s++) {
        char name[96];
        if (shards == 1) snprintf(name, sizeof name, "model.safetensors");
        else snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", s + 1, shards);
        snprintf(path, sizeof path, "%s/%s", tmp, name);
        st = write_shard(path, &lay, &src, first[s], first[s + 1], dt->dtype, err);
        if (st == OZ_OK && shards > 1) fprintf(stderr, "convert: wrote %s\n", name); /* big models take minutes */
        for (int i = first[s]; map && i < first[s + 1]; i++) cJSON_AddStringToObject(map, lay.params[i].name, name);
    }
    source_close(&src);
    if (st == OZ_OK && index) {
        char *text = cJSON_Print(index);
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", tmp);
        st = text ? oz_atomic_write(path, text, strlen(text), err) : oz_fail(err, OZ_ERR_NOMEM, "out of memory");
        free(text);
    }
    cJSON_Delete(index);
    free(first);
    if (st == OZ_OK) {
        snprintf(path, sizeof path, "%s/config.json", tmp);
        st = oz_config_write_dtype(path, &cfg, tokenizer, dt->torch_name, err);
    }
    if (st == OZ_OK) st = oz_copy_hf_side_files(in, tmp, err);
    if (st == OZ_OK) st = oz_replace_dir(tmp, out, err);
    if (st != OZ_OK) {
        oz_err ignored = {0};
        oz_remove_tree(tmp, &ignored);
    }
    oz_param_layout_free(&lay);
    *n_shards = shards;
    return st;
}

/* --to gguf: one file, tensor by tensor, through oz_gguf_export (atomic). */
static oz_status convert_gguf(const char *in, const char *out, uint32_t type, oz_err *err) {
    source src;
    OZ_TRY(source_open(&src, in, err));
    oz_llama_config cfg = src.cfg;
    memset(cfg.low_rank, 0, sizeof cfg.low_rank);
    oz_param_layout lay;
    oz_status st = oz_param_layout_build(&cfg, &lay, err);
    if (st == OZ_OK) {
        const char *slash = strrchr(in, '/');
        char name[256];
        snprintf(name, sizeof name, "%s", slash && slash[1] ? slash + 1 : in);
        oz_gguf_export_opts o = {type, name, in, src.tokenizer};
        st = oz_gguf_export(out, &cfg, &lay, source_param, &src, &o, err);
        oz_param_layout_free(&lay);
    }
    source_close(&src);
    return st;
}

int oz_cmd_convert(int argc, char **argv) {
    char in[4096] = "", out[4096] = "", dtype_name[16] = "", shard_text[32] = "5GB", to[16] = "", type_name[16] = "";
    oz_arg args[] = {
        {"model", OZ_ARG_STR, in, sizeof in,
         "model: an ounce checkpoint (step-N or a run's output), a Hugging Face model directory, or a .gguf file "
         "(required)", 0},
        {"out", OZ_ARG_STR, out, sizeof out,
         "directory to write the plain Hugging Face model to, or the .gguf file with --to gguf (required)", 0},
        {"to", OZ_ARG_STR, to, sizeof to, "hf | gguf [gguf when --out ends in .gguf, else hf]", 0},
        {"dtype", OZ_ARG_STR, dtype_name, sizeof dtype_name, "hf: f32 | bf16 | f16 (round to nearest even) [f32]", 0},
        {"type", OZ_ARG_STR, type_name, sizeof type_name,
         "gguf: the matrices' type, f32 | f16 | bf16 | q8_0 | q4_0 (norms stay f32) [f32]", 0},
        {"shard-size", OZ_ARG_STR, shard_text, sizeof shard_text,
         "largest weight file, e.g. 5GB or 500MiB; 0 = one file [5GB]", 0},
    };
    int rc = oz_args_parse("convert",
                           "Write a checkpoint as a plain Hugging Face model (config.json, safetensors in the chosen "
                           "dtype, sharded past --shard-size, tokenizer files), or as a GGUF file for llama.cpp.",
                           args, (int)(sizeof args / sizeof args[0]), argc, argv);
    if (rc) return rc == 1 ? 0 : 2;
    oz_err err = {0};
    if (!in[0] || !out[0]) {
        oz_fail(&err, OZ_ERR_INPUT, "--model and --out are required");
        return oz_cli_report("convert", &err);
    }
    size_t olen = strlen(out);
    bool gguf = to[0] ? strcmp(to, "gguf") == 0 : olen > 5 && strcmp(out + olen - 5, ".gguf") == 0;
    if (to[0] && !gguf && strcmp(to, "hf") != 0) {
        oz_fail(&err, OZ_ERR_INPUT, "--to %s: expected hf or gguf", to);
        return oz_cli_report("convert", &err);
    }
    char real_in[4096], real_out[4096];
    if (realpath(in, real_in) && realpath(out, real_out) && strcmp(real_in, real_out) == 0) {
        oz_fail(&err, OZ_ERR_INPUT, "--out must differ from --model (%s)", in);
        return oz_cli_report("convert", &err);
    }
    if (gguf) {
        int type = oz_ggml_type_from_name(type_name[0] ? type_name : "f32");
        if (dtype_name[0]) oz_fail(&err, OZ_ERR_INPUT, "--dtype is for --to hf; a GGUF's type is --type");
        else if (type < 0) oz_fail(&err, OZ_ERR_INPUT, "--type %s: expected f32, f16, bf16, q8_0 or q4_0", type_name);
        else if (convert_gguf(in, out, (uint32_t)type, &err) == OZ_OK)
            printf("wrote %s: GGUF with %s weights\n", out, oz_ggml_type_name((uint32_t)type));
        return err.status ? oz_cli_report("convert", &err) : 0;
    }
    if (type_name[0]) {
        oz_fail(&err, OZ_ERR_INPUT, "--type is for --to gguf; a Hugging Face export's type is --dtype");
        return oz_cli_report("convert", &err);
    }
    if (!dtype_name[0]) snprintf(dtype_name, sizeof dtype_name, "f32");
    const dtype_choice *dt = NULL;
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (strcmp(dtype_name, dtypes[i].name) == 0) dt = &dtypes[i];
    if (!dt) {
        oz_fail(&err, OZ_ERR_INPUT, "--dtype %s: expected f32, bf16 or f16", dtype_name);
        return oz_cli_report("convert", &err);
    }
    size_t shard_bytes = 0;
    if (strcmp(shard_text, "0") != 0 && !(shard_bytes = oz_parse_bytes(shard_text))) {
        oz_fail(&err, OZ_ERR_INPUT, "--shard-size %s: expected a size such as 5GB, 500MiB or 0", shard_text);
        return oz_cli_report("convert", &err);
    }
    int shards = 0;
    if (convert(in, out, dt, shard_bytes, &shards, &err) != OZ_OK) return oz_cli_report("convert", &err);
    printf("wrote %s: %s weights in %d file%s\n", out, dt->name, shards, shards == 1 ? "" : "s");
    return 0;
}
