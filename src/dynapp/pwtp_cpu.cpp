// Fused CPU kernels of the rank-one (D = 1) dynamic appearance, for dynapp/pwtp_cpu.py.
//
// Plain C ABI (called through ctypes, no Python or torch headers, so it builds in about two
// seconds with the system compiler).  One call does the whole per-pixel arithmetic of
// dynapp.pwtp._RankOneDA in a single pass over the clip, with the vertical half of the bilinear
// upsampling of A done on the fly, so neither A (N, T, H, W) nor any clip-sized temporary is
// ever written:
//
//   forward:  a_t  = (1 - lam) zc[t, i0] + lam zc[t, i1]   (zc = z U_w^T: A upsampled along W only)
//             B_c  = sum_t a_t x_ct,  S_c = sum_t x_ct,  aa = sum_t a_t^2,  m = mean_t a_t
//             y_c  = B_c / (aa + eps),  da_c = S_c / T - m y_c  (static_c = m y_c)
//             per image row: sum x^2 and sum_c y_c^2 (aa + 2 eps), in double (for ENoPR)
//   backward: u_c = g_static_c - g_da_c,  gB_c = (m u_c + 2 ge (aa + 2 eps) y_c) / (aa + eps),
//             g_aa = -(m yu + ge (aa + 3 eps) yy) / (aa + eps),
//             grad_a_t = sum_c gB_c x_ct + 2 a_t g_aa + yu / T, accumulated back onto zc
//             (the formulas of _RankOneDA.backward; ge = d loss / d explained).
//
// Work is split into units of R consecutive image rows of one sample, R * W values per stream.
// Each unit writes only its own rows of the outputs, except the gradient of zc, where nearby
// units may share a low-resolution row: the backward runs the units in p phases (u mod p) such
// that no two units of a phase share one.  The result does not depend on the number of threads.

#include <cstdint>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <vector>

namespace {

// Calls body(k0, k1) on contiguous ranges of [0, count), one per thread.  Compiled with
// -fopenmp, this runs on the OpenMP pool already loaded by PyTorch (torch/lib/libgomp.so.1 has
// the soname the kernel asks for), so PyTorch's threads, which spin for a while after each op,
// do the work (a separate std::thread pool beside them ran 2x slower).
template <typename F>
void parallel_ranges(int64_t count, int threads, F body) {
    if (threads < 1) threads = 1;
    if (threads > count) threads = static_cast<int>(count);
#ifdef _OPENMP
    if (threads > 1) {
#pragma omp parallel num_threads(threads)
        {
            const int64_t k = omp_get_thread_num(), nt = omp_get_num_threads();
            const int64_t k0 = count * k / nt, k1 = count * (k + 1) / nt;
            if (k0 < k1) body(k0, k1);
        }
        return;
    }
#endif
    if (count > 0) body(0, count);
}

struct Geometry {
    int64_t N, C, T, H, W, h;
    const int32_t* i0;  // (H,) the two low-resolution rows of image row H and the weight of the second
    const int32_t* i1;
    int64_t R;  // image rows per unit
    int64_t blocks() const { return (H + R - 1) / R; }
    int64_t units() const { return N * blocks(); }
    // The smallest p >= 2 such that units u and u + p of a sample touch disjoint low-resolution
    // rows, so that units of one residue mod p can accumulate into grad zc in parallel; 0 if none
    // up to 8.
    int64_t phases() const {
        for (int64_t p = 2; p <= 8; ++p) {
            bool ok = true;
            for (int64_t b = 0; ok && b + p < blocks(); ++b) ok = i1[b * R + R - 1] < i0[(b + p) * R];
            if (ok) return p;
        }
        return 0;
    }
};

// Rows per unit: long contiguous spans keep the hardware prefetchers busy (one row of 224 values
// per stream was 2x slower), while the unit's scratch stays in the L2 cache.
inline int64_t rows_per_unit(int64_t H, int64_t W) {
    int64_t R = 2048 / (W > 0 ? W : 1);
    return R < 1 ? 1 : (R > H ? H : R);
}

// A of one unit: a[t, r * W + X] for its rows, plus aa = sum_t a^2 and m = mean_t a.
template <typename T>
inline void unit_hyperplanes(const T* __restrict zc, const T* __restrict lam, const Geometry& g, int64_t n,
                             int64_t h0, int64_t rows, int64_t L, T* __restrict a, T* __restrict aa,
                             T* __restrict m) {
    const int64_t W = g.W;
    for (int64_t X = 0; X < L; ++X) aa[X] = m[X] = T(0);
    for (int64_t t = 0; t < g.T; ++t) {
        T* __restrict at = a + t * L;
        const T* zt = zc + (n * g.T + t) * g.h * W;
        for (int64_t r = 0; r < rows; ++r) {
            const T* __restrict z0 = zt + g.i0[h0 + r] * W;
            const T* __restrict z1 = zt + g.i1[h0 + r] * W;
            const T l = lam[h0 + r];
            T* __restrict ar = at + r * W;
            for (int64_t X = 0; X < W; ++X) ar[X] = z0[X] + l * (z1[X] - z0[X]);
        }
        for (int64_t X = 0; X < L; ++X) {
            aa[X] += at[X] * at[X];
            m[X] += at[X];
        }
    }
    const T invT = T(1) / T(g.T);
    for (int64_t X = 0; X < L; ++X) m[X] *= invT;
}

// K consecutive pixels of one unit, all channels: the temporal sums live in registers, the clip
// is read once, and the per-pixel outputs are written directly (da, and y / static on request).
template <typename T, int K>
inline void forward_block(const T* __restrict x, int64_t P, int64_t C, int64_t Tn, const T* __restrict a, int64_t L,
                          const T* __restrict inv, const T* __restrict m, const T* __restrict aa, T eps, int64_t o,
                          T* __restrict da, T* __restrict stat, T* __restrict y, T* __restrict sq_out,
                          T* __restrict ex_out) {
    const T invT = T(1) / T(Tn);
    T sq[K] = {}, ex[K] = {};
    for (int64_t c = 0; c < C; ++c) {
        T S[K] = {}, B[K] = {};
        for (int64_t t = 0; t < Tn; ++t) {
            const T* __restrict xr = x + (c * Tn + t) * P;
            const T* __restrict at = a + t * L;
            for (int k = 0; k < K; ++k) {
                T v = xr[k];
                S[k] += v;
                B[k] += at[k] * v;
                sq[k] += v * v;
            }
        }
        T* __restrict dc = da + o + c * P;
        for (int k = 0; k < K; ++k) {
            B[k] *= inv[k];                    // now y
            S[k] = S[k] * invT - m[k] * B[k];  // now da
            dc[k] = S[k];
            ex[k] += B[k] * B[k] * (aa[k] + T(2) * eps);
        }
        if (y)
            for (int k = 0; k < K; ++k) y[o + c * P + k] = B[k];
        if (stat)
            for (int k = 0; k < K; ++k) stat[o + c * P + k] = m[k] * B[k];
    }
    for (int k = 0; k < K; ++k) {
        sq_out[k] = sq[k];
        ex_out[k] = ex[k];
    }
}

template <typename T>
void forward_units(const T* __restrict x, const T* __restrict zc, const T* __restrict lam, const Geometry& g, T eps,
                   T* __restrict da, T* __restrict stat, T* __restrict y, double* __restrict xx_rows,
                   double* __restrict expl_rows, int64_t u0, int64_t u1) {
    const int64_t C = g.C, Tn = g.T, H = g.H, W = g.W, P = g.H * g.W, Lmax = g.R * g.W;
    std::vector<T> buf((Tn + 5) * Lmax);
    T* a = buf.data();  // (T, L)
    T* aa = a + Tn * Lmax;
    T* inv = aa + Lmax;
    T* m = inv + Lmax;
    T* sq = m + Lmax;
    T* ex = sq + Lmax;
    for (int64_t u = u0; u < u1; ++u) {
        const int64_t n = u / g.blocks(), h0 = (u % g.blocks()) * g.R;
        const int64_t rows = h0 + g.R <= H ? g.R : H - h0, L = rows * W;
        unit_hyperplanes(zc, lam, g, n, h0, rows, L, a, aa, m);
        for (int64_t X = 0; X < L; ++X) inv[X] = T(1) / (aa[X] + eps);
        const T* xu = x + n * C * Tn * P + h0 * W;
        const int64_t o = n * C * P + h0 * W;
        int64_t X0 = 0;
        for (; X0 + 64 <= L; X0 += 64)
            forward_block<T, 64>(xu + X0, P, C, Tn, a + X0, L, inv + X0, m + X0, aa + X0, eps, o + X0, da, stat, y,
                                 sq + X0, ex + X0);
        for (; X0 + 16 <= L; X0 += 16)
            forward_block<T, 16>(xu + X0, P, C, Tn, a + X0, L, inv + X0, m + X0, aa + X0, eps, o + X0, da, stat, y,
                                 sq + X0, ex + X0);
        for (; X0 < L; ++X0)
            forward_block<T, 1>(xu + X0, P, C, Tn, a + X0, L, inv + X0, m + X0, aa + X0, eps, o + X0, da, stat, y,
                                sq + X0, ex + X0);
        for (int64_t r = 0; r < rows; ++r) {
            // Eight independent double partial sums: one running sum is a serial chain.
            double px[8] = {}, pe[8] = {};
            int64_t X = r * W;
            for (; X + 8 <= (r + 1) * W; X += 8)
                for (int k = 0; k < 8; ++k) {
                    px[k] += double(sq[X + k]);
                    pe[k] += double(ex[X + k]);
                }
            for (int k = 0; X < (r + 1) * W; ++X, ++k) {
                px[k] += double(sq[X]);
                pe[k] += double(ex[X]);
            }
            double sx = 0.0, se = 0.0;
            for (int k = 0; k < 8; ++k) {
                sx += px[k];
                se += pe[k];
            }
            xx_rows[n * H + h0 + r] = sx;
            expl_rows[n * H + h0 + r] = se;
        }
    }
}

// K consecutive pixels of one unit: the gradient of A, written over a (a_t is used once per t).
// y is recomputed from the clip rather than saved by the forward: the block's clip values
// (C * T * K) are still in the L1 cache when the gradient of A reads them again.
template <typename T, int K>
inline void backward_block(const T* __restrict x, int64_t P, int64_t C, int64_t Tn, T* __restrict a, int64_t L,
                           const T* __restrict inv, const T* __restrict m, const T* __restrict aa, T eps, T ge,
                           int64_t o, const T* __restrict g_da, const T* __restrict g_stat, T* __restrict gB) {
    const T invT = T(1) / T(Tn);
    T yu[K] = {}, yy[K] = {}, g_aa[K];
    for (int64_t c = 0; c < C; ++c) {
        T yc[K] = {};
        for (int64_t t = 0; t < Tn; ++t) {
            const T* __restrict xr = x + (c * Tn + t) * P;
            const T* __restrict at = a + t * L;
            for (int k = 0; k < K; ++k) yc[k] += at[k] * xr[k];
        }
        for (int k = 0; k < K; ++k) yc[k] *= inv[k];
        const T* __restrict gd = g_da + o + c * P;
        T* __restrict gb = gB + c * K;
        T u[K];
        for (int k = 0; k < K; ++k) u[k] = -gd[k];
        if (g_stat)
            for (int k = 0; k < K; ++k) u[k] += g_stat[o + c * P + k];
        for (int k = 0; k < K; ++k) {
            yu[k] += yc[k] * u[k];
            yy[k] += yc[k] * yc[k];
            gb[k] = (m[k] * u[k] + T(2) * ge * (aa[k] + T(2) * eps) * yc[k]) * inv[k];
        }
    }
    for (int k = 0; k < K; ++k) {
        g_aa[k] = -(m[k] * yu[k] + ge * (aa[k] + T(3) * eps) * yy[k]) * inv[k];
        yu[k] *= invT;
    }
    for (int64_t t = 0; t < Tn; ++t) {
        T* __restrict at = a + t * L;
        T acc[K];
        for (int k = 0; k < K; ++k) acc[k] = yu[k] + T(2) * at[k] * g_aa[k];
        for (int64_t c = 0; c < C; ++c) {
            const T* __restrict xr = x + (c * Tn + t) * P;
            const T* __restrict gb = gB + c * K;
            for (int k = 0; k < K; ++k) acc[k] += gb[k] * xr[k];
        }
        for (int k = 0; k < K; ++k) at[k] = acc[k];
    }
}

// Units k * stride + phase for k in [k0, k1).
template <typename T>
void backward_units(const T* __restrict x, const T* __restrict zc, const T* __restrict lam, const Geometry& g, T eps,
                    const T* __restrict g_da, const T* __restrict g_stat,
                    const T* __restrict g_expl, T* __restrict g_zc, int64_t stride, int64_t phase, int64_t k0,
                    int64_t k1) {
    const int64_t C = g.C, Tn = g.T, H = g.H, W = g.W, P = g.H * g.W, Lmax = g.R * g.W;
    std::vector<T> buf((Tn + 3) * Lmax + 64 * C);
    T* a = buf.data();  // (T, L): A, then its gradient
    T* aa = a + Tn * Lmax;
    T* m = aa + Lmax;
    T* inv = m + Lmax;
    T* gB = inv + Lmax;  // (C, K) scratch of one block
    for (int64_t k = k0; k < k1; ++k) {
        const int64_t u = k * stride + phase;
        const int64_t n = u / g.blocks(), h0 = (u % g.blocks()) * g.R;
        const int64_t rows = h0 + g.R <= H ? g.R : H - h0, L = rows * W;
        const T ge = g_expl[n];
        unit_hyperplanes(zc, lam, g, n, h0, rows, L, a, aa, m);
        for (int64_t X = 0; X < L; ++X) inv[X] = T(1) / (aa[X] + eps);
        const T* xu = x + n * C * Tn * P + h0 * W;
        const int64_t o = n * C * P + h0 * W;
        int64_t X0 = 0;
        for (; X0 + 64 <= L; X0 += 64)
            backward_block<T, 64>(xu + X0, P, C, Tn, a + X0, L, inv + X0, m + X0, aa + X0, eps, ge, o + X0, g_da, g_stat,
                                  gB);
        for (; X0 + 16 <= L; X0 += 16)
            backward_block<T, 16>(xu + X0, P, C, Tn, a + X0, L, inv + X0, m + X0, aa + X0, eps, ge, o + X0, g_da, g_stat,
                                  gB);
        for (; X0 < L; ++X0)
            backward_block<T, 1>(xu + X0, P, C, Tn, a + X0, L, inv + X0, m + X0, aa + X0, eps, ge, o + X0, g_da, g_stat,
                                 gB);
        // The transpose of the vertical interpolation: rows of grad A onto rows of grad zc.
        for (int64_t t = 0; t < Tn; ++t) {
            T* gt = g_zc + (n * Tn + t) * g.h * W;
            for (int64_t r = 0; r < rows; ++r) {
                const T* __restrict ga = a + t * L + r * W;
                T* __restrict gz0 = gt + g.i0[h0 + r] * W;
                const T l = lam[h0 + r];
                for (int64_t X = 0; X < W; ++X) gz0[X] += (T(1) - l) * ga[X];
                T* __restrict gz1 = gt + g.i1[h0 + r] * W;
                for (int64_t X = 0; X < W; ++X) gz1[X] += l * ga[X];
            }
        }
    }
}

template <typename T>
void forward(const T* x, const T* zc, const int32_t* i0, const int32_t* i1, const T* lam, int64_t N, int64_t C,
             int64_t Tn, int64_t H, int64_t W, int64_t h, T eps, T* da, T* stat, T* y, double* xx_rows,
             double* expl_rows, int threads) {
    const Geometry g{N, C, Tn, H, W, h, i0, i1, rows_per_unit(H, W)};
    parallel_ranges(g.units(), threads, [&](int64_t u0, int64_t u1) {
        forward_units<T>(x, zc, lam, g, eps, da, stat, y, xx_rows, expl_rows, u0, u1);
    });
}

// g_zc must be zero on entry; it is accumulated into.
template <typename T>
void backward(const T* x, const T* zc, const int32_t* i0, const int32_t* i1, const T* lam, int64_t N, int64_t C,
              int64_t Tn, int64_t H, int64_t W, int64_t h, T eps, const T* g_da, const T* g_stat,
              const T* g_expl, T* g_zc, int threads) {
    const Geometry g{N, C, Tn, H, W, h, i0, i1, rows_per_unit(H, W)};
    // The phase order is kept with one thread too, so the rounding does not depend on threads.
    const int64_t units = g.units(), p = g.phases();
    if (p == 0) {
        backward_units<T>(x, zc, lam, g, eps, g_da, g_stat, g_expl, g_zc, 1, 0, 0, units);
        return;
    }
    for (int64_t phase = 0; phase < p; ++phase)
        parallel_ranges((units - phase + p - 1) / p, threads, [&](int64_t k0, int64_t k1) {
            backward_units<T>(x, zc, lam, g, eps, g_da, g_stat, g_expl, g_zc, p, phase, k0, k1);
        });
}

// ----------------------------------------------------------------------------------------------
// The relation descriptor of Eq. 3: u[n, p, k] = <f[n, :, t1_k, p], f[n, :, t2_k, p]> / C' for the
// pairs t1 < t2 in row-major order, written (N, h*w, T(T-1)/2) so the MLP reads it in place.
// Backward: g_f[c, t] = sum_s G[t, s] f[c, s] / C' with G the symmetric matrix of g_u.

template <typename T, int K>
void gram_forward_block(const T* __restrict f, int64_t Cf, int64_t Tn, int64_t Q, T* __restrict u) {
    // f: feature block at position p0 of sample n (channel stride Tn * Q, frame stride Q); u: (K, pairs)
    const int64_t pairs = Tn * (Tn - 1) / 2;
    const T scale = T(1) / T(Cf);
    int64_t k = 0;
    for (int64_t t1 = 0; t1 < Tn; ++t1)
        for (int64_t t2 = t1 + 1; t2 < Tn; ++t2, ++k) {
            T acc[K] = {};
            for (int64_t c = 0; c < Cf; ++c) {
                const T* __restrict f1 = f + (c * Tn + t1) * Q;
                const T* __restrict f2 = f + (c * Tn + t2) * Q;
                for (int q = 0; q < K; ++q) acc[q] += f1[q] * f2[q];
            }
            for (int q = 0; q < K; ++q) u[q * pairs + k] = acc[q] * scale;
        }
}

template <typename T, int K>
void gram_backward_block(const T* __restrict f, const T* __restrict gu, int64_t Cf, int64_t Tn, int64_t Q,
                         T* __restrict gf, T* __restrict G) {
    // G: scratch (Tn, Tn, K), the symmetric gradient matrix of each position, zero diagonal.
    const int64_t pairs = Tn * (Tn - 1) / 2;
    const T scale = T(1) / T(Cf);
    int64_t k = 0;
    for (int64_t t = 0; t < Tn; ++t)
        for (int q = 0; q < K; ++q) G[(t * Tn + t) * K + q] = T(0);
    for (int64_t t1 = 0; t1 < Tn; ++t1)
        for (int64_t t2 = t1 + 1; t2 < Tn; ++t2, ++k)
            for (int q = 0; q < K; ++q)
                G[(t1 * Tn + t2) * K + q] = G[(t2 * Tn + t1) * K + q] = gu[q * pairs + k] * scale;
    for (int64_t c = 0; c < Cf; ++c)
        for (int64_t t = 0; t < Tn; ++t) {
            T acc[K] = {};
            for (int64_t s = 0; s < Tn; ++s) {
                const T* __restrict fs = f + (c * Tn + s) * Q;
                const T* __restrict g = G + (t * Tn + s) * K;
                for (int q = 0; q < K; ++q) acc[q] += g[q] * fs[q];
            }
            T* __restrict out = gf + (c * Tn + t) * Q;
            for (int q = 0; q < K; ++q) out[q] = acc[q];
        }
}

// Blocks of 16 positions of one sample (and a tail of single positions), over all samples.
template <typename T, typename Block16, typename Block1>
void gram_blocks(int64_t N, int64_t Q, int threads, Block16 b16, Block1 b1) {
    const int64_t per = Q / 16 + Q % 16;  // work items per sample
    parallel_ranges(N * per, threads, [&](int64_t k0, int64_t k1) {
        for (int64_t k = k0; k < k1; ++k) {
            const int64_t n = k / per, j = k % per;
            if (j < Q / 16)
                b16(n, j * 16);
            else
                b1(n, (Q / 16) * 16 + (j - Q / 16));
        }
    });
}

template <typename T>
void gram_forward(const T* f, int64_t N, int64_t Cf, int64_t Tn, int64_t Q, T* u, int threads) {
    const int64_t pairs = Tn * (Tn - 1) / 2;
    gram_blocks<T>(
        N, Q, threads,
        [&](int64_t n, int64_t p) { gram_forward_block<T, 16>(f + n * Cf * Tn * Q + p, Cf, Tn, Q, u + (n * Q + p) * pairs); },
        [&](int64_t n, int64_t p) { gram_forward_block<T, 1>(f + n * Cf * Tn * Q + p, Cf, Tn, Q, u + (n * Q + p) * pairs); });
}

template <typename T>
void gram_backward(const T* f, const T* gu, int64_t N, int64_t Cf, int64_t Tn, int64_t Q, T* gf, int threads) {
    const int64_t pairs = Tn * (Tn - 1) / 2;
    gram_blocks<T>(
        N, Q, threads,
        [&](int64_t n, int64_t p) {
            std::vector<T> G(Tn * Tn * 16);
            gram_backward_block<T, 16>(f + n * Cf * Tn * Q + p, gu + (n * Q + p) * pairs, Cf, Tn, Q,
                                       gf + n * Cf * Tn * Q + p, G.data());
        },
        [&](int64_t n, int64_t p) {
            std::vector<T> G(Tn * Tn);
            gram_backward_block<T, 1>(f + n * Cf * Tn * Q + p, gu + (n * Q + p) * pairs, Cf, Tn, Q,
                                      gf + n * Cf * Tn * Q + p, G.data());
        });
}

}  // namespace

extern "C" {

int dynapp_pwtp_abi_version() { return 3; }

void dynapp_da1_forward_f32(const float* x, const float* zc, const int32_t* i0, const int32_t* i1, const float* lam,
                            int64_t N, int64_t C, int64_t T, int64_t H, int64_t W, int64_t h, float eps, float* da,
                            float* stat, float* y, double* xx_rows, double* expl_rows, int threads) {
    forward<float>(x, zc, i0, i1, lam, N, C, T, H, W, h, eps, da, stat, y, xx_rows, expl_rows, threads);
}

void dynapp_da1_forward_f64(const double* x, const double* zc, const int32_t* i0, const int32_t* i1,
                            const double* lam, int64_t N, int64_t C, int64_t T, int64_t H, int64_t W, int64_t h,
                            double eps, double* da, double* stat, double* y, double* xx_rows, double* expl_rows,
                            int threads) {
    forward<double>(x, zc, i0, i1, lam, N, C, T, H, W, h, eps, da, stat, y, xx_rows, expl_rows, threads);
}

void dynapp_da1_backward_f32(const float* x, const float* zc, const int32_t* i0, const int32_t* i1, const float* lam,
                             int64_t N, int64_t C, int64_t T, int64_t H, int64_t W, int64_t h, float eps,
                             const float* g_da, const float* g_stat, const float* g_expl,
                             float* g_zc, int threads) {
    backward<float>(x, zc, i0, i1, lam, N, C, T, H, W, h, eps, g_da, g_stat, g_expl, g_zc, threads);
}

void dynapp_da1_backward_f64(const double* x, const double* zc, const int32_t* i0, const int32_t* i1,
                             const double* lam, int64_t N, int64_t C, int64_t T, int64_t H, int64_t W, int64_t h,
                             double eps, const double* g_da, const double* g_stat,
                             const double* g_expl, double* g_zc, int threads) {
    backward<double>(x, zc, i0, i1, lam, N, C, T, H, W, h, eps, g_da, g_stat, g_expl, g_zc, threads);
}

void dynapp_gram_forward_f32(const float* f, int64_t N, int64_t C, int64_t T, int64_t Q, float* u, int threads) {
    gram_forward<float>(f, N, C, T, Q, u, threads);
}

void dynapp_gram_forward_f64(const double* f, int64_t N, int64_t C, int64_t T, int64_t Q, double* u, int threads) {
    gram_forward<double>(f, N, C, T, Q, u, threads);
}

void dynapp_gram_backward_f32(const float* f, const float* gu, int64_t N, int64_t C, int64_t T, int64_t Q, float* gf,
                              int threads) {
    gram_backward<float>(f, gu, N, C, T, Q, gf, threads);
}

void dynapp_gram_backward_f64(const double* f, const double* gu, int64_t N, int64_t C, int64_t T, int64_t Q,
                              double* gf, int threads) {
    gram_backward<double>(f, gu, N, C, T, Q, gf, threads);
}

}  // extern "C"
