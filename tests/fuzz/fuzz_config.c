/* config.json (model/hf_model.c: oz_config_read, oz_llama_resolve, oz_config_write): the input is
 * the file. An accepted config must validate, give a parameter layout and a memory plan without
 * overflow, and come back identical through the writer (what ounce writes, it must read back as the
 * same model). A rejected one is OZ_ERR_INPUT with a one-line message. */
#include "fuzz.h"

#include "model/hf_model.h"
#include "model/llama.h"

static const char *const names[] = {"config.json", "out.json", NULL};

static void check_layout(const oz_llama_config *cfg) {
    oz_param_layout lay;
    oz_err err = {0};
    oz_status s = oz_param_layout_build(cfg, &lay, &err);
    if (s == OZ_ERR_NOMEM) return;
    OZ_FUZZ_CHECK(s == OZ_OK, "a validated config has no layout: %s", err.msg);
    /* The flat buffer holds every tensor, 16-float aligned: recompute it without wrapping. */
    unsigned __int128 total = 0;
    for (int i = 0; i < lay.n; i++) {
        const oz_param_info *p = &lay.params[i];
        unsigned __int128 numel = (unsigned __int128)(uint64_t)p->shape[0] * (uint64_t)(p->ndim == 2 ? p->shape[1] : 1);
        OZ_FUZZ_CHECK(numel == p->numel, "%s: numel %zu wrapped", p->name, p->numel);
        OZ_FUZZ_CHECK(p->offset == total, "%s: offset %zu, expected %llu", p->name, p->offset,
                      (unsigned long long)total);
        total += (numel + 15) & ~(unsigned __int128)15;
    }
    OZ_FUZZ_CHECK(total == lay.total, "layout total %zu wrapped", lay.total);
    OZ_FUZZ_CHECK(oz_param_layout_find(&lay, "model.embed_tokens.weight") == &lay.params[0], "embedding first");
    /* Memory plans (arithmetic only): a short training shape, and the longest context with
     * recomputation and mini-sequences, whose products are the largest the limits allow. */
    for (int k = 0; k < 2; k++) {
        oz_llama_shape shape = {0};
        shape.batch = k ? 4 : 1;
        shape.seq = k || cfg->max_position_embeddings < 64 ? cfg->max_position_embeddings : 64;
        shape.with_grads = true;
        shape.recompute = k;
        shape.bf16_checkpoints = k;
        if (k) oz_llama_mini_seq_auto(cfg, shape.batch * shape.seq, &shape.mlp_chunks, &shape.head_chunks);
        oz_llama_plan plan;
        oz_err_clear(&err);
        s = oz_llama_plan_memory(cfg, shape, &plan, &err);
        OZ_FUZZ_CHECK(s == OZ_OK || s == OZ_ERR_INPUT, "plan_memory: %d %s", (int)s, err.msg);
        if (s == OZ_OK)
            OZ_FUZZ_CHECK(plan.bytes[OZ_MEM_WEIGHTS] >= lay.total * sizeof(float), "planned weights %zu < %zu floats",
                          plan.bytes[OZ_MEM_WEIGHTS], lay.total);
    }
    oz_param_layout_free(&lay);
}

static void check_error(oz_status s, const oz_err *err) {
    OZ_FUZZ_CHECK(s == OZ_ERR_INPUT && err->msg[0], "a bad config must be OZ_ERR_INPUT with a message (got %d: %s)",
                  (int)s, err->msg);
    OZ_FUZZ_CHECK(!strchr(err->msg, '\n'), "the message is one line: %s", err->msg);
    oz_fuzz_note("config", err->msg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    oz_fuzz_dir(names);
    const char *path = oz_fuzz_write("config.json", data, size, 0);
    oz_llama_config cfg;
    char tok[OZ_TOKENIZER_NAME_MAX];
    oz_err err = {0};
    oz_status s = oz_config_read(path, &cfg, tok, &err);
    if (s != OZ_OK) {
        check_error(s, &err);
        return 0;
    }
    OZ_FUZZ_CHECK(memchr(tok, '\0', sizeof tok), "tokenizer name not terminated");
    oz_err verr = {0};
    OZ_FUZZ_CHECK(oz_llama_config_validate(&cfg, &verr) == OZ_OK, "read but invalid: %s", verr.msg);
    check_layout(&cfg);

    /* --model PATH reads the same config. */
    oz_llama_config by_spec;
    bool is_preset;
    OZ_FUZZ_CHECK(oz_llama_resolve(path, &by_spec, NULL, &is_preset, &err) == OZ_OK && !is_preset &&
                      !memcmp(&by_spec, &cfg, sizeof cfg),
                  "oz_llama_resolve differs from oz_config_read");

    /* Written and read back: the same model, the same tokenizer name. */
    const char *out = oz_fuzz_path("out.json", 1);
    OZ_FUZZ_CHECK(oz_config_write_dtype(out, &cfg, tok, "bfloat16", &err) == OZ_OK, "write: %s", err.msg);
    oz_llama_config back;
    char tok_back[OZ_TOKENIZER_NAME_MAX];
    s = oz_config_read(out, &back, tok_back, &err);
    OZ_FUZZ_CHECK(s == OZ_OK, "ounce refuses the config.json it wrote: %s", err.msg);
#define SAME(f) OZ_FUZZ_CHECK(back.f == cfg.f, "round trip changed " #f)
    SAME(vocab_size);
    SAME(hidden_size);
    SAME(intermediate_size);
    SAME(num_hidden_layers);
    SAME(num_attention_heads);
    SAME(num_key_value_heads);
    SAME(head_dim);
    SAME(max_position_embeddings);
    SAME(rms_norm_eps);
    SAME(rope_theta);
    SAME(tie_word_embeddings);
    SAME(bos_token_id);
    SAME(eos_token_id);
    SAME(rope_type);
    SAME(rope_factor);
    SAME(rope_low_freq_factor);
    SAME(rope_high_freq_factor);
    SAME(rope_original_max_position_embeddings);
#undef SAME
    OZ_FUZZ_CHECK(!memcmp(back.low_rank, cfg.low_rank, sizeof cfg.low_rank), "round trip changed the low ranks");
    OZ_FUZZ_CHECK(!strcmp(tok, tok_back), "round trip changed the tokenizer name");
    return 0;
}
