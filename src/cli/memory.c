/* `ounce memory`: the planned peak memory of a training run by category, whether it fits a
 * budget, and the longest sequence that would. Allocates nothing. */
#include <stdio.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "train/plan.h"

static void print_size(const char *label, size_t bytes) {
    printf("  %-14s %14zu bytes  %10.2f MiB\n", label, bytes, (double)bytes / 1048576.0);
}

int oz_cmd_memory(int argc, char **argv) {
    oz_train_opts o;
    oz_train_opts_default(&o);
    char budget_text[64] = "";
    int vocab = 0;
    bool json = false;
    oz_arg args[] = {
        {"model", OZ_ARG_STR, o.model, sizeof o.model, "preset, config.json, or a directory with one [demo]", 0},
        {"optim", OZ_ARG_STR, o.optim, sizeof o.optim, "optimizer: " OZ_OPTIM_KIND_NAMES " [adamw]", 0},
        {"rank", OZ_ARG_INT, &o.rank, 0, "GaLore rank [128]", 0},
        {"proj-type", OZ_ARG_STR, o.proj_type, sizeof o.proj_type, "GaLore projection type [std]", 0},
        {"update-gap", OZ_ARG_INT, &o.update_gap, 0, "GaLore refresh interval (no effect on memory) [200]", 0},
        {"galore-targets", OZ_ARG_STR, o.galore_targets, sizeof o.galore_targets, "attn,mlp | attn | mlp [attn,mlp]", 0},
        {"subspace", OZ_ARG_STR, o.subspace, sizeof o.subspace, "svd | randomized (its workspace counts) [randomized]", 0},
        {"proj-bits", OZ_ARG_INT, &o.proj_bits, 0, "32 or 4 [32; 4 for qgalore]", 0},
        {"moments-at-switch", OZ_ARG_STR, o.moments_at_switch, sizeof o.moments_at_switch, "(no effect on memory)", 0},
        {"lazy-update", OZ_ARG_STR, o.lazy_update, sizeof o.lazy_update, "auto | on | off [auto]", 0},
        {"vocab-bf16", OZ_ARG_STR, o.vocab_bf16, sizeof o.vocab_bf16,
         "qgalore: auto | on | off: bf16 embedding and head [auto: on with --clip 0 and an untied head]", 0},
        {"grad-accum", OZ_ARG_INT, &o.grad_accum, 0, "micro-batches per step (with --clip 0 and 1, per-layer updates need no accumulators) [1]", 0},
        {"clip", OZ_ARG_FLOAT, &o.clip, 0, "gradient clipping, 0 = off [1.0]", 0},
        {"clip-mode", OZ_ARG_STR, o.clip_mode, sizeof o.clip_mode,
         "auto | exact | running (train's; running and auto keep per-layer updates immediate with clipping) [auto]", 0},
        {"welore", OZ_ARG_FLAG, &o.welore, 0, "a low-rank model trained WeLore's way (only factors and norms train)", 0},
        {"inrank", OZ_ARG_FLAG, &o.inrank, 0,
         "InRank stage 1: the --inrank-targets matrices as factors at rank min(in,out)/2, plus a rank check's workspace "
         "(for stage 2 give the frozen run's directory as --model)", 0},
        {"inrank-targets", OZ_ARG_STR, o.inrank_targets, sizeof o.inrank_targets, "mlp | attn,mlp [mlp]", 0},
        {"per-layer-update", OZ_ARG_STR, o.per_layer_update, sizeof o.per_layer_update, "auto | on | off [auto]", 0},
        {"factored-grads", OZ_ARG_STR, o.factored_grads, sizeof o.factored_grads,
         "GaLore, --clip 0, no --grad-accum, --subspace randomized: auto | off: project each matrix's gradient from "
         "its factors (output gradient, input) instead of forming it [auto]", 0},
        {"seq", OZ_ARG_INT, &o.seq, 0, "tokens per sequence [256]", 0},
        {"batch", OZ_ARG_INT, &o.batch, 0, "sequences per micro-batch [8]", 0},
        {"vocab", OZ_ARG_INT, &vocab, 0, "override the vocabulary size (presets use theirs)", 0},
        {"recompute", OZ_ARG_STR, o.recompute, sizeof o.recompute, "none | layer | layer-bf16 (saved layer inputs in bf16) | layer-offload (in bf16 in host memory) [none]", 0},
        {"mini-seq", OZ_ARG_STR, o.mini_seq, sizeof o.mini_seq, "off | auto | N [off]", 0},
        {"device", OZ_ARG_STR, o.device, sizeof o.device, "cpu | cuda (the CUDA backend adds its workspace) [cpu]", 0},
        {"master-weights", OZ_ARG_STR, o.master_weights, sizeof o.master_weights,
         "auto | on | off: bf16 with fp32 master weights or bf16 weights only (train's) [auto]", 0},
        {"precision", OZ_ARG_STR, o.precision, sizeof o.precision,
         "auto | fp32 | bf16 (bf16 activations and weight copies; on cuda the attention workspace includes an "
         "allowance for cuDNN's part); auto is train's: bf16 on cuda where bf16 takes the run, else fp32 [auto]", 0},
        {"budget", OZ_ARG_STR, budget_text, sizeof budget_text,
         "memory budget such as 16GiB or 512MiB: report whether the run fits and the longest --seq that does", 0},
        {"json", OZ_ARG_FLAG, &json, 0, "end with one JSON line with peak_bytes (and fits, max_seq)", 0},
    };
    int rc = oz_args_parse("memory", "Predict a training run's peak memory by category without allocating it.", args,
                           (int)(sizeof args / sizeof args[0]), argc, argv);
    if (rc) return rc == 1 ? 0 : 2;
    oz_err err = {0};
    oz_llama_config cfg;
    bool is_preset;
    if (oz_llama_resolve(o.model, &cfg, NULL, &is_preset, &err) != OZ_OK) return oz_cli_report("memory", &err);
    if (vocab > 0) cfg.vocab_size = vocab;
    size_t budget = 0;
    if (budget_text[0] && !(budget = oz_parse_bytes(budget_text))) {
        oz_fail(&err, OZ_ERR_INPUT, "--budget %s: expected a size such as 16GiB, 512MiB or 2e9", budget_text);
        return oz_cli_report("memory", &err);
    }
    oz_train_plan plan;
    if (oz_train_plan_memory(&cfg, &o, &plan, &err) != OZ_OK) return oz_cli_report("memory", &err);
    printf("planned peak for %s, %s, batch %d x seq %d, recompute %s, mini-seq %s (MLP %d / head %d chunks), %s%s:\n",
           o.model, o.optim, o.batch, o.seq, o.recompute, o.mini_seq, plan.shape.mlp_chunks, plan.shape.head_chunks,
           o.device, plan.shape.precision == OZ_PREC_BF16 ? ", bf16" : "");
    for (int c = 0; c < OZ_MEM_NCATEGORIES; c++) print_size(oz_mem_category_name(c), plan.bytes[c]);
    print_size("total", plan.total);
    if (plan.host_bytes) print_size("host (offload)", plan.host_bytes);
    int max_seq = 0;
    if (budget) {
        max_seq = oz_train_plan_max_seq(&cfg, &o, budget, 1 << 22);
        printf("budget %.2f GiB: %s; the longest sequence that fits at batch %d is %d tokens\n",
               (double)budget / 1073741824.0, plan.total <= budget ? "fits" : "does NOT fit", o.batch, max_seq);
    }
    if (json) {
        printf("{\"peak_bytes\":{");
        for (int c = 0; c < OZ_MEM_NCATEGORIES; c++) printf("\"%s\":%zu,", oz_mem_category_name(c), plan.bytes[c]);
        printf("\"total\":%zu}", plan.total);
        if (plan.host_bytes) printf(",\"host_bytes\":%zu", plan.host_bytes);
        if (budget) printf(",\"budget\":%zu,\"fits\":%s,\"max_seq\":%d", budget, plan.total <= budget ? "true" : "false", max_seq);
        printf("}\n");
    }
    return 0;
}
