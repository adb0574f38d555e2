/* Llama configuration: presets by name and validation. Presets are the GaLore paper's sizes
 * (vocab 32000, untied), Llama-3-8B, and two small ones for tests and the demo. */
#include "model/llama.h"

#include <math.h>
#include <string.h>

typedef struct {
    const char *name;
    oz_llama_config cfg;
} preset_entry;

#define LLAMA(V, D, F, L, H, KV, P, EPS, THETA, TIE) \
    {V, D, F, L, H, KV, (D) / (H), P, EPS, THETA, TIE, -1, -1, OZ_ROPE_DEFAULT, 0, 0, 0, 0, {{0}}}

static const preset_entry presets[] = {
    {"tiny", LLAMA(258, 32, 64, 2, 4, 2, 256, 1e-5f, 10000.0f, false)},
    {"demo", LLAMA(258, 256, 688, 4, 4, 2, 1024, 1e-5f, 10000.0f, false)},
    {"60m", LLAMA(32000, 512, 1376, 8, 8, 8, 1024, 1e-6f, 10000.0f, false)},
    {"130m", LLAMA(32000, 768, 2048, 12, 12, 12, 1024, 1e-6f, 10000.0f, false)},
    {"350m", LLAMA(32000, 1024, 2736, 24, 16, 16, 1024, 1e-6f, 10000.0f, false)},
    {"1b", LLAMA(32000, 2048, 5461, 24, 32, 32, 2048, 1e-6f, 10000.0f, false)},
    {"7b", LLAMA(32000, 4096, 11008, 32, 32, 32, 2048, 1e-6f, 10000.0f, false)},
    {"llama3-8b", LLAMA(128256, 4096, 14336, 32, 32, 8, 8192, 1e-5f, 500000.0f, false)},
};

bool oz_llama_preset(const char *name, oz_llama_config *cfg) {
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++) {
        if (strcmp(presets[i].name, name) == 0) {
            *cfg = presets[i].cfg;
            return true;
        }
    }
    return false;
}

const char *oz_llama_preset_names(void) { return "tiny, demo, 60m, 130m, 350m, 1b, 7b, llama3-8b"; }

bool oz_precision_parse(const char *name, int *precision) {
    if (strcmp(name, "fp32") == 0) *precision = OZ_PREC_FP32;
    else if (strcmp(name, "bf16") == 0) *precision = OZ_PREC_BF16;
    else return false;
    return true;
}

const char *oz_precision_name(int precision) { return precision == OZ_PREC_BF16 ? "bf16" : "fp32"; }

oz_status oz_llama_config_validate(const oz_llama_config *c, oz_err *err) {
#define NEED(cond, ...) \
    if (!(cond)) return oz_fail(err, OZ_ERR_INPUT, __VA_ARGS__)
    NEED(c->vocab_size > 0 && c->vocab_size <= OZ_LLAMA_MAX_VOCAB, "config: vocab_size must be in [1, %d] (got %d)",
         OZ_LLAMA_MAX_VOCAB, c->vocab_size);
    NEED(c->hidden_size > 0 && c->hidden_size <= OZ_LLAMA_MAX_WIDTH, "config: hidden_size must be in [1, %d] (got %d)",
         OZ_LLAMA_MAX_WIDTH, c->hidden_size);
    NEED(c->intermediate_size > 0 && c->intermediate_size <= OZ_LLAMA_MAX_WIDTH,
         "config: intermediate_size must be in [1, %d] (got %d)", OZ_LLAMA_MAX_WIDTH, c->intermediate_size);
    NEED(c->num_hidden_layers > 0 && c->num_hidden_layers <= OZ_LLAMA_MAX_LAYERS,
         "config: num_hidden_layers must be in [1, %d] (got %d)", OZ_LLAMA_MAX_LAYERS, c->num_hidden_layers);
    NEED(c->num_attention_heads > 0, "config: num_attention_heads must be positive (got %d)",
         c->num_attention_heads);
    NEED(c->num_key_value_heads > 0 && c->num_attention_heads % c->num_key_value_heads == 0,
         "config: num_attention_heads (%d) must be a multiple of num_key_value_heads (%d)",
         c->num_attention_heads, c->num_key_value_heads);
    NEED(c->head_dim > 0 && c->head_dim % 2 == 0 && c->head_dim <= OZ_LLAMA_MAX_HEAD_DIM,
         "config: head_dim must be positive, even and at most %d (got %d)", OZ_LLAMA_MAX_HEAD_DIM, c->head_dim);
    NEED((int64_t)c->num_attention_heads * c->head_dim <= OZ_LLAMA_MAX_WIDTH,
         "config: num_attention_heads x head_dim (%d x %d) must be at most %d", c->num_attention_heads, c->head_dim,
         OZ_LLAMA_MAX_WIDTH);
    NEED(c->max_position_embeddings > 0 && c->max_position_embeddings <= OZ_LLAMA_MAX_POSITIONS,
         "config: max_position_embeddings must be in [1, %d] (got %d)", OZ_LLAMA_MAX_POSITIONS,
         c->max_position_embeddings);
    NEED(c->rms_norm_eps > 0, "config: rms_norm_eps must be positive (got %g)", (double)c->rms_norm_eps);
    NEED(c->rope_theta > 0, "config: rope_theta must be positive (got %g)", (double)c->rope_theta);
    if (c->rope_type != OZ_ROPE_DEFAULT)
        NEED(c->rope_factor >= 1.0f, "config: rope_scaling.factor must be at least 1 (got %g)", (double)c->rope_factor);
    if (c->rope_type == OZ_ROPE_LLAMA3) {
        NEED(c->rope_original_max_position_embeddings > 0 &&
                 c->rope_original_max_position_embeddings <= OZ_LLAMA_MAX_POSITIONS,
             "config: rope_scaling.original_max_position_embeddings must be in [1, %d] (got %d)",
             OZ_LLAMA_MAX_POSITIONS, c->rope_original_max_position_embeddings);
        NEED(c->rope_low_freq_factor > 0 && c->rope_high_freq_factor > c->rope_low_freq_factor,
             "config: rope_scaling needs 0 < low_freq_factor < high_freq_factor (got %g, %g)",
             (double)c->rope_low_freq_factor, (double)c->rope_high_freq_factor);
    }
    for (int l = 0; l < OZ_LLAMA_MAX_LAYERS; l++) {
        for (int j = 0; j < OZ_LLAMA_MATRICES; j++) {
            int R = c->low_rank[l][j];
            if (!R) continue;
            int64_t out, in;
            oz_llama_matrix_dims(c, j, &out, &in);
            NEED(l < c->num_hidden_layers, "config: low-rank matrix for layer %d, but the model has %d layers", l,
                 c->num_hidden_layers);
            /* Beyond min(out, in) a factorization only costs more than the dense matrix. */
            NEED(R > 0 && R <= (out < in ? out : in),
                 "config: rank %d of model.layers.%d.%s must be between 1 and min(%lld, %lld)", R, l,
                 oz_llama_matrix_path(j), (long long)out, (long long)in);
        }
    }
#undef NEED
    return OZ_OK;
}

int oz_llama_config_rank(const oz_llama_config *c, int layer, int matrix) {
    if (layer < 0 || layer >= OZ_LLAMA_MAX_LAYERS || matrix < 0 || matrix >= OZ_LLAMA_MATRICES) return 0;
    return c->low_rank[layer][matrix];
}

bool oz_llama_config_is_low_rank(const oz_llama_config *c) {
    for (int l = 0; l < OZ_LLAMA_MAX_LAYERS; l++)
        for (int j = 0; j < OZ_LLAMA_MATRICES; j++)
            if (c->low_rank[l][j]) return true;
    return false;
}

void oz_llama_matrix_dims(const oz_llama_config *c, int matrix, int64_t *out, int64_t *in) {
    int64_t d = c->hidden_size, F = c->intermediate_size;
    int64_t qd = (int64_t)c->num_attention_heads * c->head_dim, kvd = (int64_t)c->num_key_value_heads * c->head_dim;
    switch (matrix) {
    case OZ_M_Q: *out = qd, *in = d; break;
    case OZ_M_K:
    case OZ_M_V: *out = kvd, *in = d; break;
    case OZ_M_O: *out = d, *in = qd; break;
    case OZ_M_GATE:
    case OZ_M_UP: *out = F, *in = d; break;
    default: *out = d, *in = F; break;
    }
}

const char *oz_llama_matrix_path(int matrix) {
    static const char *const paths[OZ_LLAMA_MATRICES] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                         "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                                                         "mlp.down_proj"};
    return matrix >= 0 && matrix < OZ_LLAMA_MATRICES ? paths[matrix] : "?";
}

double oz_llama_rope_inv_freq(const oz_llama_config *c, int i) {
    double inv_freq = pow((double)c->rope_theta, -(2.0 * i) / c->head_dim);
    switch (c->rope_type) {
    case OZ_ROPE_DEFAULT: return inv_freq;
    case OZ_ROPE_LINEAR: return inv_freq / c->rope_factor;
    case OZ_ROPE_LLAMA3: break;
    }
    /* Llama 3.1: high frequencies (short wavelengths) carry local order and are kept; low ones are
     * interpolated by `factor`; the band between blends the two linearly in 1/wavelength. */
    double old_len = c->rope_original_max_position_embeddings;
    double wavelen = 2.0 * M_PI / inv_freq;
    double low_wavelen = old_len / c->rope_low_freq_factor, high_wavelen = old_len / c->rope_high_freq_factor;
    if (wavelen < high_wavelen) return inv_freq;
    if (wavelen > low_wavelen) return inv_freq / c->rope_factor;
    double smooth = (old_len / wavelen - c->rope_low_freq_factor) / (c->rope_high_freq_factor - c->rope_low_freq_factor);
    return (1.0 - smooth) * inv_freq / c->rope_factor + smooth * inv_freq;
}
