/* Strict option parsing: unknown options, missing values, trailing garbage in numbers and
 * non-finite floats are all errors with one clear line and exit code 2. */
#include "cli/args.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *type_hint(oz_arg_type t) {
    switch (t) {
    case OZ_ARG_INT: return " N";
    case OZ_ARG_U64: return " N";
    case OZ_ARG_FLOAT: return " X";
    case OZ_ARG_STR: return " S";
    case OZ_ARG_LIST: return " PATH...";
    case OZ_ARG_FLAG: return "";
    }
    return "";
}

void oz_args_print_help(const char *command, const char *summary, const oz_arg *args, int n_args) {
    printf("usage: ounce %s [options]\n\n%s\n\noptions:\n", command, summary);
    for (int i = 0; i < n_args; i++) {
        char left[64];
        snprintf(left, sizeof left, "--%s%s", args[i].name, type_hint(args[i].type));
        printf("  %-24s %s\n", left, args[i].help);
    }
    printf("  %-24s %s\n", "--help", "show this help");
}

static int fail(const char *command, const char *fmt, const char *a, const char *b) {
    fprintf(stderr, "ounce %s: ", command);
    fprintf(stderr, fmt, a, b);
    fprintf(stderr, " (see `ounce %s --help`)\n", command);
    return 2;
}

static int set_value(const char *command, oz_arg *a, const char *value) {
    char *end;
    errno = 0;
    switch (a->type) {
    case OZ_ARG_INT: {
        long v = strtol(value, &end, 10);
        if (*value == '\0' || *end != '\0' || errno || v < INT_MIN || v > INT_MAX)
            return fail(command, "--%s expects an integer, got \"%s\"", a->name, value);
        *(int *)a->dest = (int)v;
        return 0;
    }
    case OZ_ARG_U64: {
        if (value[0] == '-') return fail(command, "--%s expects a non-negative integer, got \"%s\"", a->name, value);
        unsigned long long v = strtoull(value, &end, 10);
        if (*value == '\0' || *end != '\0' || errno)
            return fail(command, "--%s expects a non-negative integer, got \"%s\"", a->name, value);
        *(uint64_t *)a->dest = (uint64_t)v;
        return 0;
    }
    case OZ_ARG_FLOAT: {
        double v = strtod(value, &end);
        /* The destination is a float: a finite double beyond its range would become inf. */
        if (*value == '\0' || *end != '\0' || errno || !isfinite(v) || !isfinite((float)v))
            return fail(command, "--%s expects a finite number, got \"%s\"", a->name, value);
        *(float *)a->dest = (float)v;
        return 0;
    }
    case OZ_ARG_STR:
        if (strlen(value) >= a->cap) return fail(command, "--%s value is too long: %s", a->name, value);
        snprintf((char *)a->dest, a->cap, "%s", value);
        return 0;
    case OZ_ARG_LIST: {
        oz_arg_list *list = a->dest;
        char **grown = realloc(list->items, (size_t)(list->n + 1) * sizeof *grown);
        if (!grown) return fail(command, "out of memory parsing --%s%s", a->name, "");
        list->items = grown;
        list->items[list->n++] = strdup(value);
        return 0;
    }
    case OZ_ARG_FLAG: break;
    }
    return 0;
}

int oz_args_parse(const char *command, const char *summary, oz_arg *args, int n_args, int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            oz_args_print_help(command, summary, args, n_args);
            return 1;
        }
        if (strncmp(arg, "--", 2) != 0) return fail(command, "unexpected argument \"%s\"%s", arg, "");
        const char *name = arg + 2;
        const char *eq = strchr(name, '=');
        size_t name_len = eq ? (size_t)(eq - name) : strlen(name);
        oz_arg *a = NULL;
        for (int j = 0; j < n_args; j++)
            if (strlen(args[j].name) == name_len && strncmp(args[j].name, name, name_len) == 0) a = &args[j];
        if (!a) return fail(command, "unknown option \"%s\"%s", arg, "");
        a->seen = true;
        if (a->type == OZ_ARG_FLAG) {
            if (eq) return fail(command, "--%s takes no value%s", a->name, "");
            *(bool *)a->dest = true;
            continue;
        }
        if (eq) {
            if (set_value(command, a, eq + 1)) return 2;
            continue;
        }
        if (i + 1 >= argc || (strncmp(argv[i + 1], "--", 2) == 0 && a->type != OZ_ARG_FLOAT &&
                              a->type != OZ_ARG_INT))
            return fail(command, "--%s needs a value%s", a->name, "");
        if (set_value(command, a, argv[++i])) return 2;
        while (a->type == OZ_ARG_LIST && i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0)
            if (set_value(command, a, argv[++i])) return 2;
    }
    return 0;
}

void oz_args_free_lists(oz_arg *args, int n_args) {
    for (int i = 0; i < n_args; i++) {
        if (args[i].type != OZ_ARG_LIST) continue;
        oz_arg_list *list = args[i].dest;
        for (int j = 0; j < list->n; j++) free(list->items[j]);
        free(list->items);
        list->items = NULL;
        list->n = 0;
    }
}
