/* `ounce <command>`: dispatch, plus one start-up fix for BLAS speed (see blas_core_check). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"

#define OUNCE_VERSION "0.1.0"

extern char *openblas_get_corename(void) __attribute__((weak));

/* Debian's OpenBLAS 0.3.21 picks its kernels from CPUID and, on some virtual machines, falls back
 * to generic SSE3 kernels ("Prescott"): sgemm then runs at a fraction of the machine's speed. The
 * kernel set can only be chosen through OPENBLAS_CORETYPE before the library initialises, so when
 * the detected core is a generic one but the CPU has AVX2/AVX-512, we set the variable and re-run
 * ourselves once. A user's own OPENBLAS_CORETYPE is always respected. */
static void blas_core_check(char **argv) {
    if (!openblas_get_corename || getenv("OPENBLAS_CORETYPE") || getenv("OUNCE_BLAS_CHECKED")) return;
    const char *core = openblas_get_corename();
    static const char *const generic[] = {"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem",
                                          "Atom", "Katmai", "Coppermine", "Northwood", "Banias",
                                          "Opteron", "Barcelona", "unknown"};
    int weak = 0;
    for (size_t i = 0; i < sizeof generic / sizeof generic[0]; i++)
        if (core && strcmp(core, generic[i]) == 0) weak = 1;
    if (!weak) return;
    const char *better = NULL;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
        better = "SkylakeX";
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        better = "Haswell";
    if (!better) return;
    setenv("OPENBLAS_CORETYPE", better, 1);
    setenv("OUNCE_BLAS_CHECKED", "1", 1);
    execv("/proc/self/exe", argv); /* returns only on failure: then carry on with the slow kernels */
}

static void usage(FILE *f) {
    fprintf(f,
            "ounce %s: train and fine-tune Llama-family models in little memory\n\n"
            "usage: ounce <command> [options]    (ounce <command> --help for its options)\n\n"
            "commands:\n"
            "  prepare    turn text files, directories or JSONL into token shards\n"
            "  train      train a model (from a preset, a config.json, or a checkpoint)\n"
            "  eval       mean loss of a model on prepared data or a text file\n"
            "  sample     generate text from a model\n"
            "  tokenize   print the token ids of a text file\n"
            "  memory     predict a training run's peak memory by category, without allocating\n"
            "  tokenizer  train a byte-level BPE tokenizer (tokenizer.json)\n"
            "  compress   WeLore: reduce a model's matrices to low rank (one shot, no data)\n"
            "  convert    export a checkpoint as a plain Hugging Face model (dtype, dense)\n"
            "  report     draw runs' curves as one self-contained HTML file (or one SVG chart)\n"
            "  version    print the version\n",
            OUNCE_VERSION);
}

int main(int argc, char **argv) {
    blas_core_check(argv);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    static const struct {
        const char *name;
        int (*run)(int, char **);
    } commands[] = {{"prepare", oz_cmd_prepare}, {"train", oz_cmd_train}, {"eval", oz_cmd_eval},
                    {"sample", oz_cmd_sample},   {"tokenize", oz_cmd_tokenize}, {"memory", oz_cmd_memory},
                    {"tokenizer", oz_cmd_tokenizer}, {"compress", oz_cmd_compress}, {"convert", oz_cmd_convert},
                    {"report", oz_cmd_report}};
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(cmd, commands[i].name) == 0) return commands[i].run(argc - 2, argv + 2);
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("ounce %s\n", OUNCE_VERSION);
        return 0;
    }
    fprintf(stderr, "ounce: unknown command \"%s\" (see `ounce --help`)\n", cmd);
    return 2;
}
