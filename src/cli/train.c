/* `ounce train`: flags -> oz_train_opts, a live progress line, and the JSON summary. */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "train/trainer.h"

static void human_bytes(char *buf, size_t cap, size_t bytes) {
    const char *units[] = {"B", "K", "M", "G", "T"};
    double v = (double)bytes;
    int u = 0;
    while (v >= 1024 && u < 4) v /= 1024, u++;
    snprintf(buf, cap, u ? "%.1f%s" : "%.0f%s", v, units[u]);
}

static void human_time(char *buf, size_t cap, double s) {
    if (!isfinite(s) || s < 0) s = 0;
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, cap, "%ldh%02ldm", t / 3600, (t / 60) % 60);
    else if (t >= 60) snprintf(buf, cap, "%ldm%02lds", t / 60, t % 60);
    else snprintf(buf, cap, "%lds", t);
}

static void on_start(void *user, const char *summary) {
    (void)user;
    printf("%s\n", summary);
    fflush(stdout);
}

static void on_step(void *user, const oz_train_progress *p) {
    (void)user;
    char el[32], eta[32], mem[256] = "", b[32];
    human_time(el, sizeof el, p->elapsed_s);
    human_time(eta, sizeof eta, p->eta_s);
    size_t used = 0;
    for (int c = 0; c < OZ_MEM_NCATEGORIES; c++) {
        if (!p->peak_bytes[c]) continue;
        human_bytes(b, sizeof b, p->peak_bytes[c]);
        used += (size_t)snprintf(mem + used, sizeof mem - used, "%s %s ", oz_mem_category_name(c), b);
    }
    human_bytes(b, sizeof b, p->peak_total);
    printf("step %d/%d | loss %.4f | lr %.2e | gnorm %.3f | %.0f tok/s | %s elapsed | eta %s | peak %stotal %s\n",
           p->step, p->total_steps, p->loss, p->lr, p->grad_norm, p->tokens_per_s, el, eta, mem, b);
    fflush(stdout);
}

static void on_eval(void *user, int step, double val_loss, long tokens) {
    (void)user;
    printf("step %d | val loss %.4f (%ld tokens)\n", step, val_loss, tokens);
    fflush(stdout);
}

static void on_save(void *user, int step, const char *dir) {
    (void)user;
    printf("step %d | saved %s\n", step, dir);
    fflush(stdout);
}

int oz_cmd_train(int argc, char **argv) {
    oz_train_opts o;
    oz_train_opts_default(&o);
    char resume[OZ_PATH_MAX] = "";
    bool json = false;
    oz_arg args[] = {
        {"data", OZ_ARG_STR, o.data, sizeof o.data, "prepared data directory, or random:VOCAB (required)", 0},
        {"model", OZ_ARG_STR, o.model, sizeof o.model,
         "preset (tiny, demo, 60m, 130m, 350m, 1b, 7b, llama3-8b), config.json, or a directory with one [demo]", 0},
        {"init", OZ_ARG_STR, o.init, sizeof o.init,
         "start from this model directory's weights and config (ours or Hugging Face's; sharded, f32/f16/bf16), or a .gguf file's, with a fresh optimizer; replaces --model", 0},
        {"welore", OZ_ARG_FLAG, &o.welore, 0,
         "fine-tune a low-rank model (ounce compress) WeLore's way: only its factors and norms train; embedding, head and dense matrices are frozen", 0},
        {"out", OZ_ARG_STR, o.out, sizeof o.out, "output directory (required)", 0},
        {"resume", OZ_ARG_STR, resume, sizeof resume,
         "continue the run saved in OUT/step-N with its saved settings (other flags are ignored)", 0},
        {"steps", OZ_ARG_INT, &o.steps, 0, "optimizer steps [1000]", 0},
        {"batch", OZ_ARG_INT, &o.batch, 0, "sequences per micro-batch [8]", 0},
        {"seq", OZ_ARG_INT, &o.seq, 0, "tokens per sequence [256]", 0},
        {"grad-accum", OZ_ARG_INT, &o.grad_accum, 0, "micro-batches per step [1]", 0},
        {"lr", OZ_ARG_FLOAT, &o.lr, 0, "peak learning rate [1e-3]", 0},
        {"min-lr-ratio", OZ_ARG_FLOAT, &o.min_lr_ratio, 0, "final lr as a fraction of --lr (cosine) [0.1]", 0},
        {"warmup", OZ_ARG_INT, &o.warmup, 0, "linear warmup steps [5% of --steps]", 0},
        {"weight-decay", OZ_ARG_FLOAT, &o.weight_decay, 0, "decoupled weight decay, not on norms [0.1]", 0},
        {"clip", OZ_ARG_FLOAT, &o.clip, 0, "global gradient-norm clip, 0 = off [1.0]", 0},
        {"clip-mode", OZ_ARG_STR, o.clip_mode, sizeof o.clip_mode,
         "auto | exact | running: exact clips by the step's global norm, which holds every gradient until the "
         "step's end; running clips each update made as its gradient arrives by the norm so far plus last step's "
         "for the tensors still to come (docs/optimizers.md). auto: running where updates can come as gradients "
         "arrive (per-layer updates, no --grad-accum), exact otherwise [auto]", 0},
        {"beta1", OZ_ARG_FLOAT, &o.beta1, 0, "Adam beta1 [0.9]", 0},
        {"beta2", OZ_ARG_FLOAT, &o.beta2, 0, "Adam beta2 [0.95]", 0},
        {"adam-eps", OZ_ARG_FLOAT, &o.adam_eps, 0, "Adam epsilon [1e-8]", 0},
        {"optim", OZ_ARG_STR, o.optim, sizeof o.optim, "optimizer: " OZ_OPTIM_KIND_NAMES " [adamw]", 0},
        {"rank", OZ_ARG_INT, &o.rank, 0, "GaLore: rank of the gradient subspace [128]", 0},
        {"update-gap", OZ_ARG_INT, &o.update_gap, 0, "GaLore: steps between subspace refreshes [200]", 0},
        {"galore-scale", OZ_ARG_FLOAT, &o.galore_scale, 0, "GaLore: scale of the projected update (alpha) [0.25]", 0},
        {"proj-type", OZ_ARG_STR, o.proj_type, sizeof o.proj_type,
         "GaLore: std | reverse_std | left | right | full [std]", 0},
        {"moments-at-switch", OZ_ARG_STR, o.moments_at_switch, sizeof o.moments_at_switch,
         "GaLore: Adam moments at a subspace switch: keep | reset | rotate [keep]", 0},
        {"subspace", OZ_ARG_STR, o.subspace, sizeof o.subspace,
         "GaLore: svd (exact, LAPACK) | randomized (range finder, 2 power iterations) [randomized]", 0},
        {"galore-targets", OZ_ARG_STR, o.galore_targets, sizeof o.galore_targets,
         "GaLore: matrices that get GaLore: attn,mlp | attn | mlp [attn,mlp]", 0},
        {"lazy-update", OZ_ARG_STR, o.lazy_update, sizeof o.lazy_update,
         "GaLore: auto | on | off: grow a matrix's refresh gap while its subspace is stable [auto: on for qgalore]", 0},
        {"vocab-bf16", OZ_ARG_STR, o.vocab_bf16, sizeof o.vocab_bf16,
         "qgalore: auto | on | off: embedding and LM head stored in bf16, updated with stochastic rounding "
         "[auto: on when updates come as gradients arrive (--clip 0, untied head)]", 0},
        {"cos-threshold", OZ_ARG_FLOAT, &o.cos_threshold, 0, "lazy updates: mean cosine that grows the gap [0.4]", 0},
        {"cos-window", OZ_ARG_INT, &o.cos_window, 0, "lazy updates: cosines averaged [5]", 0},
        {"gap-growth", OZ_ARG_FLOAT, &o.gap_growth, 0, "lazy updates: gap multiplier [2]", 0},
        {"max-gap", OZ_ARG_INT, &o.max_gap, 0, "lazy updates: gap ceiling [8 x --update-gap]", 0},
        {"proj-bits", OZ_ARG_INT, &o.proj_bits, 0, "GaLore: 32 (fp32 bases) or 4 (INT4 bases) [32; 4 for qgalore]", 0},
        {"per-layer-update", OZ_ARG_STR, o.per_layer_update, sizeof o.per_layer_update,
         "auto | on | off: consume gradients layer by layer, no full gradient buffer [auto: on for GaLore]", 0},
        {"factored-grads", OZ_ARG_STR, o.factored_grads, sizeof o.factored_grads,
         "GaLore, --clip 0, no --grad-accum, --subspace randomized: auto | off: project each matrix's gradient from "
         "its factors (output gradient, input) instead of forming it [auto]", 0},
        {"on-nonfinite", OZ_ARG_STR, o.on_nonfinite, sizeof o.on_nonfinite,
         "stop | skip: a step whose loss or gradient is NaN or infinite stops the run (naming the first tensor), "
         "or is not applied and the run goes on (not with immediate updates) [stop]", 0},
        {"inrank", OZ_ARG_FLAG, &o.inrank, 0,
         "InRank: store the target matrices as factors (stored rank min(in,out)/2) whose active rank grows during training", 0},
        {"inrank-targets", OZ_ARG_STR, o.inrank_targets, sizeof o.inrank_targets,
         "InRank: matrices to factorize: mlp (gate, up, down) | attn,mlp [mlp]", 0},
        {"inrank-init-rank", OZ_ARG_INT, &o.inrank_init_rank, 0, "InRank: starting rank k [2]", 0},
        {"inrank-buffer", OZ_ARG_INT, &o.inrank_buffer, 0,
         "InRank: extra components trained beyond k (capped at a third of the stored rank) [100]", 0},
        {"inrank-threshold", OZ_ARG_FLOAT, &o.inrank_threshold, 0, "InRank: explained-variance threshold [0.9]", 0},
        {"inrank-check-every", OZ_ARG_INT, &o.inrank_check_every, 0, "InRank: optimizer steps between rank checks [25]", 0},
        {"inrank-warmup", OZ_ARG_INT, &o.inrank_warmup, 0, "InRank: optimizer step of the first rank check [200]", 0},
        {"inrank-freeze-after", OZ_ARG_INT, &o.inrank_freeze_after, 0,
         "InRank: at this step truncate every factored matrix to its rank k and continue at fixed rank, 0 = never [0]", 0},
        {"device", OZ_ARG_STR, o.device, sizeof o.device, "cpu | cuda | cuda:N | cuda+tf32 (TF32 GEMMs) [cpu]", 0},
        {"precision", OZ_ARG_STR, o.precision, sizeof o.precision,
         "auto | fp32 | bf16: bf16 keeps activations, their gradients and the GEMMs' inputs in bf16 (fp32 "
         "accumulation), with fp32 master weights, weight gradients, norm statistics, softmax and loss; dense models "
         "only (not qgalore, low-rank/WeLore/InRank, --recompute or --mini-seq). auto: bf16 on cuda where bf16 takes "
         "the run, else fp32 (always fp32 on the CPU); the start line says which [auto]", 0},
        {"master-weights", OZ_ARG_STR, o.master_weights, sizeof o.master_weights,
         "auto | on | off: with bf16, keep fp32 master weights (on: 6 bytes a weight, the bf16 copy rounded from "
         "them every step) or keep only bf16 weights updated with stochastic rounding (off: 2 bytes; checkpoints "
         "saved in bf16). auto: off for adamw, on for the optimizers whose updates need fp32 weights [auto]", 0},
        {"recompute", OZ_ARG_STR, o.recompute, sizeof o.recompute,
         "none | layer: keep only layer inputs and recompute each layer in backward | layer-bf16: the same with "
         "the saved inputs in bf16 (the residual stream rounded at layer boundaries) | layer-offload: layer-bf16 with "
         "the saved inputs in (page-locked) host memory [none]", 0},
        {"mini-seq", OZ_ARG_STR, o.mini_seq, sizeof o.mini_seq,
         "off | auto | N: run the MLP and LM head + loss over N token chunks (MsT) [off]", 0},
        {"seed", OZ_ARG_U64, &o.seed, 0, "seed for initialisation and data order [1]", 0},
        {"eval-every", OZ_ARG_INT, &o.eval_every, 0, "validation loss every N steps and at the end, 0 = never [100]", 0},
        {"eval-batches", OZ_ARG_INT, &o.eval_batches, 0, "validation batches per evaluation [8]", 0},
        {"save-every", OZ_ARG_INT, &o.save_every, 0, "checkpoint to OUT/step-N every N steps, 0 = only the final model [0]", 0},
        {"keep", OZ_ARG_INT, &o.keep, 0, "newest step-N checkpoints to keep, 0 = all [2]", 0},
        {"force", OZ_ARG_FLAG, &o.force, 0,
         "train although the model's tokenizer (--init, --resume) is not the data's (a warning instead of an error)", 0},
        {"no-save", OZ_ARG_FLAG, &o.no_save, 0, "write no final model, only metrics (benchmarks of large models)", 0},
        {"log-every", OZ_ARG_INT, &o.log_every, 0, "progress line every N steps [10]", 0},
        {"threads", OZ_ARG_INT, &o.threads, 0, "CPU threads, 0 = all cores [0]", 0},
        {"json", OZ_ARG_FLAG, &json, 0, "end with one JSON line: steps, losses, tokens/s, peak bytes", 0},
    };
    int n = (int)(sizeof args / sizeof args[0]);
    int rc = oz_args_parse("train", "Train a Llama model; the final model is written to OUT.", args, n, argc, argv);
    if (rc) return rc == 1 ? 0 : 2;

    oz_train_callbacks cb = {on_start, on_step, on_eval, on_save, NULL, on_start};
    oz_train_result res;
    oz_err err = {0};
    oz_status st = oz_train(&o, resume[0] ? resume : NULL, &cb, &res, &err);
    if (st != OZ_OK) return oz_cli_report("train", &err);

    char tps[64];
    snprintf(tps, sizeof tps, "%.1f", res.tokens_per_s);
    printf("done: %d steps, train loss %.4f", res.steps, res.train_loss);
    if (!isnan(res.val_loss)) printf(", val loss %.4f", res.val_loss);
    printf(", %s tokens/s", tps);
    if (res.skipped_steps) printf(", %d steps skipped (not finite)", res.skipped_steps);
    printf("\n");
    if (res.host_bytes) printf("offloaded layer inputs: %.2f MiB of host memory\n", (double)res.host_bytes / 1048576.0);
    if (json) {
        printf("{\"steps\":%d,\"train_loss\":%.6f,", res.steps, res.train_loss);
        if (isnan(res.val_loss)) printf("\"val_loss\":null,");
        else printf("\"val_loss\":%.6f,", res.val_loss);
        printf("\"tokens_per_s\":%s,\"params\":%lld,\"trainable_params\":%lld,\"peak_bytes\":{", tps, res.params,
               res.trainable);
        for (int c = 0; c < OZ_MEM_NCATEGORIES; c++)
            printf("\"%s\":%zu,", oz_mem_category_name(c), res.peak_bytes[c]);
        printf("\"total\":%zu},\"host_bytes\":%zu,\"skipped_steps\":%d}\n", res.peak_total, res.host_bytes,
               res.skipped_steps);
    }
    return 0;
}
