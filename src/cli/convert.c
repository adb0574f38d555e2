/* `ounce convert`: placeholder until the command lands; it says so and exits with 2. */
#include <stdio.h>

#include "cli/cli.h"

int oz_cmd_convert(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "ounce convert: not available in this build yet\n");
    return 2;
}
