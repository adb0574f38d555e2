/* Command-line options for the CLI: one table per command gives parsing, validation and --help. */
#ifndef OZ_CLI_ARGS_H
#define OZ_CLI_ARGS_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { OZ_ARG_INT, OZ_ARG_U64, OZ_ARG_FLOAT, OZ_ARG_STR, OZ_ARG_FLAG, OZ_ARG_LIST } oz_arg_type;

typedef struct {
    const char *name;   /* without the leading dashes */
    oz_arg_type type;
    void *dest;         /* int*, uint64_t*, float*, char[cap], bool*, or oz_arg_list* */
    size_t cap;         /* for OZ_ARG_STR */
    const char *help;
    bool seen;          /* set by the parser */
} oz_arg;

/* A list option takes every following argument up to the next one starting with "--". */
typedef struct {
    char **items;
    int n;
} oz_arg_list;

/* Parses argv (after the command name). Returns 0 on success, 1 if --help was printed, 2 after
 * printing a one-line error to stderr. */
int oz_args_parse(const char *command, const char *summary, oz_arg *args, int n_args, int argc, char **argv);
void oz_args_free_lists(oz_arg *args, int n_args);
void oz_args_print_help(const char *command, const char *summary, const oz_arg *args, int n_args);

#endif
