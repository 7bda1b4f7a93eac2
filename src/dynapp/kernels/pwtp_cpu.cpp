// Fused CPU kernels of the rank-one (D = 1) dynamic appearance, for dynapp/kernels/pwtp_cpu.py.
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
//             leak-free (remove): da_c = f S_c - m y_c with f = m^2 / (aa + eps), i.e. minus
//             (sum of the temporal weights) x (mean_t x): the pixel's weights then sum to zero
//             per image row: sum x^2 and sum_c y_c^2 (aa + 2 eps), in double (for ENoPR)
//   backward: u_c = g_static_c - g_da_c,  gB_c = (m u_c + 2 ge (aa + 2 eps) y_c) / (aa + eps),
//             g_aa = -(m yu + ge (aa + 3 eps) yy) / (aa + eps),
//             grad_a_t = sum_c gB_c x_ct + 2 a_t g_aa + yu / T, accumulated back onto zc
//             (the formulas of _RankOneDA.backward; ge = d loss / d explained).
//             remove: with q = sum_c g_da_c S_c, g_aa gets -f q / (aa + eps) and yu gets
//             2 m q / (aa + eps) (the derivatives of f S_c).
//
// The same library holds the relation descriptor of Eq. 3 (the Gram features of conv F's
// output), forward and backward, at the end of this file.
//
// Work is split into units of R consecutive image rows of one sample, R * W values per stream.
// Each unit writes only its own rows of the outputs, except the gradient of zc, where nearby
// units may share a low-resolution row: the backward runs the units in p phases (u mod p) such
// that no two units of a phase share one.  The result does not depend on the number of threads.

#include <cstdint>
#include <type_traits>
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
    // The clip: sample n is segment n % S of clip n / S, at x + (n / S) * sN + (n % S) * sS; its
    // channels and frames are sc and st apart; each frame (H, W) is contiguous.
    int64_t sN, S, sS, sc, st;
    int64_t sample(int64_t n) const { return (n / S) * sN + (n % S) * sS; }
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

// Rows per unit: a few thousand pixels, so that there are many units to share among threads
// and the backward's phases (below) stay few.
inline int64_t rows_per_unit(int64_t H, int64_t W) {
    int64_t R = 2048 / (W > 0 ? W : 1);
    return R < 1 ? 1 : (R > H ? H : R);
}

// The backward also needs units of at least two low-resolution rows (2 H / h + 2 image rows), so
// that a few phases always separate units that share a row of grad zc, even for wide images.
inline int64_t backward_rows_per_unit(int64_t H, int64_t W, int64_t h) {
    const int64_t R = rows_per_unit(H, W), span = 2 * ((H + h - 1) / h) + 2;
    return R >= span ? R : (span > H ? H : span);
}

// Calls block(Width<K>(), X0) over [0, L) in blocks of K = 64, 16, then 1 pixels (C++17: the
// block width reaches the generic lambda as a type).
template <int K>
using Width = std::integral_constant<int, K>;

template <typename F>
inline void blocks_of(int64_t L, F&& block) {
    int64_t X0 = 0;
    for (; X0 + 64 <= L; X0 += 64) block(Width<64>(), X0);
    for (; X0 + 16 <= L; X0 += 16) block(Width<16>(), X0);
    for (; X0 < L; ++X0) block(Width<1>(), X0);
}

// A of one unit: a[t * L + r * W + X] for its rows, plus aa = sum_t a^2, m = mean_t a and
// inv = 1 / (aa + eps).  L = rows * W; the unit's A (T * L values) stays in the L2 cache.
template <typename T, int K>
inline void hyperplane_block(const T* __restrict zc, T l, int64_t Tn, int64_t zstride, int64_t d1, int64_t L, T eps,
                             T* __restrict a, T* __restrict aa_out, T* __restrict m_out, T* __restrict inv_out) {
    // zc: row i0 of frame 0 at this block's columns; row i1 is d1 further, frame t is t * zstride.
    T aa[K] = {}, m[K] = {};
    for (int64_t t = 0; t < Tn; ++t) {
        const T* __restrict z0 = zc + t * zstride;
        const T* __restrict z1 = z0 + d1;
        T* __restrict at = a + t * L;
        for (int k = 0; k < K; ++k) {
            const T v = z0[k] + l * (z1[k] - z0[k]);
            at[k] = v;
            aa[k] += v * v;
            m[k] += v;
        }
    }
    const T invT = T(1) / T(Tn);
    for (int k = 0; k < K; ++k) {
        aa_out[k] = aa[k];
        m_out[k] = m[k] * invT;
        inv_out[k] = T(1) / (aa[k] + eps);
    }
}

template <typename T>
inline void unit_hyperplanes(const T* __restrict zc, const T* __restrict lam, const Geometry& g, int64_t n,
                             int64_t h0, int64_t rows, int64_t L, T eps, T* __restrict a, T* __restrict aa,
                             T* __restrict m, T* __restrict inv) {
    const int64_t W = g.W, zstride = g.h * W;
    for (int64_t r = 0; r < rows; ++r) {
        const int64_t row = h0 + r, o = r * W;
        const T* z = zc + n * g.T * zstride + g.i0[row] * W;
        const int64_t d1 = (g.i1[row] - g.i0[row]) * W;
        blocks_of(W, [&](auto width, int64_t X0) {
            constexpr int K = decltype(width)::value;
            hyperplane_block<T, K>(z + X0, lam[row], g.T, zstride, d1, L, eps, a + o + X0, aa + o + X0, m + o + X0,
                                   inv + o + X0);
        });
    }
}

// Software prefetch of what a block of K values at p reads 1 KB further on: with T (or C * T)
// concurrent streams the hardware prefetchers fall behind (the forward pass took 25% longer
// without this on the development machine).
template <typename T, int K>
inline void prefetch_ahead(const T* p) {
    if constexpr (K * sizeof(T) >= 64) {
        const char* c = reinterpret_cast<const char*>(p) + 1024;
        for (int b = 0; b < int(K * sizeof(T)); b += 64) __builtin_prefetch(c + b);
    }
}

// Scratch of one thread for units of up to Lmax pixels.
template <typename T>
struct Scratch {
    std::vector<T> buf;
    T *a, *aa, *m, *inv, *v0, *v1, *v2, *gB, *ga;
    // The forward uses a, aa, m, inv, v0 and v1; the backward also v2, gB and ga.
    Scratch(int64_t Tn, int64_t C, int64_t Lmax, bool backward)
        : buf((Tn + 5 + (backward ? 1 + C + Tn : 0)) * Lmax) {
        a = buf.data();      // (T, L) A
        aa = a + Tn * Lmax;  // (L,) sum_t a^2
        m = aa + Lmax;       // (L,) mean_t a
        inv = m + Lmax;      // (L,) 1 / (aa + eps)
        v0 = inv + Lmax;     // (L,) forward: sum x^2; backward: yu
        v1 = v0 + Lmax;      // (L,) forward: sum y^2 (aa + 2 eps); backward: yy, then g_aa
        v2 = backward ? v1 + Lmax : nullptr;  // (L,) backward: q = sum_c g_da S (leak-free DA)
        gB = backward ? v2 + Lmax : nullptr;  // (C, L)
        ga = backward ? gB + C * Lmax : nullptr;  // (T, W): grad A of one row
    }
};

// Channel c of K pixels: S = sum_t x_t and B = sum_t a_t x_t in registers over one pass of the
// T frame streams of the channel (channel-outer order: T concurrent streams, not C * T); writes
// da (and static on request), accumulates sum x^2 into sq and y^2 (aa + 2 eps) into ex.
template <typename T, int K>
inline void forward_block(const T* __restrict xc, int64_t st, int64_t Tn, const T* __restrict a, int64_t L,
                          const T* __restrict inv, const T* __restrict m, const T* __restrict aa, T eps,
                          bool remove, T* __restrict dc, T* __restrict sc, T* __restrict sq, T* __restrict ex) {
    const T invT = T(1) / T(Tn);
    T S[K] = {}, B[K] = {}, q[K];
    for (int k = 0; k < K; ++k) q[k] = sq[k];
    for (int64_t t = 0; t < Tn; ++t) {
        const T* __restrict xr = xc + t * st;
        const T* __restrict at = a + t * L;
        prefetch_ahead<T, K>(xr);
        for (int k = 0; k < K; ++k) {
            T v = xr[k];
            S[k] += v;
            B[k] += at[k] * v;
            q[k] += v * v;
        }
    }
    for (int k = 0; k < K; ++k) {
        sq[k] = q[k];
        B[k] *= inv[k];  // now y
        ex[k] += B[k] * B[k] * (aa[k] + T(2) * eps);
    }
    if (remove)
        for (int k = 0; k < K; ++k) dc[k] = S[k] * (m[k] * m[k] * inv[k]) - m[k] * B[k];
    else
        for (int k = 0; k < K; ++k) dc[k] = S[k] * invT - m[k] * B[k];
    if (sc)
        for (int k = 0; k < K; ++k) sc[k] = m[k] * B[k];
}

template <typename T>
void forward_units(const T* __restrict x, const T* __restrict zc, const T* __restrict lam, const Geometry& g, T eps,
                   bool remove, T* __restrict da, T* __restrict stat, double* __restrict xx_rows,
                   double* __restrict expl_rows, int64_t u0, int64_t u1) {
    const int64_t C = g.C, Tn = g.T, H = g.H, W = g.W, P = g.H * g.W;
    Scratch<T> s(Tn, C, g.R * W, false);
    for (int64_t u = u0; u < u1; ++u) {
        const int64_t n = u / g.blocks(), h0 = (u % g.blocks()) * g.R;
        const int64_t rows = h0 + g.R <= H ? g.R : H - h0, L = rows * W;
        unit_hyperplanes(zc, lam, g, n, h0, rows, L, eps, s.a, s.aa, s.m, s.inv);
        for (int64_t X = 0; X < L; ++X) s.v0[X] = s.v1[X] = T(0);
        for (int64_t c = 0; c < C; ++c) {
            const T* xc = x + g.sample(n) + c * g.sc + h0 * W;
            const int64_t o = (n * C + c) * P + h0 * W;
            blocks_of(L, [&](auto width, int64_t X0) {
                constexpr int K = decltype(width)::value;
                forward_block<T, K>(xc + X0, g.st, Tn, s.a + X0, L, s.inv + X0, s.m + X0, s.aa + X0, eps, remove, da + o + X0,
                                    stat ? stat + o + X0 : nullptr, s.v0 + X0, s.v1 + X0);
            });
        }
        for (int64_t r = 0; r < rows; ++r) {
            // Eight independent double partial sums: one running sum is a serial chain.
            double px[8] = {}, pe[8] = {};
            const T* sq = s.v0 + r * W;
            const T* ex = s.v1 + r * W;
            int64_t X = 0;
            for (; X + 8 <= W; X += 8)
                for (int k = 0; k < 8; ++k) {
                    px[k] += double(sq[X + k]);
                    pe[k] += double(ex[X + k]);
                }
            for (int k = 0; X < W; ++X, ++k) {
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

// Backward, first pass, channel c of K pixels: y_c is recomputed from the clip (not saved by the
// forward), u_c = g_static_c - g_da_c, yu += y_c u_c, yy += y_c^2, and
// gB_c = (m u_c + 2 ge (aa + 2 eps) y_c) / (aa + eps) is stored for the second pass.
// Remove (leak-free DA) also recomputes S_c = sum_t x_ct and accumulates q += g_da_c S_c.
template <typename T, int K, bool Remove>
inline void backward_block1(const T* __restrict xc, int64_t st, int64_t Tn, const T* __restrict a, int64_t L,
                            const T* __restrict inv, const T* __restrict m, const T* __restrict aa, T eps, T ge,
                            const T* __restrict gd, const T* __restrict gs, T* __restrict yu, T* __restrict yy,
                            T* __restrict gb, T* __restrict q) {
    T yc[K] = {}, S[K] = {};
    for (int64_t t = 0; t < Tn; ++t) {
        const T* __restrict xr = xc + t * st;
        const T* __restrict at = a + t * L;
        prefetch_ahead<T, K>(xr);
        for (int k = 0; k < K; ++k) yc[k] += at[k] * xr[k];
        if constexpr (Remove)
            for (int k = 0; k < K; ++k) S[k] += xr[k];
    }
    if constexpr (Remove)
        for (int k = 0; k < K; ++k) q[k] += gd[k] * S[k];
    for (int k = 0; k < K; ++k) {
        yc[k] *= inv[k];
        const T u = (gs ? gs[k] : T(0)) - gd[k];
        yu[k] += yc[k] * u;
        yy[k] += yc[k] * yc[k];
        gb[k] = (m[k] * u + T(2) * ge * (aa[k] + T(2) * eps) * yc[k]) * inv[k];
    }
}

// Backward, second pass, channel c of K pixels of one image row (the unit's clip is in L2 now):
//   ga_t = [yu / T + 2 a_t g_aa (first channel) | ga_t] + gB_c x_ct
// and after the last channel ga_t goes straight onto the two rows of grad zc (the transpose of
// the vertical interpolation) instead of being stored.
template <typename T, int K>
inline void backward_block2(const T* __restrict xc, int64_t st, int64_t Tn, const T* __restrict gb, bool first,
                            bool last, const T* __restrict yu, const T* __restrict g_aa, const T* __restrict a,
                            int64_t L, T* __restrict ga, int64_t W, T l, T* gz0, T* gz1, int64_t zstride) {
    T g[K];
    for (int k = 0; k < K; ++k) g[k] = gb[k];
    for (int64_t t = 0; t < Tn; ++t) {
        const T* __restrict xr = xc + t * st;
        T* __restrict gt = ga + t * W;
        const T* __restrict at = a + t * L;
        prefetch_ahead<T, K>(xr);
        T v[K];
        if (first)
            for (int k = 0; k < K; ++k) v[k] = yu[k] + T(2) * at[k] * g_aa[k] + g[k] * xr[k];
        else
            for (int k = 0; k < K; ++k) v[k] = gt[k] + g[k] * xr[k];
        if (!last) {
            for (int k = 0; k < K; ++k) gt[k] = v[k];
        } else if (gz0 == gz1) {  // a border row: both weights onto one row
            T* __restrict z0 = gz0 + t * zstride;
            for (int k = 0; k < K; ++k) z0[k] += v[k];
        } else {
            T* __restrict z0 = gz0 + t * zstride;
            T* __restrict z1 = gz1 + t * zstride;
            for (int k = 0; k < K; ++k) {
                z0[k] += (T(1) - l) * v[k];
                z1[k] += l * v[k];
            }
        }
    }
}

// Units k * stride + phase for k in [k0, k1).
template <typename T>
void backward_units(const T* __restrict x, const T* __restrict zc, const T* __restrict lam, const Geometry& g, T eps,
                    bool remove, const T* __restrict g_da, const T* __restrict g_stat, const T* __restrict g_expl,
                    T* __restrict g_zc, int64_t stride, int64_t phase, int64_t k0, int64_t k1) {
    const int64_t C = g.C, Tn = g.T, H = g.H, W = g.W, P = g.H * g.W, Lmax = g.R * W;
    Scratch<T> s(Tn, C, Lmax, true);
    T* yu = s.v0;
    T* yy = s.v1;
    T* q = s.v2;
    T* ga = s.ga;
    const T invT = T(1) / T(Tn);
    for (int64_t k = k0; k < k1; ++k) {
        const int64_t u = k * stride + phase;
        const int64_t n = u / g.blocks(), h0 = (u % g.blocks()) * g.R;
        const int64_t rows = h0 + g.R <= H ? g.R : H - h0, L = rows * W;
        const T ge = g_expl[n];
        unit_hyperplanes(zc, lam, g, n, h0, rows, L, eps, s.a, s.aa, s.m, s.inv);
        for (int64_t X = 0; X < L; ++X) yu[X] = yy[X] = q[X] = T(0);
        for (int64_t c = 0; c < C; ++c) {
            const T* xc = x + g.sample(n) + c * g.sc + h0 * W;
            const int64_t o = (n * C + c) * P + h0 * W;
            blocks_of(L, [&](auto width, int64_t X0) {
                constexpr int K = decltype(width)::value;
                const T* gs = g_stat ? g_stat + o + X0 : nullptr;
                if (remove)
                    backward_block1<T, K, true>(xc + X0, g.st, Tn, s.a + X0, L, s.inv + X0, s.m + X0, s.aa + X0, eps,
                                                ge, g_da + o + X0, gs, yu + X0, yy + X0, s.gB + c * Lmax + X0, q + X0);
                else
                    backward_block1<T, K, false>(xc + X0, g.st, Tn, s.a + X0, L, s.inv + X0, s.m + X0, s.aa + X0, eps,
                                                 ge, g_da + o + X0, gs, yu + X0, yy + X0, s.gB + c * Lmax + X0, q + X0);
            });
        }
        // g_aa = -(m yu + ge (aa + 3 eps) yy) / (aa + eps), kept in yy; yu / T kept in yu.
        if (remove)  // plus the derivatives of f S_c, f = m^2 / (aa + eps)
            for (int64_t X = 0; X < L; ++X) {
                const T fq = s.m[X] * s.m[X] * s.inv[X] * q[X];
                yy[X] = -(s.m[X] * yu[X] + ge * (s.aa[X] + T(3) * eps) * yy[X] + fq) * s.inv[X];
                yu[X] = (yu[X] + T(2) * s.m[X] * s.inv[X] * q[X]) * invT;
            }
        else
            for (int64_t X = 0; X < L; ++X) {
                yy[X] = -(s.m[X] * yu[X] + ge * (s.aa[X] + T(3) * eps) * yy[X]) * s.inv[X];
                yu[X] *= invT;
            }
        for (int64_t r = 0; r < rows; ++r) {
            const int64_t row = h0 + r, o = r * W;
            T* gz = g_zc + n * Tn * g.h * W;
            for (int64_t c = 0; c < C; ++c) {
                const T* xc = x + g.sample(n) + c * g.sc + row * W;
                blocks_of(W, [&](auto width, int64_t X0) {
                    constexpr int K = decltype(width)::value;
                    backward_block2<T, K>(xc + X0, g.st, Tn, s.gB + c * Lmax + o + X0, c == 0, c == C - 1, yu + o + X0,
                                          yy + o + X0, s.a + o + X0, L, ga + X0, W, lam[row],
                                          gz + g.i0[row] * W + X0, gz + g.i1[row] * W + X0, g.h * W);
                });
            }
        }
    }
}

// Also reduces the per-row sums to res_sq[n] = ||x_n||^2 - explained_n (double) and
// enopr[n] = max(res_sq[n], 0) / (C H W), in a fixed order.
template <typename T>
void forward(const T* x, int64_t sN, int64_t S, int64_t sS, int64_t sc, int64_t st, const T* zc, const int32_t* i0,
             const int32_t* i1, const T* lam, int64_t N, int64_t C, int64_t Tn, int64_t H, int64_t W, int64_t h, T eps,
             bool remove, T* da, T* stat, double* res_sq, T* enopr, int threads) {
    const Geometry g{N, C, Tn, H, W, h, sN, S, sS, sc, st, i0, i1, rows_per_unit(H, W)};
    std::vector<double> xx_rows(N * H), expl_rows(N * H);
    parallel_ranges(g.units(), threads, [&](int64_t u0, int64_t u1) {
        forward_units<T>(x, zc, lam, g, eps, remove, da, stat, xx_rows.data(), expl_rows.data(), u0, u1);
    });
    for (int64_t n = 0; n < N; ++n) {
        double sx = 0.0, se = 0.0;
        for (int64_t r = 0; r < H; ++r) {
            sx += xx_rows[n * H + r];
            se += expl_rows[n * H + r];
        }
        res_sq[n] = sx - se;
        enopr[n] = T((res_sq[n] > 0.0 ? res_sq[n] : 0.0) / double(C * H * W));
    }
}

// g_zc must be zero on entry; it is accumulated into.
template <typename T>
void backward(const T* x, int64_t sN, int64_t S, int64_t sS, int64_t sc, int64_t st, const T* zc, const int32_t* i0,
              const int32_t* i1, const T* lam, int64_t N, int64_t C, int64_t Tn, int64_t H, int64_t W, int64_t h, T eps,
              bool remove, const T* g_da, const T* g_stat, const T* g_expl, T* g_zc, int threads) {
    const Geometry g{N, C, Tn, H, W, h, sN, S, sS, sc, st, i0, i1, backward_rows_per_unit(H, W, h)};
    // The phase order is kept with one thread too, so the rounding does not depend on threads.
    const int64_t units = g.units(), p = g.phases();
    if (p == 0) {
        backward_units<T>(x, zc, lam, g, eps, remove, g_da, g_stat, g_expl, g_zc, 1, 0, 0, units);
        return;
    }
    for (int64_t phase = 0; phase < p; ++phase)
        parallel_ranges((units - phase + p - 1) / p, threads, [&](int64_t k0, int64_t k1) {
            backward_units<T>(x, zc, lam, g, eps, remove, g_da, g_stat, g_expl, g_zc, p, phase, k0, k1);
        });
}

// ----------------------------------------------------------------------------------------------
// The relation descriptor of Eq. 3: u[n, p, k] = <f[n, :, t1_k, p], f[n, :, t2_k, p]> / C' for the
// pairs t1 < t2 in row-major order, written (N, h*w, T(T-1)/2) so the MLP reads it in place.
// Backward: g_f[c, t] = sum_s G[t, s] f[c, s] / C' with G the symmetric matrix of g_u.

// The feature block is C' * T rows of K positions, Q apart: far too many streams for the hardware
// prefetchers, so the rows of the next block are prefetched while this one is computed.
template <typename T, int K>
inline void prefetch_next_block(const T* f, int64_t rows, int64_t Q) {
    if constexpr (K * sizeof(T) >= 64)
        for (int64_t r = 0; r < rows; ++r) __builtin_prefetch(f + r * Q + K);
}

template <typename T, int K>
void gram_forward_block(const T* __restrict f, int64_t Cf, int64_t Tn, int64_t Q, T* __restrict u) {
    // f: feature block at position p0 of sample n (channel stride Tn * Q, frame stride Q); u: (K, pairs)
    const int64_t pairs = Tn * (Tn - 1) / 2;
    const T scale = T(1) / T(Cf);
    prefetch_next_block<T, K>(f, Cf * Tn, Q);
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
    prefetch_next_block<T, K>(f, Cf * Tn, Q);
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
// Each thread gets a scratch of T * T * 16 values for the backward's gradient matrices.
template <typename T, typename Block16, typename Block1>
void gram_blocks(int64_t N, int64_t Tn, int64_t Q, int threads, Block16 b16, Block1 b1) {
    const int64_t per = Q / 16 + Q % 16;  // work items per sample
    parallel_ranges(N * per, threads, [&](int64_t k0, int64_t k1) {
        std::vector<T> scratch(Tn * Tn * 16);
        for (int64_t k = k0; k < k1; ++k) {
            const int64_t n = k / per, j = k % per;
            if (j < Q / 16)
                b16(n, j * 16, scratch.data());
            else
                b1(n, (Q / 16) * 16 + (j - Q / 16), scratch.data());
        }
    });
}

template <typename T>
void gram_forward(const T* f, int64_t N, int64_t Cf, int64_t Tn, int64_t Q, T* u, int threads) {
    const int64_t pairs = Tn * (Tn - 1) / 2;
    gram_blocks<T>(
        N, Tn, Q, threads,
        [&](int64_t n, int64_t p, T*) {
            gram_forward_block<T, 16>(f + n * Cf * Tn * Q + p, Cf, Tn, Q, u + (n * Q + p) * pairs);
        },
        [&](int64_t n, int64_t p, T*) {
            gram_forward_block<T, 1>(f + n * Cf * Tn * Q + p, Cf, Tn, Q, u + (n * Q + p) * pairs);
        });
}

template <typename T>
void gram_backward(const T* f, const T* gu, int64_t N, int64_t Cf, int64_t Tn, int64_t Q, T* gf, int threads) {
    const int64_t pairs = Tn * (Tn - 1) / 2;
    gram_blocks<T>(
        N, Tn, Q, threads,
        [&](int64_t n, int64_t p, T* G) {
            gram_backward_block<T, 16>(f + n * Cf * Tn * Q + p, gu + (n * Q + p) * pairs, Cf, Tn, Q,
                                       gf + n * Cf * Tn * Q + p, G);
        },
        [&](int64_t n, int64_t p, T* G) {
            gram_backward_block<T, 1>(f + n * Cf * Tn * Q + p, gu + (n * Q + p) * pairs, Cf, Tn, Q,
                                      gf + n * Cf * Tn * Q + p, G);
        });
}

}  // namespace

extern "C" {

int dynapp_pwtp_abi_version() { return 8; }

// x: sample n (of N = clips * S) at x + (n / S) * sN + (n % S) * sS, channel stride sc, frame stride st.
void dynapp_da1_forward_f32(const float* x, int64_t sN, int64_t S, int64_t sS, int64_t sc, int64_t st,
                            const float* zc, const int32_t* i0, const int32_t* i1, const float* lam, int64_t N,
                            int64_t C, int64_t T, int64_t H, int64_t W, int64_t h, float eps, int remove, float* da, float* stat,
                            double* res_sq, float* enopr, int threads) {
    forward<float>(x, sN, S, sS, sc, st, zc, i0, i1, lam, N, C, T, H, W, h, eps, remove != 0, da, stat, res_sq, enopr, threads);
}

void dynapp_da1_forward_f64(const double* x, int64_t sN, int64_t S, int64_t sS, int64_t sc, int64_t st,
                            const double* zc, const int32_t* i0, const int32_t* i1, const double* lam, int64_t N,
                            int64_t C, int64_t T, int64_t H, int64_t W, int64_t h, double eps, int remove, double* da,
                            double* stat, double* res_sq, double* enopr, int threads) {
    forward<double>(x, sN, S, sS, sc, st, zc, i0, i1, lam, N, C, T, H, W, h, eps, remove != 0, da, stat, res_sq, enopr, threads);
}

void dynapp_da1_backward_f32(const float* x, int64_t sN, int64_t S, int64_t sS, int64_t sc, int64_t st,
                             const float* zc, const int32_t* i0, const int32_t* i1, const float* lam, int64_t N,
                             int64_t C, int64_t T, int64_t H, int64_t W, int64_t h, float eps, int remove, const float* g_da,
                             const float* g_stat, const float* g_expl, float* g_zc, int threads) {
    backward<float>(x, sN, S, sS, sc, st, zc, i0, i1, lam, N, C, T, H, W, h, eps, remove != 0, g_da, g_stat, g_expl, g_zc,
                    threads);
}

void dynapp_da1_backward_f64(const double* x, int64_t sN, int64_t S, int64_t sS, int64_t sc, int64_t st,
                             const double* zc, const int32_t* i0, const int32_t* i1, const double* lam, int64_t N,
                             int64_t C, int64_t T, int64_t H, int64_t W, int64_t h, double eps, int remove, const double* g_da,
                             const double* g_stat, const double* g_expl, double* g_zc, int threads) {
    backward<double>(x, sN, S, sS, sc, st, zc, i0, i1, lam, N, C, T, H, W, h, eps, remove != 0, g_da, g_stat, g_expl, g_zc,
                     threads);
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
