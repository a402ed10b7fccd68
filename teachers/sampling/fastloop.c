/* The teacher's autoregressive sampling loop in C: `teachers/fastloop.py` compiles this file with the
 * system C compiler on first use and calls it through ctypes (no PyTorch headers, a second to build).
 *
 * One call runs `n` steps of the Fast-WaveNet recursion of `distill.nn.StackStepper` for a batch:
 * per layer a ring of past inputs, the conditioning projection of the step (with the conv bias)
 * precomputed by the caller, the gated unit, the residual (sqrt(1/2) folded into its weights) and the
 * skip outputs of all layers in one product at the end; then the head and the draw of the output
 * distribution: location-scale (Gaussian, logistic), discretised mixture of logistics or mu-law
 * classes, the same functions of their parameters and noise as `distill.distributions`. All matrices are stored (in, out) and applied as y += x_i * W[i, :], so the
 * innermost loop runs over contiguous outputs and vectorises; each weight row is used for the whole
 * batch while it is in cache. float32 throughout.
 */
#include <math.h>
#include <stddef.h>
#include <string.h>

#define BLOCK 64 /* outputs kept in registers at batch 1 (128, or adding blocks of 16, measured slower) */

static void axpy_rows(float *restrict y, int ldy, const float *restrict x, int ldx, const float *restrict w,
                      int batch, int in, int out) {
    if (batch == 1) {
        /* a matrix-vector product: BLOCK outputs at a time stay in registers over all inputs, so each
         * weight and each y is loaded once (not y once per input); then the rest. Every output still
         * sums its inputs in the same order, so the numbers equal the loop below. */
        int o0 = 0;
        for (; o0 + BLOCK <= out; o0 += BLOCK) {
            float acc[BLOCK];
            for (int o = 0; o < BLOCK; o++) acc[o] = y[o0 + o];
            for (int i = 0; i < in; i++) {
                const float xi = x[i];
                const float *restrict row = w + (size_t)i * out + o0;
                for (int o = 0; o < BLOCK; o++) acc[o] += xi * row[o];
            }
            for (int o = 0; o < BLOCK; o++) y[o0 + o] = acc[o];
        }
        for (int i = 0; i < in && o0 < out; i++) {
            const float xi = x[i];
            const float *restrict row = w + (size_t)i * out;
            for (int o = o0; o < out; o++) y[o] += xi * row[o];
        }
        return;
    }
    for (int i = 0; i < in; i++) {
        const float *restrict row = w + (size_t)i * out;
        for (int b = 0; b < batch; b++) {
            const float xi = x[(size_t)b * ldx + i];
            float *restrict yb = y + (size_t)b * ldy;
            for (int o = 0; o < out; o++) yb[o] += xi * row[o];
        }
    }
}

static inline float sigmoidf(float v) { return 1.0f / (1.0f + expf(-v)); }

static inline float clampf(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

static inline float gumbelf(float u) { return -logf(-logf(clampf(u, 1e-10f, 1.0f - 1e-10f))); }

/* sum_i softmax(logits)_i values_i */
static float softmax_mean(const float *logits, const float *values, int n) {
    float top = logits[0], total = 0.0f, acc = 0.0f;
    for (int i = 1; i < n; i++) top = logits[i] > top ? logits[i] : top;
    for (int i = 0; i < n; i++) {
        const float e = expf(logits[i] - top);
        total += e;
        acc += e * values[i];
    }
    return acc / total;
}

/* The sample of one step from its parameters p (P) and noise u (Q); see `wavenet_steps`. */
static float draw(int dist, const float *p, int P, const float *u, int mode, float temperature,
                  float log_scale_min, int bins, const float *table) {
    if (dist <= 1) { /* location-scale: u is one standard draw */
        const float mu = p[0], log_s = p[1] > log_scale_min ? p[1] : log_scale_min;
        return clampf(mode == 1 ? mu : mu + temperature * expf(log_s) * u[0], -1.0f, 1.0f);
    }
    if (dist == 2) { /* mixture of K logistics: P = 3K (logits, means, log scales); u: K + 1 uniforms */
        const int K = P / 3;
        if (mode == 1) return clampf(softmax_mean(p, p + K, K), -1.0f, 1.0f);
        int best = 0; /* temperature 0: the most likely component, no Gumbel noise */
        float best_v = p[0] + (temperature == 0.0f ? 0.0f : gumbelf(u[0]));
        for (int k = 1; k < K; k++) {
            const float v = p[k] + (temperature == 0.0f ? 0.0f : gumbelf(u[k]));
            if (v > best_v) best_v = v, best = k;
        }
        const float log_s = p[2 * K + best] > log_scale_min ? p[2 * K + best] : log_scale_min;
        const float v = clampf(u[K], 1e-6f, 1.0f - 1e-6f);
        const float x = p[K + best] + temperature * expf(log_s) * (logf(v) - log1pf(-v));
        const float width = 2.0f / bins;  /* snap to the nearest bin centre, ties to even like torch.round */
        const float idx = clampf(nearbyintf((clampf(x, -1.0f, 1.0f) + 1.0f) / width), 0.0f, (float)(bins - 1));
        return idx * width - 1.0f;
    }
    /* mu-law classes: P logits, table[c] the amplitude of class c; u: P uniforms */
    if (mode == 1) return softmax_mean(p, table, P);
    int best = 0;
    float best_v = -INFINITY;
    for (int c = 0; c < P; c++) {
        const float v = temperature == 0.0f ? p[c] : p[c] / temperature + gumbelf(u[c]);
        if (v > best_v) best_v = v, best = c;
    }
    return table[best];
}

/* Returns the number of steps run. Shapes (row-major, float32 unless said):
 *   cond   (n, L, B, 2G)   conditioning projection + conv bias of each step and layer
 *   w_in (1 + ntaps, R), b_in (R)   the 1x1 input conv: the previous sample's row, then the period taps'
 *   lags   (n, B) double or NULL: each step's pitch period in samples; the input then also holds ntaps period
 *          taps, audio at pos - lag + o for o = -(ntaps / 2) .. ntaps / 2, linearly interpolated, 0 before the
 *          start (`teachers.wavenet.period_input`; every tap reads samples before pos)
 *   w_tap  (L, K*R, 2G)    dilated conv, taps oldest first, the current input last
 *   w_res  (L, G, R), b_res (L, R)   residual 1x1, already scaled by sqrt(1/2)
 *   w_skip (L*G, S), b_skip (S)      all skip 1x1s, already scaled by the skip scale
 *   w_h1 (S, H), b_h1 (H), w_h2 (H, P), b_h2 (P)   the ReLU-1x1-ReLU-1x1 head, P output parameters
 *   rings  (L, span_max, B, R)        each layer's past inputs; spans (L) int; backs (L, K-1) int
 *   audio  (B, total)      prompt in [0, start), samples written at [pos, pos + n)
 *   noise  (n, B, Q)       per step: dist 0/1 one standard normal/logistic draw; 2 (mixture of logistics)
 *                          K + 1 uniforms; 3 (mu-law) P uniforms. Unused when mode == 1.
 *   params (n, B, P) or NULL: every step's parameters (with the linear prediction added), for tests
 *   lpc    (n, B, 1 + order) or NULL: each step's linear predictor, log gain lg then coefficients c;
 *          the locations params[loc, loc + nloc) become sum_k c[k] audio[pos - 1 - k] + e^lg location and
 *          the log scales that follow them, params[loc + nloc, loc + 2 nloc), grow by lg
 *   prev   (B)             the input of the next step (the previous sample); updated
 *   temps  (n, B) or NULL: each step's own sampling temperature (a voicing-dependent temperature,
 *          `teachers.sampling.step_temperatures`); NULL: `temperature` for every step
 *   dist 0 gaussian, 1 logistic, 2 mixture of logistics (bins: its number of bins), 3 mu-law (table:
 *   the P class amplitudes); mode 0 sample / 1 mean
 */
int wavenet_steps(int n, int batch, int layers, int residual, int gate, int skip, int hidden, int kernel,
                  const float *cond, const float *w_in, const float *b_in, const float *w_tap, const float *w_res,
                  const float *b_res, const float *w_skip, const float *b_skip, const float *w_h1,
                  const float *b_h1, const float *w_h2, const float *b_h2, float *rings, int span_max,
                  const int *spans, const int *backs, float *audio, int total, long pos, int start,
                  const float *noise, float *params, float *prev, int mode, float temperature,
                  const float *temps, float log_scale_min, float *work, int dist, int num_params, int noise_per_step, int bins,
                  const float *table, const float *lpc, int order, int loc, int nloc, const double *lags, int ntaps) {
    const int R = residual, G = gate, G2 = 2 * gate, S = skip, H = hidden, KR = kernel * residual;
    const int P = num_params, Q = noise_per_step;
    float *h = work;                          /* (B, R) */
    float *in = h + (size_t)batch * R;        /* (B, K*R) taps then h */
    float *a = in + (size_t)batch * KR;       /* (B, 2G) */
    float *zs = a + (size_t)batch * G2;       /* (B, L*G) */
    float *sk = zs + (size_t)batch * layers * G; /* (B, S) */
    float *o1 = sk + (size_t)batch * S;       /* (B, H) */
    float *o2 = o1 + (size_t)batch * H;       /* (B, P) */
    for (int step = 0; step < n; step++, pos++) {
        for (int b = 0; b < batch; b++) {
            float *hb = h + (size_t)b * R;
            for (int r = 0; r < R; r++) hb[r] = prev[b] * w_in[r] + b_in[r];
            if (!lags) continue;
            const double lag = lags[(size_t)step * batch + b];
            const float *past = audio + (size_t)b * total;
            for (int k = 0; k < ntaps; k++) {
                const double at = (double)pos - lag + (double)(k - ntaps / 2);
                const double low = floor(at);
                const long i = (long)low;
                const float frac = (float)(at - low);
                const float x0 = i >= 0 ? past[i] : 0.0f, x1 = i + 1 >= 0 ? past[i + 1] : 0.0f;
                const float v = x0 + frac * (x1 - x0);
                const float *w = w_in + (size_t)(1 + k) * R;
                for (int r = 0; r < R; r++) hb[r] += v * w[r];
            }
        }
        for (int l = 0; l < layers; l++) {
            const int span = spans[l];
            float *ring = rings + (size_t)l * span_max * batch * R;
            for (int j = 0; j < kernel - 1; j++) {
                const long back = backs[l * (kernel - 1) + j];
                const float *src = ring + (size_t)(((pos - back) % span + span) % span) * batch * R;
                for (int b = 0; b < batch; b++) memcpy(in + (size_t)b * KR + j * R, src + (size_t)b * R, R * sizeof(float));
            }
            for (int b = 0; b < batch; b++) memcpy(in + (size_t)b * KR + (kernel - 1) * R, h + (size_t)b * R, R * sizeof(float));
            if (kernel > 1) memcpy(ring + (size_t)(pos % span) * batch * R, h, (size_t)batch * R * sizeof(float));
            memcpy(a, cond + ((size_t)step * layers + l) * batch * G2, (size_t)batch * G2 * sizeof(float));
            axpy_rows(a, G2, in, KR, w_tap + (size_t)l * KR * G2, batch, KR, G2);
            for (int b = 0; b < batch; b++) {
                float *ab = a + (size_t)b * G2, *zb = zs + (size_t)b * layers * G + (size_t)l * G;
                for (int g = 0; g < G; g++) zb[g] = (2.0f * sigmoidf(2.0f * ab[g]) - 1.0f) * sigmoidf(ab[G + g]);
            }
            /* h <- h * sqrt(1/2) + z W_res + b_res (the sqrt(1/2) of the weights and bias is folded in) */
            for (int b = 0; b < batch; b++)
                for (int r = 0; r < R; r++) h[b * R + r] = h[b * R + r] * 0.70710678118654752f + b_res[l * R + r];
            axpy_rows(h, R, zs + (size_t)l * G, layers * G, w_res + (size_t)l * G * R, batch, G, R);
        }
        for (int b = 0; b < batch; b++) memcpy(sk + (size_t)b * S, b_skip, S * sizeof(float));
        axpy_rows(sk, S, zs, layers * G, w_skip, batch, layers * G, S);
        for (int i = 0; i < batch * S; i++) sk[i] = sk[i] > 0.0f ? sk[i] : 0.0f;
        for (int b = 0; b < batch; b++) memcpy(o1 + (size_t)b * H, b_h1, H * sizeof(float));
        axpy_rows(o1, H, sk, S, w_h1, batch, S, H);
        for (int i = 0; i < batch * H; i++) o1[i] = o1[i] > 0.0f ? o1[i] : 0.0f;
        for (int b = 0; b < batch; b++) memcpy(o2 + (size_t)b * P, b_h2, P * sizeof(float));
        axpy_rows(o2, P, o1, H, w_h2, batch, H, P);
        if (lpc) {
            for (int b = 0; b < batch; b++) {
                const float *lp = lpc + ((size_t)step * batch + b) * (1 + order), *c = lp + 1;
                const float *past = audio + (size_t)b * total;
                const float gain = expf(lp[0]);
                float pred = 0.0f;
                for (int k = 0; k < order && pos - 1 - k >= 0; k++) pred += c[k] * past[pos - 1 - k];
                float *pb = o2 + (size_t)b * P;
                for (int j = 0; j < nloc; j++) {
                    pb[loc + j] = pred + gain * pb[loc + j];
                    pb[loc + nloc + j] += lp[0];
                }
            }
        }
        if (params) memcpy(params + (size_t)step * batch * P, o2, (size_t)batch * P * sizeof(float));
        for (int b = 0; b < batch; b++) {
            float x;
            if (pos < start) {
                x = audio[(size_t)b * total + pos]; /* teacher-forced through the prompt */
            } else {
                const float t = temps ? temps[(size_t)step * batch + b] : temperature;
                x = draw(dist, o2 + (size_t)b * P, P, noise + ((size_t)step * batch + b) * Q, mode, t,
                         log_scale_min, bins, table);
                audio[(size_t)b * total + pos] = x;
            }
            prev[b] = x;
        }
    }
    return n;
}
