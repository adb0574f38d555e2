/* Tokenizers. Two kinds behind one struct:
 *  - byte-level (ids 0..255 are raw bytes, then BOS and EOS), nothing to load or free;
 *  - Hugging Face BPE, loaded from a `tokenizer.json` (byte-level BPE as in GPT-2 and Llama 3,
 *    SentencePiece-style BPE with byte fallback as in Llama 2; see data/bpe.h for what exactly is
 *    supported). Encoding gives the same ids as the `tokenizers` library.
 * Callers go through oz_tokenizer so either works wherever text is encoded or decoded. */
#ifndef OZ_TOKENIZER_H
#define OZ_TOKENIZER_H
#include <stddef.h>
#include <stdint.h>

#include "data/tokens.h"
#include "io/gguf.h"
#include "util/err.h"

typedef enum { OZ_TOK_BYTE = 0, OZ_TOK_HF } oz_tok_type;

#define OZ_BYTE_VOCAB 258
#define OZ_BYTE_BOS 256
#define OZ_BYTE_EOS 257

/* The name meta.json and config.json record for a tokenizer.json-based tokenizer; the file itself
 * travels beside them (data directory, checkpoint). */
#define OZ_TOKENIZER_HF_NAME "hf"

typedef struct oz_bpe oz_bpe;

typedef struct {
    oz_tok_type type;
    int vocab_size;  /* 1 + the largest id (model vocabulary and added tokens) */
    int32_t bos_id;  /* -1 when the tokenizer has none */
    int32_t eos_id;  /* -1 when the tokenizer has none */
    oz_bpe *bpe;     /* OZ_TOK_HF: owned, freed by oz_tokenizer_free; NULL for byte */
    int threads;     /* encode's OpenMP threads for large inputs, 0 = OpenMP's default */
} oz_tokenizer;

void oz_tokenizer_byte(oz_tokenizer *tok);
/* Loads a Hugging Face tokenizer from a directory holding tokenizer.json (and optionally
 * tokenizer_config.json, which names bos/eos), from the tokenizer.json file itself, or from a
 * .gguf file's metadata (data/tokenizer_gguf.h). A missing, corrupt or unsupported file is
 * OZ_ERR_INPUT with one line naming the file and the field. */
oz_status oz_tokenizer_load(oz_tokenizer *tok, const char *dir_or_file, oz_err *err);
/* The tokenizer in an open GGUF's metadata: ounce's byte tokenizer when the file says so, else the
 * BPE its tokenizer.ggml.* keys describe, with the file's bos/eos ids. oz_tokenizer_source is then
 * the .gguf path. */
oz_status oz_tokenizer_from_gguf(oz_tokenizer *tok, const oz_gguf *g, oz_err *err);
/* Releases what oz_tokenizer_load allocated; a no-op for the byte tokenizer. Safe to call twice. */
void oz_tokenizer_free(oz_tokenizer *tok);
/* The tokenizer.json a loaded tokenizer came from (NULL for byte). */
const char *oz_tokenizer_source(const oz_tokenizer *tok);
/* The vocabulary's fingerprint (ids and their token strings): what must agree between a model and
 * the data it trains or is evaluated on. The byte tokenizer has its own constant. */
uint64_t oz_tokenizer_fingerprint(const oz_tokenizer *tok);
/* The name stored in meta.json ("byte", or OZ_TOKENIZER_HF_NAME). */
const char *oz_tokenizer_name(const oz_tokenizer *tok);
/* Inverse of oz_tokenizer_name for the byte tokenizer; "hf" and unknown names are OZ_ERR_INPUT
 * (an "hf" tokenizer must be loaded from its tokenizer.json). */
oz_status oz_tokenizer_from_name(oz_tokenizer *tok, const char *name, oz_err *err);
/* "<|bos|>" / "<|eos|>" for the byte tokenizer's special ids, a special added token's content for
 * an HF tokenizer, NULL for ordinary ids. */
const char *oz_tokenizer_special_name(const oz_tokenizer *tok, int32_t id);

/* Appends the ids of text[0..len) to out (out->len grows; earlier contents are kept). No BOS/EOS
 * is added (HF's add_special_tokens=False), but special tokens written in the text are matched.
 * Not reentrant on one tokenizer: an HF tokenizer keeps word caches between calls. */
oz_status oz_tokenizer_encode(const oz_tokenizer *tok, const char *text, size_t len, oz_tokens *out,
                              oz_err *err);
/* The same, wrapped in the tokenizer's post-processor template (HF's add_special_tokens=True, e.g.
 * BOS first for Llama); for the byte tokenizer the same as oz_tokenizer_encode. */
oz_status oz_tokenizer_encode_special(const oz_tokenizer *tok, const char *text, size_t len, oz_tokens *out,
                                      oz_err *err);
/* A prompt for generation (ounce sample). A tokenizer.json's: what transformers feeds generate(),
 * oz_tokenizer_encode_special (the post-processor's BOS/EOS; transformers 5 ignores
 * tokenizer_config.json's add_bos_token / add_eos_token beside a tokenizer.json, and a GGUF's
 * tokenizer.ggml.add_bos_token is already in the template its tokenizer.json gets). The byte
 * tokenizer's (ounce's own models): an end-of-document token first, as every document follows one
 * in training. *text_from receives the index in out of the prompt's first id (after that token). */
oz_status oz_tokenizer_encode_prompt(const oz_tokenizer *tok, const char *text, size_t len, oz_tokens *out,
                                     size_t *text_from, oz_err *err);
/* Appends the text of ids to out (kept NUL-terminated). Special ids add nothing unless
 * show_special, then their name (HF: skip_special_tokens = !show_special). Bytes are written as
 * decoded, without replacing invalid UTF-8, so a stream of single-token decodes reassembles
 * multi-byte characters. An id outside the vocabulary is OZ_ERR_INPUT. */
oz_status oz_tokenizer_decode(const oz_tokenizer *tok, const int32_t *ids, size_t n, int show_special,
                              oz_text *out, oz_err *err);

#endif
