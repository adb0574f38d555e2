/* Hugging Face `tokenizer.json` BPE tokenizers (behind oz_tokenizer; callers use data/tokenizer.h)
 * and the byte-level BPE trainer behind `ounce tokenizer train`.
 *
 * Supported in tokenizer.json (anything else is a one-line OZ_ERR_INPUT naming the field):
 *   model          BPE: vocab, merges as "a b" strings or ["a","b"] pairs, unk_token, fuse_unk,
 *                  byte_fallback, ignore_merges (dropout, continuing_subword_prefix and
 *                  end_of_word_suffix must be null)
 *   normalizer     null, Sequence, Prepend, Replace (String or Regex pattern), Strip
 *   pre_tokenizer  null, Sequence, Split (String or Regex; every behavior; invert), ByteLevel
 *                  (add_prefix_space, use_regex; last in a Sequence), Metaspace (prepend_scheme,
 *                  split), Digits, WhitespaceSplit, Whitespace
 *   post_processor null, Sequence, ByteLevel, TemplateProcessing (single), RobertaProcessing,
 *                  BertProcessing
 *   decoder        null, Sequence, ByteLevel, Replace (String), ByteFallback, Fuse, Strip, Metaspace
 *   added_tokens   matched in the text before pre-tokenization (normalized ones after normalizing),
 *                  leftmost-longest, with lstrip/rstrip/single_word
 * Regexes run on PCRE2 (UTF + UCP, JIT); `\s` is widened to Unicode White_Space (adds U+0085) to
 * agree with the Oniguruma engine the `tokenizers` library uses. */
#ifndef OZ_BPE_H
#define OZ_BPE_H
#include <stddef.h>
#include <stdint.h>

#include "data/tokens.h"
#include "util/err.h"

typedef struct oz_bpe oz_bpe;

/* json_path: the tokenizer.json; config_path: a tokenizer_config.json or NULL (its bos_token and
 * eos_token win over the guesses from the post-processor and the added tokens' names). */
oz_status oz_bpe_load(oz_bpe **out, const char *json_path, const char *config_path, oz_err *err);
/* Loads from an in-memory tokenizer.json; `name` labels error messages. */
oz_status oz_bpe_load_string(oz_bpe **out, const char *json, size_t len, const char *name, oz_err *err);
void oz_bpe_free(oz_bpe *b);

int oz_bpe_vocab_size(const oz_bpe *b);
/* FNV-1a over the vocabulary: every id in order with its token's bytes (model vocabulary, then
 * added tokens' contents) or a gap marker. Equal for tokenizers that map ids to the same strings. */
uint64_t oz_bpe_fingerprint(const oz_bpe *b);
int32_t oz_bpe_bos(const oz_bpe *b);
int32_t oz_bpe_eos(const oz_bpe *b);
const char *oz_bpe_path(const oz_bpe *b);
/* The content of a special added token, NULL for any other id. */
const char *oz_bpe_special_content(const oz_bpe *b, int32_t id);
/* The id of an added token or vocabulary entry (as written in tokenizer.json), -1 if none. */
int32_t oz_bpe_token_id(const oz_bpe *b, const char *content);

/* threads <= 0: OpenMP's default. Large inputs are cut at newlines where the pre-tokenizer's regex
 * cannot match across (only for the GPT-2 and Llama-3 patterns) and encoded in parallel; the ids
 * are the same for every thread count. */
oz_status oz_bpe_encode(oz_bpe *b, const char *text, size_t len, int add_special, int threads, oz_tokens *out,
                        oz_err *err);
oz_status oz_bpe_decode(oz_bpe *b, const int32_t *ids, size_t n, int show_special, oz_text *out, oz_err *err);

/* ---- training ---- */

typedef enum { OZ_BPE_PATTERN_GPT2 = 0, OZ_BPE_PATTERN_LLAMA3 } oz_bpe_pattern;

typedef struct {
    const char *const *inputs; /* text files or directories (walked recursively, sorted) */
    int n_inputs;
    int vocab_size;            /* total, special tokens included; at least 256 + specials */
    uint64_t min_frequency;    /* pairs seen fewer times are never merged (0 or 1: no limit) */
    const char *const *specials; /* special tokens, ids 0..n-1; NULL/0: "<|endoftext|>" */
    int n_specials;
    oz_bpe_pattern pattern;
    const char *out_dir;       /* receives tokenizer.json and tokenizer_config.json */
} oz_bpe_train_opts;

typedef struct {
    uint64_t bytes;       /* text read */
    uint64_t words;       /* distinct pre-tokens */
    int merges;
    int vocab_size;       /* may be below the target when the corpus runs out of pairs */
} oz_bpe_train_report;

/* The first special token is BOS, the second EOS (a single one is both); with two or more the
 * post-processor adds BOS like Llama's. */
oz_status oz_bpe_train(const oz_bpe_train_opts *opts, oz_bpe_train_report *report, oz_err *err);

/* The pre-tokenization regex of a pattern, as written into tokenizer.json. */
const char *oz_bpe_pattern_regex(oz_bpe_pattern p);

/* Internal to data/: the words a pattern splits text into, exactly as encoding splits them (the
 * trainer counts these). fn returns 0 to stop with OZ_ERR_NOMEM. */
typedef struct oz_pretok oz_pretok;
oz_status oz_pretok_create(oz_pretok **out, oz_bpe_pattern p, oz_err *err);
oz_status oz_pretok_words(oz_pretok *pt, const char *text, size_t len, int (*fn)(void *ctx, const char *w, size_t n),
                          void *ctx, oz_err *err);
void oz_pretok_free(oz_pretok *pt);

#endif
