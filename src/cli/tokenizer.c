/* `ounce tokenizer`: placeholder until the command lands; it says so and exits with 2. */
#include <stdio.h>

#include "cli/cli.h"

int oz_cmd_tokenizer(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "ounce tokenizer: not available in this build yet\n");
    return 2;
}
