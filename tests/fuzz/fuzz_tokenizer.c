/* Loading tokenizers (data/tokenizer.c, data/tokenizer_json.c): the input is
 *
 *     tokenizer.json | tokenizer_config.json | text
 *
 * cut at OZ_FUZZ_SEP (an empty or missing part is an absent file; no text: a fixed sample). A
 * rejected file is OZ_ERR_INPUT with a one-line message. An accepted tokenizer must have BOS/EOS
 * inside its vocabulary (or -1), encode the text (plain and with its template) to ids inside the
 * vocabulary, decode them, and decode every id of the vocabulary on its own. */
#include "fuzz.h"

#include "data/tokenizer.h"

static const char *const names[] = {"tokenizer.json", "tokenizer_config.json", NULL};

static const char sample[] = "Hello, world! <|endoftext|> <s> </s> 12345 \xc3\xa9t\xc3\xa9  \n\ttabs\xe2\x96\x81x";

/* Ids decoded one by one per input (the vocabulary can be large). */
#define DECODE_MAX 4096

static void check_ids(const oz_tokenizer *t, const oz_tokens *ids) {
    for (size_t i = 0; i < ids->len; i++)
        OZ_FUZZ_CHECK(ids->ids[i] >= 0 && ids->ids[i] < t->vocab_size, "id %d outside the %d-token vocabulary",
                      (int)ids->ids[i], t->vocab_size);
    oz_text out = {0};
    oz_err err = {0};
    OZ_FUZZ_CHECK(oz_tokenizer_decode(t, ids->ids, ids->len, 1, &out, &err) == OZ_OK, "decode: %s", err.msg);
    oz_text_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *dir = oz_fuzz_dir(names);
    oz_fuzz_part parts[3];
    int n = oz_fuzz_split(data, size, parts, 3);
    /* tokenizer.json is always written (an empty file is a bad one, not an absent one). */
    oz_fuzz_write("tokenizer.json", parts[0].p, parts[0].n, 0);
    if (n > 1 && parts[1].n) oz_fuzz_write("tokenizer_config.json", parts[1].p, parts[1].n, 1);
    else oz_fuzz_remove("tokenizer_config.json");
    oz_tokenizer t;
    oz_err err = {0};
    oz_status s = oz_tokenizer_load(&t, dir, &err);
    if (s != OZ_OK) {
        OZ_FUZZ_CHECK(s == OZ_ERR_INPUT && err.msg[0], "a bad tokenizer must be OZ_ERR_INPUT with a message (got %d: %s)",
                      (int)s, err.msg);
        OZ_FUZZ_CHECK(!strchr(err.msg, '\n'), "the message is one line: %s", err.msg);
        oz_fuzz_note("tokenizer", err.msg);
        return 0;
    }
    OZ_FUZZ_CHECK(t.type == OZ_TOK_HF && t.vocab_size > 0, "vocab_size %d", t.vocab_size);
    OZ_FUZZ_CHECK(t.bos_id >= -1 && t.bos_id < t.vocab_size && t.eos_id >= -1 && t.eos_id < t.vocab_size,
                  "bos %d / eos %d outside the %d-token vocabulary", (int)t.bos_id, (int)t.eos_id, t.vocab_size);
    OZ_FUZZ_CHECK(oz_tokenizer_source(&t) != NULL, "no source");
    const char *text = sample;
    size_t len = sizeof sample - 1;
    if (n > 2) {
        text = (const char *)parts[2].p;
        len = parts[2].n;
    }
    t.threads = 1;
    for (int special = 0; special <= 1; special++) {
        oz_tokens ids = {0};
        s = special ? oz_tokenizer_encode_special(&t, text, len, &ids, &err)
                    : oz_tokenizer_encode(&t, text, len, &ids, &err);
        /* A tokenizer without byte fallback or unk cannot encode every text: a clean error. */
        if (s == OZ_OK) check_ids(&t, &ids);
        else OZ_FUZZ_CHECK(s == OZ_ERR_INPUT && !strchr(err.msg, '\n'), "encode: %d %s", (int)s, err.msg);
        oz_tokens_free(&ids);
        oz_err_clear(&err);
    }
    int limit = t.vocab_size < DECODE_MAX ? t.vocab_size : DECODE_MAX;
    oz_text out = {0};
    for (int32_t id = 0; id < limit; id++) {
        out.len = 0;
        s = oz_tokenizer_decode(&t, &id, 1, id & 1, &out, &err);
        /* Ids between the model's vocabulary and the added tokens may be holes. */
        OZ_FUZZ_CHECK(s == OZ_OK || s == OZ_ERR_INPUT, "decode %d: %d %s", (int)id, (int)s, err.msg);
        oz_err_clear(&err);
        (void)oz_tokenizer_special_name(&t, id);
    }
    int32_t outside[] = {-1, t.vocab_size, INT32_MAX};
    for (int i = 0; i < 3; i++)
        OZ_FUZZ_CHECK(oz_tokenizer_decode(&t, &outside[i], 1, 1, &out, &err) == OZ_ERR_INPUT, "decoded id %d outside",
                      (int)outside[i]);
    oz_text_free(&out);
    oz_tokenizer_free(&t);
    return 0;
}
