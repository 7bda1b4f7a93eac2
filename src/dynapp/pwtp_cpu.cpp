// Fused CPU kernels of the rank-one (D = 1) dynamic appearance, for dynapp/pwtp_cpu.py.
//
// Plain C ABI (called through ctypes, no Python or torch headers, so it builds in about a
// second with the system compiler).  One call does the whole per-pixel arithmetic of
// dynapp.pwtp._RankOneDA in a single pass over the clip, with the horizontal half of the
// bilinear upsampling of A done on the fly, so neither A (N, T, H, W) nor any clip-sized
// temporary is ever written:
//
//   forward:  a_t   = (1 - mu) zr[t, j0] + mu zr[t, j1]   (zr = U_h z, the vertically upsampled A)
//             B_c   = sum_t a_t x_ct,  S_c = sum_t x_ct,  aa = sum_t a_t^2,  m = mean_t a_t
//             y_c   = B_c / (aa + eps),  static_c = m y_c,  da_c = S_c / T - static_c
//             per row: sum x^2 and sum_c y_c^2 (aa + 2 eps), in double (ENoPR)
//   backward: grad_a_t = sum_c gB_c x_ct + 2 a_t g_aa + yu / T, scattered back onto zr
//             (the formulas of _RankOneDA.backward).
//
// Work is split over image rows (n, h); every row writes only its own outputs, so the result
// does not depend on the number of threads.

#include <cstdint>
#include <thread>
#include <vector>

namespace {

template <typename F>
void run_rows(int64_t rows, int threads, F body) {
    if (threads < 1) threads = 1;
    if (threads > rows) threads = static_cast<int>(rows);
    if (threads <= 1) {
        body(0, rows);
        return;
    }
    std::vector<std::thread> pool;
    int64_t step = (rows + threads - 1) / threads;
    for (int k = 1; k < threads; ++k) {
        int64_t r0 = k * step, r1 = r0 + step < rows ? r0 + step : rows;
        if (r0 < r1) pool.emplace_back(body, r0, r1);
    }
    body(0, step < rows ? step : rows);
    for (auto& th : pool) th.join();
}

// The columns X of a row with the same source pair (j0, j1) form runs (j0 is non-decreasing):
// interpolating run by run turns the gathers into broadcasts, which vectorise.
struct Runs {
    std::vector<int64_t> start;  // run r covers X in [start[r], start[r + 1])
    std::vector<int32_t> j0, j1;
    Runs(const int32_t* c0, const int32_t* c1, int64_t W) {
        for (int64_t X = 0; X < W; ++X)
            if (X == 0 || c0[X] != c0[X - 1] || c1[X] != c1[X - 1]) {
                start.push_back(X);
                j0.push_back(c0[X]);
                j1.push_back(c1[X]);
            }
        start.push_back(W);
    }
    int64_t size() const { return static_cast<int64_t>(j0.size()); }
};

// a[X] = (1 - mu[X]) zr[j0[X]] + mu[X] zr[j1[X]] for one row.
template <typename T>
inline void interp_row(const T* __restrict zr, const Runs& runs, const T* __restrict mu, T* __restrict a) {
    for (int64_t r = 0; r < runs.size(); ++r) {
        const T z0 = zr[runs.j0[r]], dz = zr[runs.j1[r]] - z0;
        for (int64_t X = runs.start[r]; X < runs.start[r + 1]; ++X) a[X] = z0 + mu[X] * dz;
    }
}

// The transpose: g_zr[j0] += (1 - mu) g_a, g_zr[j1] += mu g_a, summed run by run.
template <typename T>
inline void scatter_row(const T* __restrict ga, const Runs& runs, const T* __restrict mu, int64_t w,
                        T* __restrict gz) {
    for (int64_t j = 0; j < w; ++j) gz[j] = T(0);
    for (int64_t r = 0; r < runs.size(); ++r) {
        T s0 = T(0), s1 = T(0);
        for (int64_t X = runs.start[r]; X < runs.start[r + 1]; ++X) {
            s1 += mu[X] * ga[X];
            s0 += ga[X];
        }
        gz[runs.j0[r]] += s0 - s1;
        gz[runs.j1[r]] += s1;
    }
}

template <typename T>
struct Shape {
    int64_t N, C, T_, H, W, w;
    int64_t R;  // image rows per work unit: the clip is read in spans of R * W contiguous values
    int64_t blocks() const { return (H + R - 1) / R; }
};

// Rows per work unit: long contiguous spans keep the hardware prefetchers busy (one row of 224
// values per stream was 2x slower), while the per-unit scratch stays in the L2 cache.
inline int64_t rows_per_unit(int64_t H, int64_t W) {
    int64_t R = 2048 / (W > 0 ? W : 1);
    return R < 1 ? 1 : (R > H ? H : R);
}

// A for one unit: a[t, r * W + X] for the R rows starting at image row h0, plus aa = sum_t a^2
// and m = mean_t a.
template <typename T>
inline void unit_hyperplanes(const T* __restrict zr, const Runs& runs, const T* __restrict mu, const Shape<T>& s,
                             int64_t n, int64_t h0, int64_t rows, int64_t L, T* __restrict a, T* __restrict aa,
                             T* __restrict m) {
    for (int64_t X = 0; X < L; ++X) aa[X] = m[X] = T(0);
    for (int64_t t = 0; t < s.T_; ++t) {
        T* __restrict at = a + t * L;
        for (int64_t r = 0; r < rows; ++r)
            interp_row(zr + ((n * s.T_ + t) * s.H + h0 + r) * s.w, runs, mu, at + r * s.W);
        for (int64_t X = 0; X < L; ++X) {
            aa[X] += at[X] * at[X];
            m[X] += at[X];
        }
    }
    const T invT = T(1) / T(s.T_);
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
            B[k] *= inv[k];  // now y
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
void forward_units(const T* __restrict x, const T* __restrict zr, const int32_t* __restrict j0,
                                 const int32_t* __restrict j1, const T* __restrict mu, Shape<T> s, T eps,
                                 T* __restrict da, T* __restrict stat, T* __restrict y, double* __restrict xx_rows,
                                 double* __restrict expl_rows, int64_t u0, int64_t u1) {
    const int64_t C = s.C, Tn = s.T_, H = s.H, W = s.W, P = s.H * s.W, Lmax = s.R * s.W;
    std::vector<T> buf((Tn + 5) * Lmax);
    T* a = buf.data();  // (T, L)
    T* aa = a + Tn * Lmax;
    T* inv = aa + Lmax;
    T* m = inv + Lmax;
    T* sq = m + Lmax;
    T* ex = sq + Lmax;
    const Runs runs(j0, j1, W);
    for (int64_t u = u0; u < u1; ++u) {
        const int64_t n = u / s.blocks(), h0 = (u % s.blocks()) * s.R;
        const int64_t rows = h0 + s.R <= H ? s.R : H - h0, L = rows * W;
        unit_hyperplanes(zr, runs, mu, s, n, h0, rows, L, a, aa, m);
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
            // Eight independent double partial sums: a single running sum is a serial chain.
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

template <typename T>
void backward_units(const T* __restrict x, const T* __restrict zr, const int32_t* __restrict j0,
                                  const int32_t* __restrict j1, const T* __restrict mu, Shape<T> s, T eps,
                                  const T* __restrict y, const T* __restrict g_da, const T* __restrict g_stat,
                                  const T* __restrict g_expl, T* __restrict g_zr, int64_t u0, int64_t u1) {
    const int64_t C = s.C, Tn = s.T_, H = s.H, W = s.W, P = s.H * s.W, Lmax = s.R * s.W;
    std::vector<T> buf((Tn + C + 6) * Lmax);
    T* a = buf.data();  // (T, L)
    T* gB = a + Tn * Lmax;  // (C, L)
    T* aa = gB + C * Lmax;
    T* m = aa + Lmax;
    T* inv = m + Lmax;
    T* yu = inv + Lmax;
    T* yy = yu + Lmax;
    T* ga = yy + Lmax;
    const T invT = T(1) / T(Tn);
    const Runs runs(j0, j1, W);
    for (int64_t u = u0; u < u1; ++u) {
        const int64_t n = u / s.blocks(), h0 = (u % s.blocks()) * s.R;
        const int64_t rows = h0 + s.R <= H ? s.R : H - h0, L = rows * W;
        const T ge = g_expl[n];
        unit_hyperplanes(zr, runs, mu, s, n, h0, rows, L, a, aa, m);
        for (int64_t X = 0; X < L; ++X) {
            inv[X] = T(1) / (aa[X] + eps);
            yu[X] = yy[X] = T(0);
        }
        // u = g_static - g_da; gB = (m u + 2 ge (aa + 2 eps) y) / (aa + eps)
        for (int64_t c = 0; c < C; ++c) {
            const int64_t o = (n * C + c) * P + h0 * W;
            T* __restrict gb = gB + c * L;
            for (int64_t X = 0; X < L; ++X) {
                T uc = (g_stat ? g_stat[o + X] : T(0)) - g_da[o + X];
                T yc = y[o + X];
                yu[X] += yc * uc;
                yy[X] += yc * yc;
                gb[X] = (m[X] * uc + T(2) * ge * (aa[X] + T(2) * eps) * yc) * inv[X];
            }
        }
        // g_aa = -(m yu + ge (aa + 3 eps) yy) / (aa + eps), kept in yy; yu / T kept in yu.
        for (int64_t X = 0; X < L; ++X) {
            yy[X] = -(m[X] * yu[X] + ge * (aa[X] + T(3) * eps) * yy[X]) * inv[X];
            yu[X] *= invT;
        }
        for (int64_t t = 0; t < Tn; ++t) {
            const T* __restrict at = a + t * L;
            for (int64_t X = 0; X < L; ++X) ga[X] = yu[X] + T(2) * at[X] * yy[X];
            for (int64_t c = 0; c < C; ++c) {
                const T* __restrict xr = x + ((n * C + c) * Tn + t) * P + h0 * W;
                const T* __restrict gb = gB + c * L;
                for (int64_t X = 0; X < L; ++X) ga[X] += gb[X] * xr[X];
            }
            for (int64_t r = 0; r < rows; ++r)
                scatter_row(ga + r * W, runs, mu, s.w, g_zr + ((n * Tn + t) * H + h0 + r) * s.w);
        }
    }
}

template <typename T>
void forward(const T* x, const T* zr, const int32_t* j0, const int32_t* j1, const T* mu, int64_t N, int64_t C,
             int64_t Tn, int64_t H, int64_t W, int64_t w, T eps, T* da, T* stat, T* y, double* xx_rows,
             double* expl_rows, int threads) {
    Shape<T> s{N, C, Tn, H, W, w, rows_per_unit(H, W)};
    run_rows(N * s.blocks(), threads, [&](int64_t r0, int64_t r1) {
        forward_units<T>(x, zr, j0, j1, mu, s, eps, da, stat, y, xx_rows, expl_rows, r0, r1);
    });
}

template <typename T>
void backward(const T* x, const T* zr, const int32_t* j0, const int32_t* j1, const T* mu, int64_t N, int64_t C,
              int64_t Tn, int64_t H, int64_t W, int64_t w, T eps, const T* y, const T* g_da, const T* g_stat,
              const T* g_expl, T* g_zr, int threads) {
    Shape<T> s{N, C, Tn, H, W, w, rows_per_unit(H, W)};
    run_rows(N * s.blocks(), threads, [&](int64_t r0, int64_t r1) {
        backward_units<T>(x, zr, j0, j1, mu, s, eps, y, g_da, g_stat, g_expl, g_zr, r0, r1);
    });
}

}  // namespace

extern "C" {

int dynapp_pwtp_abi_version() { return 1; }

void dynapp_da1_forward_f32(const float* x, const float* zr, const int32_t* j0, const int32_t* j1, const float* mu,
                            int64_t N, int64_t C, int64_t T, int64_t H, int64_t W, int64_t w, float eps, float* da,
                            float* stat, float* y, double* xx_rows, double* expl_rows, int threads) {
    forward<float>(x, zr, j0, j1, mu, N, C, T, H, W, w, eps, da, stat, y, xx_rows, expl_rows, threads);
}

void dynapp_da1_forward_f64(const double* x, const double* zr, const int32_t* j0, const int32_t* j1,
                            const double* mu, int64_t N, int64_t C, int64_t T, int64_t H, int64_t W, int64_t w,
                            double eps, double* da, double* stat, double* y, double* xx_rows, double* expl_rows,
                            int threads) {
    forward<double>(x, zr, j0, j1, mu, N, C, T, H, W, w, eps, da, stat, y, xx_rows, expl_rows, threads);
}

void dynapp_da1_backward_f32(const float* x, const float* zr, const int32_t* j0, const int32_t* j1, const float* mu,
                             int64_t N, int64_t C, int64_t T, int64_t H, int64_t W, int64_t w, float eps,
                             const float* y, const float* g_da, const float* g_stat, const float* g_expl,
                             float* g_zr, int threads) {
    backward<float>(x, zr, j0, j1, mu, N, C, T, H, W, w, eps, y, g_da, g_stat, g_expl, g_zr, threads);
}

void dynapp_da1_backward_f64(const double* x, const double* zr, const int32_t* j0, const int32_t* j1,
                             const double* mu, int64_t N, int64_t C, int64_t T, int64_t H, int64_t W, int64_t w,
                             double eps, const double* y, const double* g_da, const double* g_stat,
                             const double* g_expl, double* g_zr, int threads) {
    backward<double>(x, zr, j0, j1, mu, N, C, T, H, W, w, eps, y, g_da, g_stat, g_expl, g_zr, threads);
}

}  // extern "C"
