/* Tokenizers in GGUF metadata (tokenizer.ggml.*), both ways, so a GGUF model carries its
 * vocabulary into ounce and out to llama.cpp.
 *
 * Reading builds the tokenizer.json ounce's BPE loader (data/bpe.h) reads:
 *   model "gpt2"   byte-level BPE: tokens and merges as they are; tokenizer.ggml.pre names the
 *                  pre-tokenizer: "gpt2" (and absent), "llama-bpe" / "llama3" (Llama 3's regex),
 *                  "smollm" / "starcoder" / "refact" (digits split, then GPT-2's); others refused
 *   model "llama"  SentencePiece: tokens, scores, token types; the merges follow from the scores
 *                  as Hugging Face's converter derives them (every split of a piece into two pieces,
 *                  the piece's score its priority), "▁" for spaces, byte fallback to <0xXX> tokens
 *   both           control (3) and unknown (2) tokens become special added tokens, user-defined (4)
 *                  ones plain added tokens; bos/eos ids; add_bos_token / add_eos_token as the
 *                  post-processor; tokenizer.chat_template into tokenizer_config.json.
 * Writing goes the other way from a tokenizer.json that data/bpe.h loads: byte-level BPE as "gpt2"
 * (pre from its pre-tokenizer), SentencePiece-style BPE (byte_fallback) as "llama" with scores
 * -rank of the merge that makes each piece; the vocabulary padded to the model's with unused
 * "[PAD<id>]" tokens, as llama.cpp's converter does. */
#ifndef OZ_TOKENIZER_GGUF_H
#define OZ_TOKENIZER_GGUF_H
#include "io/gguf.h"
#include "util/err.h"

/* Whether the file names a tokenizer (tokenizer.ggml.model with tokens). */
int oz_gguf_has_tokenizer(const oz_gguf *g);
/* The tokenizer.json and tokenizer_config.json texts (malloc'd) equivalent to the metadata. An
 * unsupported model or pre-tokenizer, or malformed arrays, are OZ_ERR_INPUT naming the key. */
oz_status oz_gguf_tokenizer_json(const oz_gguf *g, char **json, char **config_json, oz_err *err);
/* dir/tokenizer.json and dir/tokenizer_config.json, atomically; nothing when the file has no
 * tokenizer, or only ounce's byte-level one. */
oz_status oz_gguf_tokenizer_write_files(const oz_gguf *g, const char *dir, oz_err *err);

/* Metadata for the tokenizer.json in dir (with tokenizer_config.json beside it when present);
 * vocab_size >= the tokenizer's ids. */
oz_status oz_gguf_tokenizer_meta_from_dir(oz_gguf_meta *m, const char *dir, int vocab_size, oz_err *err);
/* ounce's byte-level tokenizer as a "gpt2" vocabulary without merges (bytes 0..255 in GPT-2's
 * byte-to-character map, then BOS and EOS, control tokens, at bos_id and eos_id), plus
 * ounce.tokenizer = "byte" so that ounce reads it back as its own. */
void oz_gguf_tokenizer_meta_byte(oz_gguf_meta *m, int vocab_size, int bos_id, int eos_id);
/* Whether the file holds ounce's byte-level tokenizer. */
int oz_gguf_is_byte_tokenizer(const oz_gguf *g);
/* Every tokenizer.* key of another GGUF, unchanged. */
void oz_gguf_tokenizer_meta_copy(oz_gguf_meta *m, const oz_gguf *g);

#endif
