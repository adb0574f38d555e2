/* A model directory's weight files as one set of named tensors: DIR/model.safetensors, or the shards
 * that DIR/model.safetensors.index.json lists (Hugging Face's layout for models over a few GB). Every
 * file is memory-mapped; tensors are read straight from the mappings. */
#ifndef OZ_WEIGHTS_H
#define OZ_WEIGHTS_H
#include "io/safetensors.h"
#include "util/err.h"

typedef struct {
    oz_safetensors *files;
    int n_files;
    char index_path[4096]; /* the index, when sharded ("" otherwise), for messages */
} oz_weight_files;

/* Opens DIR's weights. A missing or corrupt file, a shard named in the index that is absent, or an
 * index entry whose tensor is not in its shard are OZ_ERR_INPUT naming the file. */
oz_status oz_weight_files_open(oz_weight_files *w, const char *dir, oz_err *err);
/* NULL when no file holds `name`. */
const oz_st_tensor *oz_weight_files_find(const oz_weight_files *w, const char *name);
void oz_weight_files_close(oz_weight_files *w);

#endif
