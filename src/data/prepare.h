/* `ounce prepare`: turns text files, directories of them and JSONL files into token shards
 * (OUT/train.bin, OUT/val.bin) plus OUT/meta.json describing them.
 *
 * Each document (a whole text file, or one JSONL record's "text") is encoded and followed by EOS;
 * empty documents are dropped. With a Hugging Face tokenizer each document is encoded as the
 * `tokenizers` library encodes it with add_special_tokens (so BOS first for Llama), then EOS, and
 * OUT gets a copy of its tokenizer.json (and tokenizer_config.json); meta.json records "hf". Directories are walked recursively in sorted path order, skipping
 * hidden entries, binary files (any NUL byte), fortune's strfile indexes (X.dat next to X),
 * symlinks to directories, the output directory itself (when it lies inside an input), and
 * second paths to a file already read (hard links, fortune's X.u8 -> X). A binary file named
 * explicitly is an error rather than a silent skip.
 *
 * Validation split: the concatenated stream is cut into blocks of val_block_tokens and every k-th
 * block (k = 1/val_fraction, fractional k allowed) goes to val. When that leaves val with fewer than
 * val_min_tokens (small corpora) the last max(val_min_tokens, val_fraction*N) tokens are held out
 * instead, provided train keeps at least val_min_tokens too. */
#ifndef OZ_PREPARE_H
#define OZ_PREPARE_H
#include <stdint.h>

#include "data/tokenizer.h"
#include "util/err.h"

typedef struct {
    const char *const *inputs; /* files, directories or .jsonl files */
    int n_inputs;
    const char *out_dir;       /* created if missing */
    const oz_tokenizer *tokenizer; /* NULL: byte-level; an HF one must have an EOS */
    double val_fraction;       /* in [0, 0.5]; 0 disables the split */
    uint64_t val_block_tokens; /* 0: 4096 */
    uint64_t val_min_tokens;   /* 0: 513 (one 512-token window plus its target) */
} oz_prepare_opts;

/* Defaults: no inputs, val_fraction 0.05, block 4096, minimum val 513, byte tokenizer. */
void oz_prepare_opts_init(oz_prepare_opts *opts);

typedef struct {
    uint64_t files;         /* files read */
    uint64_t skipped_files; /* binary, strfile index or duplicate files met while walking */
    uint64_t documents;     /* non-empty documents */
    uint64_t text_bytes;    /* bytes of document text encoded */
    uint64_t train_tokens, val_tokens;
    double unigram_entropy_nats;
} oz_prepare_report;

/* report may be NULL. Errors: no inputs, a missing/unreadable input, a bad JSONL line (named by
 * file:line), an empty corpus, an output directory that cannot be created or written. */
oz_status oz_prepare(const oz_prepare_opts *opts, oz_prepare_report *report, oz_err *err);

#endif
