/* Hugging Face model files (config.json + model.safetensors, sharded or not, with HF tensor names):
 * reading and writing them, and the flat-buffer <-> named-tensor mapping. */
#ifndef OZ_HF_MODEL_H
#define OZ_HF_MODEL_H
#include <stdbool.h>
#include "io/weights.h"
#include "model/llama.h"
#include "util/err.h"

#define OZ_TOKENIZER_NAME_MAX 32

/* Reads a Hugging Face Llama config.json (transformers 4 or 5 spelling: rope_scaling or
 * rope_parameters; default, linear and llama3 RoPE). Unsupported fields (another rope type, biases) and
 * non-Llama model types are errors naming the field. `tokenizer` (may be NULL) receives the
 * tokenizer kind ounce recorded ("byte"), or "" when absent. */
oz_status oz_config_read(const char *path, oz_llama_config *cfg, char *tokenizer, oz_err *err);
/* Writes config.json atomically with HF field names (loadable by transformers' LlamaConfig). */
oz_status oz_config_write(const char *path, const oz_llama_config *cfg, const char *tokenizer, oz_err *err);
/* The same with another torch_dtype ("bfloat16", "float16"): what an export's weights are in. */
oz_status oz_config_write_dtype(const char *path, const oz_llama_config *cfg, const char *tokenizer,
                                const char *torch_dtype, oz_err *err);
/* The Hugging Face files that travel beside the weights (tokenizer.json, tokenizer_config.json,
 * special_tokens_map.json, generation_config.json): those present in `from` are copied atomically
 * into `to`; from a .gguf file, its tokenizer is written as tokenizer.json + tokenizer_config.json.
 * Nothing happens when from is NULL, empty or the same directory. */
oz_status oz_copy_hf_side_files(const char *from, const char *to, oz_err *err);

/* Resolves --model: a preset name, a config.json path, a directory holding config.json, or a .gguf
 * file (model/gguf_model.h).
 * *is_preset tells the caller whether sizes such as the vocabulary may follow the data. */
oz_status oz_llama_resolve(const char *spec, oz_llama_config *cfg, char *tokenizer, bool *is_preset,
                           oz_err *err);

/* Saves layout-shaped buffers (host memory) as one safetensors file: tensor i of buffer b is named
 * prefixes[b] + layout name. n_buffers >= 1. */
oz_status oz_tensors_save(const char *path, const oz_param_layout *layout, const float *const *buffers,
                          const char *const *prefixes, int n_buffers, oz_err *err);
/* Loads the same; every expected tensor must be present with the layout's shape, and no tensor
 * outside the layout may be present. Floating dtypes are converted to fp32. */
oz_status oz_tensors_load(const char *path, const oz_param_layout *layout, float *const *buffers,
                          const char *const *prefixes, int n_buffers, oz_err *err);

/* DIR/model.safetensors + DIR/config.json. */
oz_status oz_llama_save(const char *dir, const oz_llama_config *cfg, const char *tokenizer,
                        const oz_param_layout *layout, const float *params, oz_err *err);
/* The same with every tensor stored as BF16 (rounded to nearest: exact for a bf16-weights model's
 * values) and config.json's torch_dtype "bfloat16". */
oz_status oz_llama_save_bf16(const char *dir, const oz_llama_config *cfg, const char *tokenizer,
                             const oz_param_layout *layout, const float *params, oz_err *err);



/* Loads DIR's weights (model.safetensors, or the shards model.safetensors.index.json lists; F32,
 * F16, BF16 or F64, converted to fp32 straight from the mapped files) into m, every tensor checked
 * against the layout. DIR may also be a .gguf file (model/gguf_model.h). Unknown tensors are errors, except RoPE tables old checkpoints carry and a
 * tied model's saved head. */
oz_status oz_llama_load_weights(oz_llama *m, oz_backend *be, const char *dir, oz_err *err);
/* The checks loading makes, for callers that read the files themselves (convert): every layout
 * tensor present, floating, with its shape; nothing else present but the ignorable tensors. */
oz_status oz_weight_files_check(const oz_weight_files *w, const oz_param_layout *lay, const oz_llama_config *cfg,
                                oz_err *err);


/* Loads DIR (config.json + weights as above, or a .gguf file) into a new model on `be` with buffers for `shape`.
 * `tokenizer` (OZ_TOKENIZER_NAME_MAX bytes, may be NULL) receives the recorded tokenizer kind. */
oz_status oz_llama_load(oz_llama **out, const char *dir, oz_backend *be, oz_arena *arena,
                        oz_llama_shape shape, char *tokenizer, oz_err *err);
#endif
