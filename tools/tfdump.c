/* build/tools/tfdump DIR: every scalar of DIR's TensorBoard event files (events.out.tfevents.*, in
 * name order, as TensorBoard reads them) as "step tag value" lines, for tests/e2e.sh. Exit 1 on a
 * corrupt record, 2 on a usage error. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/atomic.h"
#include "io/tfevents.h"

static int by_name(const struct dirent **a, const struct dirent **b) { return strcmp((*a)->d_name, (*b)->d_name); }
static int is_events(const struct dirent *e) { return strncmp(e->d_name, "events.out.tfevents.", 20) == 0; }

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: tfdump DIR\n");
        return 2;
    }
    struct dirent **names;
    int k = scandir(argv[1], &names, is_events, by_name), rc = 0;
    if (k < 0) {
        fprintf(stderr, "tfdump: cannot list %s\n", argv[1]);
        return 2;
    }
    for (int i = 0; i < k; i++) {
        char *path = oz_path_join(argv[1], names[i]->d_name), *text = NULL;
        size_t n = 0, at = 0;
        oz_err err = {0};
        if (!path || oz_read_file(path, &text, &n, &err) != OZ_OK) rc = 1;
        while (text && at < n) {
            const uint8_t *data;
            size_t dlen, rlen;
            oz_tf_event ev;
            if (oz_tf_record_read((uint8_t *)text + at, n - at, &data, &dlen, &rlen, &err) != OZ_OK ||
                oz_tf_event_decode(data, dlen, &ev, &err) != OZ_OK) {
                fprintf(stderr, "tfdump: %s at byte %zu: %s\n", path, at, err.msg);
                rc = 1;
                break;
            }
            at += rlen;
            for (int v = 0; v < ev.n; v++)
                printf("%lld %.*s %.9g\n", (long long)ev.step, (int)ev.values[v].tag_len, ev.values[v].tag,
                       (double)ev.values[v].value);
        }
        free(text);
        free(path);
        free(names[i]);
    }
    free(names);
    return rc;
}
