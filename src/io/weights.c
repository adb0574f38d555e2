/* Single-file and sharded safetensors weights (see weights.h). */
#include "io/weights.h"

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/atomic.h"

static bool exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* Shard names come from a file the user gave us: only plain names inside DIR are accepted. */
static bool plain_file_name(const char *name) {
    return name[0] != '\0' && !strchr(name, '/') && strcmp(name, ".") != 0 && strcmp(name, "..") != 0;
}

static oz_status open_index(oz_weight_files *w, const char *dir, oz_err *err) {
    char *text;
    size_t n;
    OZ_TRY(oz_read_file(w->index_path, &text, &n, err));
    cJSON *root = cJSON_ParseWithLength(text, n);
    free(text);
    oz_status st = OZ_OK;
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!root || !cJSON_IsObject(map)) {
        st = oz_fail(err, OZ_ERR_INPUT, "%s: not a safetensors index (no \"weight_map\" object)", w->index_path);
        goto done;
    }
    int entries = cJSON_GetArraySize(map);
    if (entries == 0) {
        st = oz_fail(err, OZ_ERR_INPUT, "%s: \"weight_map\" is empty", w->index_path);
        goto done;
    }
    /* Distinct shard names, in order of first mention. */
    const char **names = calloc((size_t)entries, sizeof *names);
    w->files = calloc((size_t)entries, sizeof *w->files);
    if (!names || !w->files) {
        free(names);
        st = oz_fail(err, OZ_ERR_NOMEM, "out of memory reading %s", w->index_path);
        goto done;
    }
    int n_names = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, map) {
        if (!cJSON_IsString(e) || !plain_file_name(e->valuestring)) {
            st = oz_fail(err, OZ_ERR_INPUT, "%s: tensor \"%s\" maps to an invalid file name", w->index_path,
                         e->string);
            break;
        }
        int k = 0;
        while (k < n_names && strcmp(names[k], e->valuestring) != 0) k++;
        if (k == n_names) names[n_names++] = e->valuestring;
    }
    for (int k = 0; k < n_names && st == OZ_OK; k++) {
        char *path = oz_path_join(dir, names[k]);
        if (!path) {
            st = oz_fail(err, OZ_ERR_NOMEM, "out of memory reading %s", w->index_path);
            break;
        }
        if (!exists(path))
            st = oz_fail(err, OZ_ERR_INPUT, "%s: shard %s is missing", w->index_path, names[k]);
        else if ((st = oz_safetensors_open(&w->files[w->n_files], path, err)) == OZ_OK)
            w->n_files++;
        free(path);
    }
    /* Every tensor the index promises must be in the shard it names. */
    cJSON_ArrayForEach(e, map) {
        if (st != OZ_OK) break;
        int k = 0;
        while (k < n_names && strcmp(names[k], e->valuestring) != 0) k++;
        if (!oz_safetensors_find(&w->files[k], e->string))
            st = oz_fail(err, OZ_ERR_INPUT, "%s: tensor \"%s\" is not in shard %s", w->index_path, e->string,
                         names[k]);
    }
    free(names);
done:
    cJSON_Delete(root);
    return st;
}

oz_status oz_weight_files_open(oz_weight_files *w, const char *dir, oz_err *err) {
    memset(w, 0, sizeof *w);
    char *single = oz_path_join(dir, "model.safetensors");
    if (!single) return oz_fail(err, OZ_ERR_NOMEM, "out of memory opening %s", dir);
    oz_status st;
    if (exists(single)) {
        w->files = calloc(1, sizeof *w->files);
        if (!w->files) st = oz_fail(err, OZ_ERR_NOMEM, "out of memory opening %s", single);
        else if ((st = oz_safetensors_open(&w->files[0], single, err)) == OZ_OK) w->n_files = 1;
    } else {
        snprintf(w->index_path, sizeof w->index_path, "%s/model.safetensors.index.json", dir);
        if (!exists(w->index_path))
            st = oz_fail(err, OZ_ERR_INPUT, "%s: no model.safetensors or model.safetensors.index.json", dir);
        else
            st = open_index(w, dir, err);
    }
    free(single);
    if (st != OZ_OK) oz_weight_files_close(w);
    return st;
}

const oz_st_tensor *oz_weight_files_find(const oz_weight_files *w, const char *name) {
    for (int i = 0; i < w->n_files; i++) {
        const oz_st_tensor *t = oz_safetensors_find(&w->files[i], name);
        if (t) return t;
    }
    return NULL;
}

void oz_weight_files_close(oz_weight_files *w) {
    for (int i = 0; i < w->n_files; i++) oz_safetensors_close(&w->files[i]);
    free(w->files);
    memset(w, 0, sizeof *w);
}
