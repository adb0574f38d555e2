/* Inference with a key/value cache: a prompt runs through the model in one pass (prefill), then
 * each new token alone (decode), attending to the keys and values cached for every earlier
 * position. Several sequences decode together (a batch of `batch` slots, each with its own length).
 *
 * The cache holds, per layer and slot, the RoPE-rotated keys and the values of the key/value heads
 * only (grouped-query attention: Hkv heads, not Hq), for `cap` positions: what the caller will need
 * (prompt + tokens to generate), never max_position_embeddings. Every buffer comes from the arena,
 * listed once for both oz_decode_plan and oz_decode_create, so planned bytes are allocated bytes.
 *
 * fp32, on any backend (the ops of backend/backend.h): on the CPU each position's logits are
 * bitwise those of oz_llama_forward over the whole sequence as long as the BLAS GEMMs give a row the
 * same bits whatever the number of rows (tests/test_decode.c checks it; OpenBLAS does); attention
 * is computed with attention_fwd's arithmetic (backend.h, attention_decode). Dense and low-rank
 * (WeLore) matrices; not INT8 matrices or a bf16 embedding/head, which only training uses. */
#ifndef OZ_DECODE_H
#define OZ_DECODE_H
#include <stddef.h>
#include <stdint.h>

#include "mem/arena.h"
#include "model/llama.h"
#include "util/err.h"

typedef struct oz_decode oz_decode;

/* What a decode state holds: `batch` sequences of up to `cap` positions each; prompts of up to
 * `prefill` tokens run in one pass (the activation buffers have max(prefill, batch) rows). */
typedef struct {
    int batch, cap, prefill;
} oz_decode_shape;

typedef struct {
    size_t bytes[OZ_MEM_NCATEGORIES]; /* by arena category, the cache counted under activations */
    size_t cache_bytes;               /* of which the key/value cache: 2 x L x batch x cap x Hkv x hd x 4 */
    size_t total;
} oz_decode_plan;

/* Bytes oz_decode_create would allocate for this model config and shape (nothing is allocated).
 * OZ_ERR_INPUT for a shape the model cannot take (cap beyond max_position_embeddings, ...). */
oz_status oz_decode_plan_memory(const oz_llama_config *cfg, oz_decode_shape shape, oz_decode_plan *plan,
                                oz_err *err);

/* A decode state on `model`'s backend, its buffers in `arena`; it reads the model's weights (which
 * must outlive it) and keeps no other state in the model. */
oz_status oz_decode_create(oz_decode **out, oz_llama *model, oz_arena *arena, oz_decode_shape shape, oz_err *err);
void oz_decode_destroy(oz_decode *d);

/* Empties slot `seq` and runs its prompt ids (n, host, 1 <= n <= shape.prefill and <= cap) in one
 * pass, caching every position. logits (host, V floats) receives the last position's logits; with
 * all_logits (host, (n, V)) non-NULL every position's too. */
oz_status oz_decode_prefill(oz_decode *d, int seq, const int32_t *ids, int n, float *logits, float *all_logits,
                            oz_err *err);

/* One new token for each slot 0 .. n-1 (n <= batch; ids host (n)): slot b's token goes to position
 * oz_decode_len(d, b), which then grows by one, and logits (host, (n, V)) receives the logits that
 * follow it. A slot whose id is negative sits the step out (a finished sequence in a batch): nothing
 * is cached for it, its length stays and its logits row is meaningless. Every slot must have been
 * prefilled, and every slot taking a token must have room (len < cap): otherwise OZ_ERR_INTERNAL,
 * nothing run. The logits' copy to the host waits for an asynchronous backend's work; its errors
 * come from oz_backend_sync. */
oz_status oz_decode_step(oz_decode *d, int n, const int32_t *ids, float *logits, oz_err *err);

/* Positions cached in slot `seq` (0 before its prefill). */
int oz_decode_len(const oz_decode *d, int seq);
oz_decode_shape oz_decode_get_shape(const oz_decode *d);

#endif
