/* autolm's CPU kernels (x86-64 with AVX2 + FMA + F16C), loaded through ctypes by kernels/__init__.py.
 *
 * Decoding one token is a chain of matrix-vector products: its speed is how fast the weights stream
 * from memory. torch's float32 F.linear runs these on one thread (MKL keeps small gemv single-threaded),
 * and its bfloat16 kernel is bound by conversion work, so both reach about half of what two cores can
 * read. These loops split the weight rows over torch's own OpenMP threads (the process's libgomp) and
 * read each weight row once, in its stored dtype, accumulating in float32.
 */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>

enum { F32 = 0, BF16 = 1, F16 = 2 };

#define INLINE static inline __attribute__((always_inline))

INLINE __m256 load8(const void *p, int64_t i, int t) {
    if (t == F32) return _mm256_loadu_ps((const float *)p + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)p + i));
    if (t == BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
}

INLINE float load1(const void *p, int64_t i, int t) {
    if (t == F32) return ((const float *)p)[i];
    uint16_t h = ((const uint16_t *)p)[i];
    if (t == BF16) {
        uint32_t u = (uint32_t)h << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    return _cvtsh_ss(h);
}

INLINE void store1(void *p, int64_t i, float v, int t) {
    if (t == F32) {
        ((float *)p)[i] = v;
    } else if (t == BF16) {  /* round to nearest even, as torch does */
        uint32_t u;
        memcpy(&u, &v, 4);
        if ((u & 0x7fffffffu) > 0x7f800000u) u = (u | 0x00400000u);  /* NaN stays NaN */
        else u += 0x7fffu + ((u >> 16) & 1u);
        ((uint16_t *)p)[i] = (uint16_t)(u >> 16);
    } else {
        ((uint16_t *)p)[i] = _cvtss_sh(v, _MM_FROUND_TO_NEAREST_INT);
    }
}

INLINE float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* dot product of x (float32, K) with one weight row. One row at a time streams fastest: reading four
 * rows side by side measured 15-20% slower (single memory stream for the prefetcher). */
INLINE float dot(const float *x, const void *w, int64_t K, int t) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        a0 = _mm256_fmadd_ps(load8(w, k, t), _mm256_loadu_ps(x + k), a0);
        a1 = _mm256_fmadd_ps(load8(w, k + 8, t), _mm256_loadu_ps(x + k + 8), a1);
        a2 = _mm256_fmadd_ps(load8(w, k + 16, t), _mm256_loadu_ps(x + k + 16), a2);
        a3 = _mm256_fmadd_ps(load8(w, k + 24, t), _mm256_loadu_ps(x + k + 24), a3);
    }
    for (; k + 8 <= K; k += 8) a0 = _mm256_fmadd_ps(load8(w, k, t), _mm256_loadu_ps(x + k), a0);
    float s = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; k < K; k++) s += load1(w, k, t) * x[k];
    return s;
}

/* bfloat16 rows: a bfloat16 is the top half of a float32, so one 256-bit load of 16 weights gives the
 * 8 even-indexed ones as floats by a shift and the 8 odd-indexed ones by a mask; x is pre-arranged to
 * match (see deinterleave). Half the instructions of widening each 8 weights, which made bfloat16
 * compute-bound on one core. */
INLINE float dot_bf16(const float *xp, const float *x, const uint16_t *w, int64_t K) {
    const __m256i hi = _mm256_set1_epi32((int)0xffff0000u);
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        __m256i v0 = _mm256_loadu_si256((const __m256i *)(w + k));
        __m256i v1 = _mm256_loadu_si256((const __m256i *)(w + k + 16));
        a0 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(v0, 16)), _mm256_loadu_ps(xp + k), a0);
        a1 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(v0, hi)), _mm256_loadu_ps(xp + k + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(v1, 16)), _mm256_loadu_ps(xp + k + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(v1, hi)), _mm256_loadu_ps(xp + k + 24), a3);
    }
    for (; k + 16 <= K; k += 16) {
        __m256i v0 = _mm256_loadu_si256((const __m256i *)(w + k));
        a0 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(v0, 16)), _mm256_loadu_ps(xp + k), a0);
        a1 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(v0, hi)), _mm256_loadu_ps(xp + k + 8), a1);
    }
    float s = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; k < K; k++) s += load1(w, k, BF16) * x[k];
    return s;
}

/* x as float32 with each block of 16 reordered to its 8 even-indexed then 8 odd-indexed values */
static void deinterleave(const float *x, float *xp, int64_t K) {
    int64_t k = 0;
    for (; k + 16 <= K; k += 16)
        for (int j = 0; j < 8; j++) {
            xp[k + j] = x[k + 2 * j];
            xp[k + 8 + j] = x[k + 2 * j + 1];
        }
    for (; k < K; k++) xp[k] = x[k];
}

/* one weight row (K values of dtype t) times x (float32); xp is x deinterleaved, used for bfloat16 */
INLINE float rowdot(const float *x, const float *xp, const void *row, int64_t K, int t) {
    return t == BF16 ? dot_bf16(xp, x, (const uint16_t *)row, K) : dot(x, row, K, t);
}

/* dot products of two rows of x with four consecutive weight rows (row stride ldb bytes): each weight
 * vector loaded is used twice, which makes prompts of a few dozen tokens compute-bound instead of
 * load-bound. x0/x1 are float32 rows, p0/p1 the same rows deinterleaved (read for bfloat16). */
INLINE void tile2x4(const float *x0, const float *x1, const float *p0, const float *p1, const char *w, int64_t ldb,
                    int64_t K, int t, float out[2][4]) {
    __m256 a[2][4];
    for (int j = 0; j < 4; j++) a[0][j] = a[1][j] = _mm256_setzero_ps();
    int64_t k = 0;
    if (t == BF16) {
        const __m256i hi = _mm256_set1_epi32((int)0xffff0000u);
        for (; k + 16 <= K; k += 16) {
            __m256 e0 = _mm256_loadu_ps(p0 + k), o0 = _mm256_loadu_ps(p0 + k + 8);
            __m256 e1 = _mm256_loadu_ps(p1 + k), o1 = _mm256_loadu_ps(p1 + k + 8);
            for (int j = 0; j < 4; j++) {
                __m256i v = _mm256_loadu_si256((const __m256i *)(w + j * ldb + k * 2));
                __m256 we = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
                __m256 wo = _mm256_castsi256_ps(_mm256_and_si256(v, hi));
                a[0][j] = _mm256_fmadd_ps(wo, o0, _mm256_fmadd_ps(we, e0, a[0][j]));
                a[1][j] = _mm256_fmadd_ps(wo, o1, _mm256_fmadd_ps(we, e1, a[1][j]));
            }
        }
    } else {
        for (; k + 8 <= K; k += 8) {
            __m256 u0 = _mm256_loadu_ps(x0 + k), u1 = _mm256_loadu_ps(x1 + k);
            for (int j = 0; j < 4; j++) {
                __m256 v = load8(w + j * ldb, k, t);
                a[0][j] = _mm256_fmadd_ps(v, u0, a[0][j]);
                a[1][j] = _mm256_fmadd_ps(v, u1, a[1][j]);
            }
        }
    }
    for (int j = 0; j < 4; j++) {
        float s0 = hsum(a[0][j]), s1 = hsum(a[1][j]);
        for (int64_t i = k; i < K; i++) {
            float v = load1(w + j * ldb, i, t);
            s0 += v * x0[i];
            s1 += v * x1[i];
        }
        out[0][j] = s0;
        out[1][j] = s1;
    }
}

/* y[m, n] = sum_k x[m, k] * w[n, k] + bias[n]  for m < M, n < N; x, y contiguous, bias may be NULL */
INLINE void linear_impl(const void *x, const void *w, const void *bias, void *y, int64_t M, int64_t N,
                        int64_t K, int64_t ldw, int nthreads, int t) {
    float *xf = (float *)x, *buf = NULL, *xp = NULL;
    if (t != F32) {
        buf = (float *)malloc(sizeof(float) * M * K * 2);
        for (int64_t i = 0; i < M * K; i++) buf[i] = load1(x, i, t);
        xf = buf;
        xp = buf + M * K;
        for (int64_t m = 0; m < M; m++) deinterleave(xf + m * K, xp + m * K, K);
    }
    if (t != BF16) xp = xf;
    const int64_t size = t == F32 ? 4 : 2, blocks = (N + 3) / 4;
    if (M * N * K < (1 << 15)) nthreads = 1; /* too small to be worth waking a second thread */
#pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1)
    for (int64_t blk = 0; blk < blocks; blk++) {
        const int64_t n0 = blk * 4;
        const char *rows = (const char *)w + n0 * ldw * size;
        float b[4];
        for (int64_t j = 0; j < 4 && n0 + j < N; j++) b[j] = bias ? load1(bias, n0 + j, t) : 0.0f;
        int64_t m = 0;
        if (n0 + 4 <= N)
            for (; m + 2 <= M; m += 2) {
                float out[2][4];
                tile2x4(xf + m * K, xf + (m + 1) * K, xp + m * K, xp + (m + 1) * K, rows, ldw * size, K, t, out);
                for (int j = 0; j < 4; j++) {
                    store1(y, m * N + n0 + j, out[0][j] + b[j], t);
                    store1(y, (m + 1) * N + n0 + j, out[1][j] + b[j], t);
                }
            }
        for (; m < M; m++) /* one row of x (decoding), or what the tiles left */
            for (int64_t j = 0; j < 4 && n0 + j < N; j++)
                store1(y, m * N + n0 + j, rowdot(xf + m * K, xp + m * K, rows + j * ldw * size, K, t) + b[j], t);
    }
    free(buf);
}

int autolm_linear(int dtype, const void *x, const void *w, const void *bias, void *y, int64_t M, int64_t N,
                  int64_t K, int64_t ldw, int nthreads) {
    switch (dtype) {
    case F32: linear_impl(x, w, bias, y, M, N, K, ldw, nthreads, F32); return 0;
    case BF16: linear_impl(x, w, bias, y, M, N, K, ldw, nthreads, BF16); return 0;
    case F16: linear_impl(x, w, bias, y, M, N, K, ldw, nthreads, F16); return 0;
    }
    return 1;
}


/* ---- one decode step of a pre-norm decoder stack, described per layer by the model's family ----
 *
 * All layers for B rows of one new token each, in one call and one OpenMP parallel region: the
 * products split their rows over the threads, the small ops between them run on one thread, and no
 * Python runs in between (which cost more per token than the small ops themselves). What each layer
 * computes comes from its description (kernels/decoder.py builds it from the family's
 * `describe_decoder()`): norm kinds, activation, gated or plain MLP, q/k norms, biases, extra norms
 * after attention and MLP, rotary width, its own mask (sliding windows). Every weight matrix carries
 * its own type, so layers of mixed types are possible. Activations stay float32 between ops but are
 * rounded to the model's dtype `t` wherever the torch code ends an op. */

typedef struct {
    int64_t hidden, heads, kv_heads, head_dim, inter, rotary_dim;
} decoder_shape;

typedef struct { /* y = x W^T + b; w NULL: absent (no gate: a plain MLP); transposed: y = x W + b, W (in, out) */
    const void *w, *b;
    int64_t wtype, btype, row_bytes, transposed;
} proj;

enum { NORM_NONE = 0, NORM_RMS = 1, NORM_RMS_FLOAT = 2, NORM_LAYER = 3 };
typedef struct {
    const void *w, *b;
    int64_t type, kind;
    float eps, offset;
} normd;

enum { ACT_SILU = 0, ACT_GELU_TANH = 1, ACT_GELU = 2, ACT_RELU = 3 };

/* A sparse mixture-of-experts MLP (kernels/decoder.py `Moe`): a router, n_experts gated MLPs of `inter`
 * rows ({gate, up, down} each, in `experts`), top_k of them per row; optionally a shared expert (shared_up.w
 * not NULL) of `shared_inter` rows behind a sigmoid gate (`shared_router`, one row). */
typedef struct {
    proj router;
    const proj *experts;
    int64_t n_experts, top_k, normalize, inter;
    proj shared_gate, shared_up, shared_down, shared_router;
    int64_t shared_inter;
} moe_desc;

typedef struct {
    normd attn_norm, q_norm, k_norm, attn_out_norm, mlp_norm, mlp_out_norm;
    proj q, k, v, o, gate, up, down;
    int64_t act;
    float scaling;
    const uint8_t *mask; /* NULL: every slot in [0, S) is attended; else nonzero where a key may be */
    int64_t mb, ms;      /* mask strides over (B, S) */
    void *k_cache, *v_cache;
    const moe_desc *moe; /* not NULL: the MLP is this mixture of experts (gate/up/down unused) */
    float qscale;        /* this step's query scale after rotary (Qwen-1's logn attention; 1: none) */
    /* NULL, or a float32 bias added to the self-attention scores, (B, H, S) at strides (bb, bh), S
     * contiguous (T5's relative positions) */
    const float *bias;
    int64_t bb, bh;
    /* cross_q.w not NULL: a cross-attention block after the self-attention (T5's decoder): its own
     * pre-norm, q and o projections, the query over precomputed keys/values (B, H, cross_len, D) of dtype t
     * at strides cross_st[0..2] (D contiguous), the keys where cross_mask (bytes over (B, cross_len),
     * strides cmb, cms; NULL: all) is nonzero, then the residual add */
    normd cross_norm;
    proj cross_q, cross_o;
    float cross_scaling;
    const void *cross_k, *cross_v;
    int64_t cross_st[3], cross_len;
    const uint8_t *cross_mask;
    int64_t cmb, cms;
    /* not NULL: this layer's own rotary tables, (B, rotary_dim) each, in place of the step's cos/sin
     * (Gemma 3's sliding and full layers rotate with different bases) */
    const void *rcos, *rsin;
} decoder_layer;

INLINE float rnd(float v, int t) { /* the value a tensor of dtype t holds for v */
    if (t == F32) return v;
    uint16_t h;
    store1(&h, 0, v, t);
    return load1(&h, 0, t);
}

/* One row through a norm, float32 statistics. NORM_RMS (Llama): float32 -> x * rsqrt(mean(x^2) + eps) * w,
 * half -> w * half(x * rsqrt(...)); NORM_RMS_FLOAT (Gemma): half(x * rsqrt(...) * (offset + w)) all in
 * float32; NORM_LAYER: half((x - mean) * rsqrt(var + eps) * w + b). x may equal y. */
INLINE void norm_row(const float *x, const normd *n, float *y, int64_t D, int t) {
    if (n->kind == NORM_LAYER) {
        float mean = 0.0f, var = 0.0f;
        for (int64_t d = 0; d < D; d++) mean += x[d];
        mean /= (float)D;
        for (int64_t d = 0; d < D; d++) var += (x[d] - mean) * (x[d] - mean);
        float inv = 1.0f / sqrtf(var / (float)D + n->eps);
        for (int64_t d = 0; d < D; d++) {
            float v = (x[d] - mean) * inv * load1(n->w, d, n->type);
            y[d] = rnd(n->b ? v + load1(n->b, d, n->type) : v, t);
        }
        return;
    }
    float ss = 0.0f;
    for (int64_t d = 0; d < D; d++) ss += x[d] * x[d];
    float inv = 1.0f / sqrtf(ss / (float)D + n->eps);
    if (n->kind == NORM_RMS_FLOAT)
        for (int64_t d = 0; d < D; d++) y[d] = rnd(x[d] * inv * (n->offset + load1(n->w, d, n->type)), t);
    else
        for (int64_t d = 0; d < D; d++) y[d] = rnd(rnd(x[d] * inv, t) * load1(n->w, d, n->type), t);
}

/* rotary embedding of the first R values of one head in place: x * cos + roll(x, R/2) * sin, sin with
 * its first half negated (layers.RotaryEmbedding), each product and the sum rounded as separate torch ops */
INLINE void rotate(float *x, const void *cs, const void *sn, int64_t R, int t) {
    float tmp[R];
    int64_t half = R / 2;
    for (int64_t d = 0; d < R; d++) {
        float c = rnd(x[d] * load1(cs, d, t), t);
        float s = rnd(x[d < half ? d + half : d - half] * load1(sn, d, t), t);
        tmp[d] = rnd(c + s, t);
    }
    memcpy(x, tmp, sizeof(float) * R);
}

INLINE float activate(float g, int64_t a) {
    switch (a) {
    case ACT_GELU_TANH: return 0.5f * g * (1.0f + tanhf(0.7978845608028654f * (g + 0.044715f * g * g * g)));
    case ACT_GELU: return 0.5f * g * (1.0f + erff(g * 0.7071067811865476f));
    case ACT_RELU: return g > 0.0f ? g : 0.0f;
    default: return g / (1.0f + expf(-g));
    }
}

/* x deinterleaved for the bfloat16 rows dot_bf16 reads (done for every input: cheap next to a product) */
INLINE void prepare(const float *x, float *xp, int64_t M, int64_t K) {
    for (int64_t m = 0; m < M; m++) deinterleave(x + m * K, xp + m * K, K);
}

/* row n of a projection applied to one input row; x float32, xp deinterleaved. The switch gives each
 * weight type its own specialised loop (a type read inside the loop cost ~15% of float32 decoding). */
INLINE float proj_row(const proj *p, int64_t n, const float *x, const float *xp, int64_t K) {
    const void *row = (const char *)p->w + n * p->row_bytes;
    float v;
    switch (p->wtype) {
    case F32: v = dot(x, row, K, F32); break;
    case BF16: v = dot_bf16(xp, x, (const uint16_t *)row, K); break;
    default: v = dot(x, row, K, F16); break;
    }
    return p->b ? v + load1(p->b, n, (int)p->btype) : v;
}

/* y_m[0, N) += x_m[k] W[k, 0, N) for k < K and the B rows x_m (row stride ldx; y_m at y + m * N, float32)
 * of a transposed weight (K rows of row_bytes), four rows of W at a time: the rows are read in order, so
 * the weights stream as one contiguous block, and each group of four is used for all B rows while it is
 * in the cache. */
INLINE void rows_into(const char *w, int64_t row_bytes, const float *x, int64_t ldx, int64_t B, int64_t K,
                      int64_t N, float *y, int t) {
    int64_t k = 0;
    for (; k + 4 <= K; k += 4) {
        const char *r0 = w + k * row_bytes, *r1 = r0 + row_bytes, *r2 = r1 + row_bytes, *r3 = r2 + row_bytes;
        for (int64_t m = 0; m < B; m++) {
            const float *xm = x + m * ldx + k;
            float *ym = y + m * N;
            const __m256 x0 = _mm256_set1_ps(xm[0]), x1 = _mm256_set1_ps(xm[1]);
            const __m256 x2 = _mm256_set1_ps(xm[2]), x3 = _mm256_set1_ps(xm[3]);
            int64_t j = 0;
            for (; j + 8 <= N; j += 8) {
                __m256 a = _mm256_loadu_ps(ym + j);
                a = _mm256_fmadd_ps(load8(r0, j, t), x0, a);
                a = _mm256_fmadd_ps(load8(r1, j, t), x1, a);
                a = _mm256_fmadd_ps(load8(r2, j, t), x2, a);
                a = _mm256_fmadd_ps(load8(r3, j, t), x3, a);
                _mm256_storeu_ps(ym + j, a);
            }
            for (; j < N; j++)
                ym[j] += load1(r0, j, t) * xm[0] + load1(r1, j, t) * xm[1] + load1(r2, j, t) * xm[2] +
                         load1(r3, j, t) * xm[3];
        }
    }
    for (; k < K; k++) {
        const char *r = w + k * row_bytes;
        for (int64_t m = 0; m < B; m++)
            for (int64_t j = 0; j < N; j++) y[m * N + j] += load1(r, j, t) * x[m * ldx + k];
    }
}

/* out[m * ldo + n] = rnd(x_m W[:, n] + b[n]) for n < N and the B rows of x, a transposed projection.
 * Each thread takes one contiguous range of W's rows (the K inputs) into its own partial sums in
 * `scratch` (threads x B x N floats), then the partials are added per column: every thread streams one
 * contiguous block of the matrix (splitting the columns instead read short pieces of every row and
 * reached half the bandwidth). Called inside the parallel region. */
INLINE void column_products(const proj *p, const float *x, int64_t B, int64_t K, int64_t N, float *out,
                            int64_t ldo, int t, float *scratch) {
    const int64_t parts = omp_get_num_threads(), per = (K + parts - 1) / parts;
#pragma omp for schedule(static)
    for (int64_t part = 0; part < parts; part++) {
        const int64_t k0 = part * per < K ? part * per : K, k1 = k0 + per < K ? k0 + per : K;
        float *y = scratch + part * B * N;
        memset(y, 0, sizeof(float) * B * N);
        const char *w = (const char *)p->w + k0 * p->row_bytes;
        switch (p->wtype) {
        case F32: rows_into(w, p->row_bytes, x + k0, K, B, k1 - k0, N, y, F32); break;
        case BF16: rows_into(w, p->row_bytes, x + k0, K, B, k1 - k0, N, y, BF16); break;
        default: rows_into(w, p->row_bytes, x + k0, K, B, k1 - k0, N, y, F16); break;
        }
    }
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; n++)
        for (int64_t m = 0; m < B; m++) {
            float s = 0.0f;
            for (int64_t part = 0; part < parts; part++) s += scratch[(part * B + m) * N + n];
            out[m * ldo + n] = rnd(p->b ? s + load1(p->b, n, (int)p->btype) : s, t);
        }
}

/* q, k and v as one product when they are adjacent column ranges of one matrix (GPT-2's c_attn): one
 * pass over the fused weight instead of three */
INLINE int fuse3(const proj *q, const proj *k, const proj *v, int64_t NQ, int64_t NK, proj *fused) {
    const int64_t size = q->wtype == F32 ? 4 : 2, bsize = q->btype == F32 ? 4 : 2;
    if (k->wtype != q->wtype || v->wtype != q->wtype || k->row_bytes != q->row_bytes ||
        v->row_bytes != q->row_bytes || (const char *)k->w != (const char *)q->w + NQ * size ||
        (const char *)v->w != (const char *)k->w + NK * size)
        return 0;
    if (q->b || k->b || v->b) {
        if (!q->b || !k->b || !v->b || k->btype != q->btype || v->btype != q->btype ||
            (const char *)k->b != (const char *)q->b + NQ * bsize || (const char *)v->b != (const char *)k->b + NK * bsize)
            return 0;
    }
    *fused = *q;
    return 1;
}

/* norm of B rows of xs into h, then the deinterleaved copy (one thread: called inside `omp single`) */
INLINE void norm_rows(const float *xs, const normd *n, float *h, float *hp, int64_t B, int64_t E, int t) {
    for (int64_t m = 0; m < B; m++) norm_row(xs + m * E, n, h + m * E, E, t);
    prepare(h, hp, B, E);
}

/* The residual add after o_proj / down_proj: xs += rnd(in W^T + b), or, with an output norm,
 * xs += norm(rnd(in W^T + b)) (the products go to `tmp` first). Called inside the parallel region. */
INLINE void residual_product(float *xs, float *tmp, const float *in, const float *inp, const proj *p,
                             const normd *out_norm, int64_t B, int64_t E, int64_t K, int t, float *scratch) {
    if (p->transposed) {
        column_products(p, in, B, K, E, tmp, E, t, scratch);
        if (out_norm->kind == NORM_NONE) {
#pragma omp for schedule(static)
            for (int64_t n = 0; n < E; n++)
                for (int64_t m = 0; m < B; m++) xs[m * E + n] = rnd(xs[m * E + n] + tmp[m * E + n], t);
            return;
        }
    } else if (out_norm->kind == NORM_NONE) {
#pragma omp for schedule(static)
        for (int64_t n = 0; n < E; n++)
            for (int64_t m = 0; m < B; m++)
                xs[m * E + n] = rnd(xs[m * E + n] + rnd(proj_row(p, n, in + m * K, inp + m * K, K), t), t);
        return;
    }
    if (!p->transposed) {
#pragma omp for schedule(static)
        for (int64_t n = 0; n < E; n++)
            for (int64_t m = 0; m < B; m++) tmp[m * E + n] = rnd(proj_row(p, n, in + m * K, inp + m * K, K), t);
    }
#pragma omp single
    for (int64_t m = 0; m < B; m++) {
        norm_row(tmp + m * E, out_norm, tmp + m * E, E, t);
        for (int64_t n = 0; n < E; n++) xs[m * E + n] = rnd(xs[m * E + n] + tmp[m * E + n], t);
    }
}

/* One row's routing: softmax (float32) over the router's logits, the top k (ties: lower index first),
 * renormalised over the k when asked, rounded to t, then ordered by expert index, the order the torch
 * code adds the experts' outputs in. */
INLINE void route_row(const float *logits, int64_t NE, int64_t k, int64_t normalize, int64_t *chosen, float *wts,
                      int t) {
    float top = -INFINITY, total = 0.0f, probs[NE];
    for (int64_t e = 0; e < NE; e++) top = logits[e] > top ? logits[e] : top;
    for (int64_t e = 0; e < NE; e++) total += probs[e] = expf(logits[e] - top);
    for (int64_t e = 0; e < NE; e++) probs[e] /= total;
    float sum = 0.0f;
    for (int64_t j = 0; j < k; j++) {
        int64_t best = -1;
        for (int64_t e = 0; e < NE; e++) {
            int taken = 0;
            for (int64_t i = 0; i < j; i++) taken |= chosen[i] == e;
            if (!taken && (best < 0 || probs[e] > probs[best])) best = e;
        }
        chosen[j] = best;
        sum += wts[j] = probs[best];
    }
    for (int64_t j = 0; j < k; j++) wts[j] = rnd(normalize ? wts[j] / sum : wts[j], t);
    for (int64_t j = 1; j < k; j++) /* insertion sort by expert index */
        for (int64_t i = j; i > 0 && chosen[i - 1] > chosen[i]; i--) {
            int64_t e = chosen[i];
            float w = wts[i];
            chosen[i] = chosen[i - 1], wts[i] = wts[i - 1];
            chosen[i - 1] = e, wts[i - 1] = w;
        }
}

typedef struct { /* scratch for the sparse MLPs of one step */
    float *logits, *wts, *act, *actp, *shared, *sharedp, *sgate;
    int64_t *chosen;
} moe_scratch;

/* xs += the mixture of experts of h (B rows, normed; hp deinterleaved), as the torch code computes it: each
 * chosen expert's output rounded, times its weight rounded, added in expert order; then the shared expert
 * times its sigmoid gate; then the residual. Only the chosen experts' rows are read. Called inside the
 * parallel region. */
INLINE void moe_mlp(float *xs, const float *h, const float *hp, const moe_desc *mo, int64_t act_kind, int64_t B,
                    int64_t E, int t, const moe_scratch *sc) {
    const int64_t NE = mo->n_experts, k = mo->top_k, MI = mo->inter, SI = mo->shared_up.w ? mo->shared_inter : 0;
#pragma omp for schedule(static)
    for (int64_t n = 0; n < NE + (SI ? 1 : 0); n++)
        for (int64_t m = 0; m < B; m++) {
            if (n < NE) sc->logits[m * NE + n] = rnd(proj_row(&mo->router, n, h + m * E, hp + m * E, E), t);
            else sc->sgate[m] = rnd(proj_row(&mo->shared_router, 0, h + m * E, hp + m * E, E), t);
        }
#pragma omp single
    for (int64_t m = 0; m < B; m++) {
        route_row(sc->logits + m * NE, NE, k, mo->normalize, sc->chosen + m * k, sc->wts + m * k, t);
        if (SI) sc->sgate[m] = rnd(1.0f / (1.0f + expf(-sc->sgate[m])), t);
    }
    const int64_t routed = B * k * MI;
#pragma omp for schedule(static)
    for (int64_t idx = 0; idx < routed + B * SI; idx++) {
        const proj *gate, *up;
        const float *x, *xp;
        float *out;
        int64_t i;
        if (idx < routed) {
            const int64_t slot = idx / MI, m = slot / k;
            i = idx % MI;
            gate = mo->experts + 3 * sc->chosen[slot], up = gate + 1;
            x = h + m * E, xp = hp + m * E, out = sc->act + slot * MI + i;
        } else {
            const int64_t m = (idx - routed) / SI;
            i = (idx - routed) % SI;
            gate = &mo->shared_gate, up = &mo->shared_up;
            x = h + m * E, xp = hp + m * E, out = sc->shared + m * SI + i;
        }
        const float g = rnd(proj_row(gate, i, x, xp, E), t), u = rnd(proj_row(up, i, x, xp, E), t);
        *out = rnd(rnd(activate(g, act_kind), t) * u, t);
    }
#pragma omp single
    {
        prepare(sc->act, sc->actp, B * k, MI);
        if (SI) prepare(sc->shared, sc->sharedp, B, SI);
    }
#pragma omp for schedule(static)
    for (int64_t n = 0; n < E; n++)
        for (int64_t m = 0; m < B; m++) {
            float acc = 0.0f;
            for (int64_t j = 0; j < k; j++) {
                const int64_t slot = m * k + j;
                const proj *down = mo->experts + 3 * sc->chosen[slot] + 2;
                const float y = rnd(proj_row(down, n, sc->act + slot * MI, sc->actp + slot * MI, MI), t);
                acc = rnd(acc + rnd(y * sc->wts[slot], t), t);
            }
            if (SI) {
                const float y = rnd(proj_row(&mo->shared_down, n, sc->shared + m * SI, sc->sharedp + m * SI, SI), t);
                acc = rnd(acc + rnd(sc->sgate[m] * y, t), t);
            }
            xs[m * E + n] = rnd(xs[m * E + n] + acc, t);
        }
}

/* One query head (float32, D values) over S keys and values of dtype t at k / v + s * ks elements (D
 * contiguous): softmax(q.k * scaling + bias[s]) in float32 over the keys whose mask byte (mask + s * ms)
 * is nonzero (mask NULL: all; bias NULL: none), times the values, rounded to t once; every key masked:
 * zeros. p: S floats of scratch. */
INLINE void attend_head(const float *q, const char *k, const char *v, int64_t ks, int64_t S, int64_t D,
                        const uint8_t *mask, int64_t ms, const float *bias, float scaling, float *p, float *out,
                        int t) {
    const int64_t size = t == F32 ? 4 : 2;
    float top = -INFINITY, total = 0.0f;
    for (int64_t s = 0; s < S; s++) {
        if (mask && !mask[s * ms]) {
            p[s] = -INFINITY;
            continue;
        }
        p[s] = dot(q, k + s * ks * size, D, t) * scaling;
        if (bias) p[s] += bias[s];
        if (p[s] > top) top = p[s];
    }
    for (int64_t d = 0; d < D; d++) out[d] = 0.0f;
    if (top == -INFINITY) return;
    for (int64_t s = 0; s < S; s++) {
        p[s] = p[s] == -INFINITY ? 0.0f : expf(p[s] - top);
        total += p[s];
    }
    for (int64_t s = 0; s < S; s++) {
        if (p[s] == 0.0f) continue;
        const float w = p[s] / total;
        for (int64_t d = 0; d < D; d++) out[d] += w * load1(v, s * ks + d, t);
    }
    for (int64_t d = 0; d < D; d++) out[d] = rnd(out[d], t);
}

INLINE void decode_impl(const decoder_shape *sh, const decoder_layer *layers, int64_t L, void *x, int64_t B,
                        const void *cos, const void *sin, const int64_t *cst, int64_t slot, int64_t S,
                        int nthreads, int t) {
    const int64_t E = sh->hidden, H = sh->heads, KVH = sh->kv_heads, D = sh->head_dim, I = sh->inter;
    const int64_t R = sh->rotary_dim, NQ = H * D, NK = KVH * D, NQKV = NQ + 2 * NK, rep = H / KVH;
    const int64_t size = t == F32 ? 4 : 2;
    const int64_t widest = E > I ? (E > NQ ? E : NQ) : (I > NQ ? I : NQ);
    int64_t keys = S; /* the most keys a query attends to: S, or a longer encoder output */
    for (int64_t l = 0; l < L; l++)
        if (layers[l].cross_q.w && layers[l].cross_len > keys) keys = layers[l].cross_len;
    const normd no_norm = {0};
    float *xs = malloc(sizeof(float) * B * (3 * E + widest + NQKV + NQ + 2 * I + H * keys));
    float *h = xs + B * E, *tmp = h + B * E, *hp = tmp + B * E, *qkv = hp + B * widest, *att = qkv + B * NQKV;
    float *act = att + B * NQ, *gates = act + B * I, *scores = gates + B * I;
    const int64_t cols = NQKV > I ? (NQKV > E ? NQKV : E) : (I > E ? I : E);
    float *scratch = malloc(sizeof(float) * (nthreads > 0 ? nthreads : 1) * B * cols); /* transposed products */
    for (int64_t i = 0; i < B * E; i++) xs[i] = load1(x, i, t);
    int64_t ne = 0, kmi = 0, kk = 0, si = 0; /* the sparse layers' largest sizes, for their scratch */
    for (int64_t l = 0; l < L; l++) {
        const moe_desc *mo = layers[l].moe;
        if (!mo) continue;
        ne = mo->n_experts > ne ? mo->n_experts : ne;
        kk = mo->top_k > kk ? mo->top_k : kk;
        kmi = mo->top_k * mo->inter > kmi ? mo->top_k * mo->inter : kmi;
        si = mo->shared_up.w && mo->shared_inter > si ? mo->shared_inter : si;
    }
    moe_scratch sc = {0};
    if (ne) {
        sc.logits = malloc(sizeof(float) * B * (ne + kk + 2 * kmi + 2 * si + 1));
        sc.wts = sc.logits + B * ne, sc.act = sc.wts + B * kk, sc.actp = sc.act + B * kmi;
        sc.shared = sc.actp + B * kmi, sc.sharedp = sc.shared + B * si, sc.sgate = sc.sharedp + B * si;
        sc.chosen = malloc(sizeof(int64_t) * B * kk);
    }

#pragma omp parallel num_threads(nthreads)
    for (int64_t l = 0; l < L; l++) {
        const decoder_layer *ly = layers + l;
#pragma omp single
        norm_rows(xs, &ly->attn_norm, h, hp, B, E, t);
        if (ly->q.transposed) {
            proj fused;
            if (fuse3(&ly->q, &ly->k, &ly->v, NQ, NK, &fused)) {
                column_products(&fused, h, B, E, NQKV, qkv, NQKV, t, scratch);
            } else {
                column_products(&ly->q, h, B, E, NQ, qkv, NQKV, t, scratch);
                column_products(&ly->k, h, B, E, NK, qkv + NQ, NQKV, t, scratch);
                column_products(&ly->v, h, B, E, NK, qkv + NQ + NK, NQKV, t, scratch);
            }
        } else {
#pragma omp for schedule(static)
            for (int64_t n = 0; n < NQKV; n++) {
                const proj *p = n < NQ ? &ly->q : n < NQ + NK ? &ly->k : &ly->v;
                const int64_t row = n < NQ ? n : n < NQ + NK ? n - NQ : n - NQ - NK;
                for (int64_t m = 0; m < B; m++)
                    qkv[m * NQKV + n] = rnd(proj_row(p, row, h + m * E, hp + m * E, E), t);
            }
        }
#pragma omp single
        for (int64_t m = 0; m < B; m++) {
            float *row = qkv + m * NQKV;
            const char *lcos = (const char *)(ly->rcos ? ly->rcos : cos) + m * R * size;
            const char *lsin = (const char *)(ly->rsin ? ly->rsin : sin) + m * R * size;
            for (int64_t j = 0; j < H + KVH; j++) { /* query heads, then key heads */
                const normd *qk_norm = j < H ? &ly->q_norm : &ly->k_norm;
                if (qk_norm->kind != NORM_NONE) norm_row(row + j * D, qk_norm, row + j * D, D, t);
                if (R) rotate(row + j * D, lcos, lsin, R, t);
                if (j < H && ly->qscale != 1.0f)
                    for (int64_t d = 0; d < D; d++) row[j * D + d] = rnd(row[j * D + d] * ly->qscale, t);
            }
            for (int64_t g = 0; g < KVH; g++) {
                int64_t at = m * cst[0] + g * cst[1] + slot * cst[2];
                for (int64_t d = 0; d < D; d++) {
                    store1(ly->k_cache, at + d, row[NQ + g * D + d], t);
                    store1(ly->v_cache, at + d, row[NQ + NK + g * D + d], t);
                }
            }
        }
#pragma omp for schedule(static)
        for (int64_t bh = 0; bh < B * H; bh++) {
            const int64_t m = bh / H, j = bh % H, g = j / rep, at = (m * cst[0] + g * cst[1]) * size;
            attend_head(qkv + m * NQKV + j * D, (const char *)ly->k_cache + at, (const char *)ly->v_cache + at,
                        cst[2], S, D, ly->mask ? ly->mask + m * ly->mb : NULL, ly->ms,
                        ly->bias ? ly->bias + m * ly->bb + j * ly->bh : NULL, ly->scaling, scores + bh * S,
                        att + bh * D, t);
        }
#pragma omp single
        prepare(att, hp, B, NQ);
        residual_product(xs, tmp, att, hp, &ly->o, &ly->attn_out_norm, B, E, NQ, t, scratch);
        if (ly->cross_q.w) {
            const int64_t CL = ly->cross_len, *cs = ly->cross_st;
#pragma omp single
            norm_rows(xs, &ly->cross_norm, h, hp, B, E, t);
#pragma omp for schedule(static)
            for (int64_t n = 0; n < NQ; n++)
                for (int64_t m = 0; m < B; m++)
                    qkv[m * NQKV + n] = rnd(proj_row(&ly->cross_q, n, h + m * E, hp + m * E, E), t);
#pragma omp for schedule(static)
            for (int64_t bh = 0; bh < B * H; bh++) {
                const int64_t m = bh / H, j = bh % H, at = (m * cs[0] + j * cs[1]) * size;
                attend_head(qkv + m * NQKV + j * D, (const char *)ly->cross_k + at, (const char *)ly->cross_v + at,
                            cs[2], CL, D, ly->cross_mask ? ly->cross_mask + m * ly->cmb : NULL, ly->cms, NULL,
                            ly->cross_scaling, scores + bh * CL, att + bh * D, t);
            }
#pragma omp single
            prepare(att, hp, B, NQ);
            residual_product(xs, tmp, att, hp, &ly->cross_o, &no_norm, B, E, NQ, t, scratch);
        }
#pragma omp single
        norm_rows(xs, &ly->mlp_norm, h, hp, B, E, t);
        if (ly->moe) {
            moe_mlp(xs, h, hp, ly->moe, ly->act, B, E, t, &sc);
            continue;
        }
        if (ly->up.transposed) {
            column_products(&ly->up, h, B, E, I, act, I, t, scratch);
            if (ly->gate.w) column_products(&ly->gate, h, B, E, I, gates, I, t, scratch);
#pragma omp for schedule(static)
            for (int64_t i = 0; i < B * I; i++)
                act[i] = ly->gate.w ? rnd(rnd(activate(gates[i], ly->act), t) * act[i], t)
                                    : rnd(activate(act[i], ly->act), t);
        } else {
#pragma omp for schedule(static)
        for (int64_t i = 0; i < I; i++)
            for (int64_t m = 0; m < B; m++) {
                float u = rnd(proj_row(&ly->up, i, h + m * E, hp + m * E, E), t);
                if (ly->gate.w) {
                    float g = rnd(proj_row(&ly->gate, i, h + m * E, hp + m * E, E), t);
                    act[m * I + i] = rnd(rnd(activate(g, ly->act), t) * u, t);
                } else {
                    act[m * I + i] = rnd(activate(u, ly->act), t);
                }
            }
        }
#pragma omp single
        prepare(act, hp, B, I);
        residual_product(xs, tmp, act, hp, &ly->down, &ly->mlp_out_norm, B, E, I, t, scratch);
    }
    for (int64_t i = 0; i < B * E; i++) store1(x, i, xs[i], t);
    free(sc.logits);
    free(sc.chosen);
    free(scratch);
    free(xs);
}

/* x (B, hidden) of dtype t: the embeddings in, the last layer's output out (before the final norm).
 * cos, sin: (B, rotary_dim) for this position. k/v caches: (B, kv_heads, capacity, head_dim) of dtype t
 * with strides cache_strides[0..2] (head_dim contiguous), written at `slot`; attention covers [0, S). */
int autolm_decode(int t, const decoder_shape *shape, const decoder_layer *layers, int64_t L, void *x, int64_t B,
                  const void *cos, const void *sin, const int64_t *cache_strides, int64_t slot, int64_t S,
                  int nthreads) {
    switch (t) {
    case F32: decode_impl(shape, layers, L, x, B, cos, sin, cache_strides, slot, S, nthreads, F32); return 0;
    case BF16: decode_impl(shape, layers, L, x, B, cos, sin, cache_strides, slot, S, nthreads, BF16); return 0;
    case F16: decode_impl(shape, layers, L, x, B, cos, sin, cache_strides, slot, S, nthreads, F16); return 0;
    }
    return 1;
}

/* ---- per-op kernels any family's torch code calls (kernels/__init__.py: norm, attend_one) ---- */

/* y = norm(x) row by row, M rows of D values of dtype t; the weight (and bias) as described by n */
int autolm_norm(int t, const void *x, void *y, int64_t M, int64_t D, const normd *n) {
    if (t != F32 && t != BF16 && t != F16) return 1;
    float *row = malloc(sizeof(float) * D);
    for (int64_t m = 0; m < M; m++) {
        for (int64_t d = 0; d < D; d++) row[d] = load1(x, m * D + d, t);
        norm_row(row, n, row, D, t);
        for (int64_t d = 0; d < D; d++) store1(y, m * D + d, row[d], t);
    }
    free(row);
    return 0;
}

/* Attention of one query per (row, head): q (B, H, D) contiguous; k, v (B, KVH, S, D) with strides
 * ks[0..2] / vs[0..2] (D contiguous); out (B, H, D). Scores and softmax in float32, the output rounded
 * once to dtype t. mask: NULL or bytes over (B, S) with strides (mb, ms), nonzero where a key is seen. */
int autolm_attend(int t, const void *q, const void *k, const void *v, void *out, int64_t B, int64_t H, int64_t KVH,
                  int64_t D, int64_t S, const int64_t *ks, const int64_t *vs, const uint8_t *mask, int64_t mb,
                  int64_t ms, float scaling, int nthreads) {
    if (t != F32 && t != BF16 && t != F16) return 1;
    const int64_t rep = H / KVH, size = t == F32 ? 4 : 2;
    float *scores = malloc(sizeof(float) * B * H * (S + D));
    if (B * H * S * D < (1 << 14)) nthreads = 1;
#pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1)
    for (int64_t bh = 0; bh < B * H; bh++) {
        const int64_t m = bh / H, g = (bh % H) / rep;
        float *p = scores + bh * (S + D), *acc = p + S, top = -INFINITY, total = 0.0f;
        float qf[D];
        for (int64_t d = 0; d < D; d++) qf[d] = load1(q, bh * D + d, t);
        for (int64_t s = 0; s < S; s++) {
            if (mask && !mask[m * mb + s * ms]) {
                p[s] = -INFINITY;
                continue;
            }
            p[s] = dot(qf, (const char *)k + (m * ks[0] + g * ks[1] + s * ks[2]) * size, D, t) * scaling;
            if (p[s] > top) top = p[s];
        }
        for (int64_t d = 0; d < D; d++) acc[d] = 0.0f;
        if (top != -INFINITY) {
            for (int64_t s = 0; s < S; s++) {
                p[s] = p[s] == -INFINITY ? 0.0f : expf(p[s] - top);
                total += p[s];
            }
            for (int64_t s = 0; s < S; s++) {
                if (p[s] == 0.0f) continue;
                const int64_t at = m * vs[0] + g * vs[1] + s * vs[2];
                const float w = p[s] / total;
                for (int64_t d = 0; d < D; d++) acc[d] += w * load1(v, at + d, t);
            }
        }
        for (int64_t d = 0; d < D; d++) store1(out, bh * D + d, acc[d], t);
    }
    free(scores);
    return 0;
}

/* ---- fused elementwise passes for encoders' prompts (kernels/__init__.py: add_norm) ----
 * A post-norm encoder (BERT) runs large products whose bias add, residual add, norm and activation
 * torch does as separate passes over activations too big for the cache; these do each group in one. */

/* y[m] = norm(x[m] + bias + residual[m]) for M rows of D values of dtype t (bias, residual may be NULL;
 * the sum rounded to t as torch's two adds would round it). y may equal x. Rows over the threads. */
int autolm_add_norm(int t, const void *x, const void *bias, const void *residual, void *y, int64_t M, int64_t D,
                    const normd *n, int nthreads) {
    if (t != F32 && t != BF16 && t != F16) return 1;
    if (M * D < (1 << 15)) nthreads = 1;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        float *row = malloc(sizeof(float) * D);
#pragma omp for schedule(static)
        for (int64_t m = 0; m < M; m++) {
            for (int64_t d = 0; d < D; d++) {
                float v = load1(x, m * D + d, t);
                if (bias) v = rnd(v + load1(bias, d, t), t);
                if (residual) v = rnd(v + load1(residual, m * D + d, t), t);
                row[d] = v;
            }
            norm_row(row, n, row, D, t);
            for (int64_t d = 0; d < D; d++) store1(y, m * D + d, row[d], t);
        }
        free(row);
    }
    return 0;
}
