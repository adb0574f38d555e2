/* A Llama as a GGUF file (llama.cpp's format): the config from the llama.* metadata keys, the
 * weights dequantized from the mapped file into ounce's layout, and the way back.
 *
 * Tensor names are llama.cpp's (token_embd, blk.L.attn_q, ..., output_norm, output; output absent
 * means tied embeddings). llama.cpp's converter permutes the rows of attn_q and attn_k within each
 * head from Hugging Face's rotate-half order (first half, second half) to interleaved pairs: HF row
 * i * (d/2) + j of a head of d rows is GGUF row 2j + i (attn_q with the query heads, attn_k with
 * the key/value heads). Reading undoes it, writing applies it. */
#ifndef OZ_GGUF_MODEL_H
#define OZ_GGUF_MODEL_H
#include <stdint.h>

#include "backend/backend.h"
#include "io/gguf.h"
#include "model/llama.h"
#include "util/err.h"

/* The config a GGUF describes: general.architecture must be "llama" (no experts); context_length,
 * embedding_length, block_count, feed_forward_length, attention.head_count (+ head_count_kv,
 * key_length, layer_norm_rms_epsilon), rope.freq_base, linear rope scaling, Llama 3.1 rope scaling
 * (a rope_freqs tensor); the vocabulary from the token list (else llama.vocab_size, else the
 * embedding); bos/eos from tokenizer.ggml.*; tied when output.weight is absent. `tokenizer`
 * (OZ_TOKENIZER_NAME_MAX bytes, may be NULL) receives "byte" for a file ounce wrote from a
 * byte-level model, "hf" when the file has a tokenizer, "" otherwise. */
oz_status oz_gguf_config(const oz_gguf *g, oz_llama_config *cfg, char *tokenizer, oz_err *err);
oz_status oz_gguf_config_read(const char *path, oz_llama_config *cfg, char *tokenizer, oz_err *err);

/* Checks every GGUF tensor is one of the layout's (or rope_freqs) and every layout tensor is
 * present with its shape. */
oz_status oz_gguf_check_tensors(const oz_gguf *g, const oz_param_layout *lay, oz_err *err);
/* Layout tensor p in fp32, Hugging Face row order, dequantized from the mapping. */
oz_status oz_gguf_read_param(const oz_gguf *g, const oz_llama_config *cfg, const oz_param_info *p, float *dst,
                             oz_err *err);
/* Loads every weight of m from the GGUF at path (the config must be the file's). */
oz_status oz_gguf_load_weights(oz_llama *m, oz_backend *be, const char *path, oz_err *err);

/* The GGUF name of a dense layout tensor ("blk.3.attn_q.weight"); 0 when it has none (factors). */
int oz_gguf_tensor_name(const char *hf_name, char *out, size_t cap);

/* Writing. fn fills dst with layout tensor p in fp32, Hugging Face row order. */
typedef oz_status (*oz_gguf_param_fn)(void *ctx, const oz_param_info *p, float *dst, oz_err *err);

typedef struct {
    uint32_t type;             /* matrices' ggml type: F32, F16, BF16, Q8_0 or Q4_0. Norms are F32;
                                * a Q8_0/Q4_0 matrix whose rows are not whole 32-value blocks is F16
                                * (llama.cpp's converter does the same) */
    const char *name;          /* general.name, or NULL */
    const char *tokenizer_src; /* tokenizer.json's directory or a .gguf to take the tokenizer from; NULL */
    const char *tokenizer;     /* the config's recorded kind ("byte" writes a byte-level vocabulary) */
} oz_gguf_export_opts;

/* Writes cfg + the weights fn yields as one GGUF file at path, atomically, one tensor at a time:
 * the llama.* keys llama.cpp's loader reads, the tokenizer (tokenizer.ggml.*) and chat template
 * when there is one, q/k rows permuted, general.alignment 32. A low-rank config is refused (expand
 * it first). */
oz_status oz_gguf_export(const char *path, const oz_llama_config *cfg, const oz_param_layout *lay, oz_gguf_param_fn fn,
                         void *ctx, const oz_gguf_export_opts *o, oz_err *err);

#endif
