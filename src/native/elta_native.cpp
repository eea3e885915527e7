// Native CPU kernels of elta_core: FLSA loss and gradient, the APDS row operation and
// the APDS grid-search accumulation. The Python reference in elta_core/ stays the
// definition; these are tested against it. Inputs arrive checked and C-contiguous.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/pair.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace nb = nanobind;

template <typename T>
using Matrix = nb::ndarray<const T, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
template <typename T>
using Vector = nb::ndarray<const T, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
template <typename T>
using OutMatrix = nb::ndarray<T, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
template <typename T>
using OutVector = nb::ndarray<T, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

namespace {

constexpr double kNormFloor = 1e-8;

// exp for the sharpening loops, where every argument is <= 0. Float: Cody-Waite range
// reduction and the Cephes polynomial (about 1 ulp), written so that the compiler can
// vectorise it; arguments below -86 are clamped (their terms are < 1e-37 of the row's
// largest, which is 1). Double: std::exp.
inline __attribute__((always_inline)) float exp_nonpositive(float x) {
  x = std::max(x, -86.0f);
  const float k = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - k * 0.693359375f + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t scaled = static_cast<int32_t>(k) * (1 << 23);
  int32_t bits;
  std::memcpy(&bits, &y, sizeof bits);
  bits += scaled;
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}
inline double exp_nonpositive(double x) { return std::exp(x); }

// exp(x) for x >= 0 in the same precision scheme (the per-sample sharpening factor).
inline __attribute__((always_inline)) float exp_nonnegative(float x) { return 1.0f / exp_nonpositive(-x); }
inline double exp_nonnegative(double x) { return std::exp(x); }

bool openmp_enabled() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

// FLSA [Eqs. 5, 6]: mean over all B*B pairs of (cos(z_i, z_j) - (1 - |u_i - u_j|))^2 with
// u = (s - min s) / (max s - min s). Writes dL/dz into grad; returns the loss. One pass
// over the pairs (each unordered pair once), no B x B temporary: memory O(B D). Dot
// products run in the input precision with SIMD, the loss sum in double.
template <typename T>
double flsa_forward_backward(Matrix<T> z, Vector<T> s, OutMatrix<T> grad) {
  const int64_t rows = static_cast<int64_t>(z.shape(0));
  const int64_t width = static_cast<int64_t>(z.shape(1));
  const T* zp = z.data();
  const T* sp = s.data();
  T* gp = grad.data();
  std::fill(gp, gp + rows * width, T(0));
  if (rows < 2) return 0.0;
  double low = sp[0], high = sp[0];
  for (int64_t i = 1; i < rows; ++i) {
    low = std::min<double>(low, sp[i]);
    high = std::max<double>(high, sp[i]);
  }
  const double spread = high - low;
  if (!(spread > 0)) return 0.0;  // all scores equal: loss 0, no gradient (SPEC 2.4)

  std::vector<double> unit(rows), inv_norm(rows);
  std::vector<char> floored(rows);
  std::vector<T> zh(rows * width);
  for (int64_t i = 0; i < rows; ++i) {
    const T* zi = zp + i * width;
    unit[i] = (sp[i] - low) / spread;
    double squared = 0;
    for (int64_t d = 0; d < width; ++d) squared += double(zi[d]) * zi[d];
    floored[i] = squared < kNormFloor * kNormFloor;
    inv_norm[i] = 1.0 / std::sqrt(std::max(squared, kNormFloor * kNormFloor));
    const T inv = T(inv_norm[i]);
    T* out = zh.data() + i * width;
#pragma omp simd
    for (int64_t d = 0; d < width; ++d) out[d] = zi[d] * inv;
  }

  const double scale = 4.0 / (double(rows) * double(rows));
  double total = 0;
  std::vector<T> g_hat(rows * width, T(0));  // dL/dzh
  for (int64_t i = 0; i < rows; ++i) {
    const T* zi = zh.data() + i * width;
    T* gi = g_hat.data() + i * width;
    for (int64_t j = i; j < rows; ++j) {
      const T* zj = zh.data() + j * width;
      T dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t d = 0; d < width; ++d) dot += zi[d] * zj[d];
      const double gap = double(dot) - (1.0 - std::fabs(unit[i] - unit[j]));
      // dL/dzh_i gets 4/B^2 * gap_ij * zh_j: (i, j) and (j, i) both hold zh_i.
      const T weight = T(scale * gap);
      if (j == i) {
        total += gap * gap;
#pragma omp simd
        for (int64_t d = 0; d < width; ++d) gi[d] += weight * zj[d];
        continue;
      }
      total += 2.0 * gap * gap;
      T* gj = g_hat.data() + j * width;
#pragma omp simd
      for (int64_t d = 0; d < width; ++d) {
        gi[d] += weight * zj[d];
        gj[d] += weight * zi[d];
      }
    }
  }
  // Through the normalisation: dz = (g - zh (zh . g)) / max(|z|, floor), or g / floor
  // where the norm was floored (then zh = z / floor is linear in z).
  for (int64_t i = 0; i < rows; ++i) {
    const T* gi = g_hat.data() + i * width;
    const T* zi = zh.data() + i * width;
    T along = 0;
#pragma omp simd reduction(+ : along)
    for (int64_t d = 0; d < width; ++d) along += gi[d] * zi[d];
    if (floored[i]) along = 0;
    const T inv = T(inv_norm[i]);
    T* out = gp + i * width;
#pragma omp simd
    for (int64_t d = 0; d < width; ++d) out[d] = (gi[d] - zi[d] * along) * inv;
  }
  return total / (double(rows) * double(rows));
}

// The Gram form [docs/design.md, "The Gram form"] in two passes around its two matmuls,
// Zh^T Zh and Zh G, which the caller's BLAS computes in between. `threads` <= 0 means
// OpenMP's own count; the caller passes torch's for torch tensors.
int thread_count(int threads, int64_t rows) {
#ifdef _OPENMP
  if (threads <= 0) threads = omp_get_max_threads();
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, rows / 256)));
#else
  (void)threads;
  (void)rows;
  return 1;
#endif
}

int this_thread() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Before the matmuls, one pass over the rows: the unit scores u [Eq. 6]; each row's norm,
// squared in double (so no float32 row overflows); Zh; the totals T0 = sum_j zh_j and
// T1 = sum_j u_j zh_j; the factor of the normalisation's backward, 1 / (max(|z|, floor) B^2)
// (0 when the scores have no range); whether the norm was floored (then zh = z / floor is
// linear in z: no projection); and the rows in score order (stable). Returns whether the
// scores have a range.
template <typename T>
bool flsa_gram_prepare(Matrix<T> z, Vector<T> s, OutMatrix<T> zh, OutVector<T> u, OutVector<int64_t> order,
                       OutVector<T> factor, OutVector<uint8_t> floored, OutVector<T> total,
                       OutVector<T> weighted_total, int threads) {
  const int64_t rows = static_cast<int64_t>(z.shape(0));
  const int64_t width = static_cast<int64_t>(z.shape(1));
  const T* zp = z.data();
  const T* sp = s.data();
  T* hp = zh.data();
  T* up = u.data();
  T* fp = factor.data();
  uint8_t* lp = floored.data();
  T low = sp[0], high = sp[0];
  for (int64_t i = 1; i < rows; ++i) {
    low = std::min(low, sp[i]);
    high = std::max(high, sp[i]);
  }
  const T spread = high - low;
  const bool has_range = spread > T(0);
  const T safe = has_range ? spread : T(1);
  for (int64_t i = 0; i < rows; ++i) up[i] = (sp[i] - low) / safe;
  const T pairs = T(double(rows) * double(rows));
  threads = thread_count(threads, rows);
  std::vector<double> sums(static_cast<size_t>(threads) * 2 * width, 0.0);
#pragma omp parallel num_threads(threads)
  {
    double* t0 = sums.data() + static_cast<size_t>(this_thread()) * 2 * width;
    double* t1 = t0 + width;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < rows; ++i) {
      const T* zi = zp + i * width;
      T* hi = hp + i * width;
      double squared = 0;
#pragma omp simd reduction(+ : squared)
      for (int64_t d = 0; d < width; ++d) squared += double(zi[d]) * double(zi[d]);
      const double norm = std::sqrt(squared);
      lp[i] = !(norm >= kNormFloor);
      const T kept = T(std::max(norm, kNormFloor));
      fp[i] = has_range ? T(1) / (kept * pairs) : T(0);
      const double ui = up[i];
#pragma omp simd
      for (int64_t d = 0; d < width; ++d) {
        const T h = zi[d] / kept;
        hi[d] = h;
        t0[d] += h;
        t1[d] += ui * h;
      }
    }
  }
  for (int64_t d = 0; d < width; ++d) {
    double a = 0, b = 0;
    for (int t = 0; t < threads; ++t) {
      a += sums[static_cast<size_t>(t) * 2 * width + d];
      b += sums[static_cast<size_t>(t) * 2 * width + width + d];
    }
    total.data()[d] = T(a);
    weighted_total.data()[d] = T(b);
  }
  int64_t* op = order.data();
  for (int64_t i = 0; i < rows; ++i) op[i] = i;
  std::stable_sort(op, op + rows, [up](int64_t a, int64_t b) { return up[a] < up[b]; });
  return has_range;
}

// Asks for a row's cache lines ahead of its use: the walk takes the rows in score order, a
// random order that the hardware prefetcher cannot follow (measured: a third of the walk's
// time went to waiting for rows).
template <typename T>
inline void prefetch_row(const T* row, int64_t width, bool for_writing) {
  const char* bytes = reinterpret_cast<const char*>(row);
  const int64_t size = width * static_cast<int64_t>(sizeof(T));
  for (int64_t offset = 0; offset < size; offset += 64) {
    if (for_writing) {
      __builtin_prefetch(bytes + offset, 1, 3);
    } else {
      __builtin_prefetch(bytes + offset, 0, 3);
    }
  }
}
constexpr int64_t kRowsAhead = 4;

// One row of the walk: carry the prefix sums P0_k = sum_{m<=k} zh_m and P1_k =
// sum_{m<=k} u_m zh_m, return zh_k . (M Zh)_k with (M Zh)_k = T0 - (2 (u_k P0_k - P1_k) + T1
// - u_k T0), and (kGrad) write 4 (Zh G - M Zh)_k over Zh G.
template <typename T, bool kGrad>
inline T gram_walk_row(const T* z, T* g, T u, T* p0, T* p1, const T* t0, const T* t1, int64_t width) {
  T dot = 0;
#pragma omp simd reduction(+ : dot)
  for (int64_t d = 0; d < width; ++d) {
    p0[d] += z[d];
    p1[d] += u * z[d];
    const T similar = t0[d] - (T(2) * (u * p0[d] - p1[d]) + t1[d] - u * t0[d]);
    dot += z[d] * similar;
    if constexpr (kGrad) g[d] = T(4) * (g[d] - similar);
  }
  return dot;
}

// The normalisation's backward on one row, while it is in cache: dz = (g - zh (zh . g))
// times the row's factor, without the projection where the norm was floored.
template <typename T>
inline void normalize_backward_row(const T* z, T* g, T factor, bool floored, int64_t width) {
  T along = 0;
  if (!floored) {
#pragma omp simd reduction(+ : along)
    for (int64_t d = 0; d < width; ++d) along += z[d] * g[d];
  }
#pragma omp simd
  for (int64_t d = 0; d < width; ++d) g[d] = (g[d] - z[d] * along) * factor;
}

// After the matmuls, one pass over the rows in score order: sum_k zh_k . (M Zh)_k and sum_ij
// M_ij^2 = B^2 - 2 sum_ij |u_i - u_j| + sum_ij (u_i - u_j)^2 (from the ranks of the sorted
// scores), and, where grad holds Zh G, dL/dz written over it row by row (each row read
// once, its gradient read and written once). Threads take contiguous ranges of the sorted
// rows: each sums its range, the ranges' sums are scanned, and each walks its range from
// the sums of the ranges before it.
template <typename T>
std::pair<double, double> flsa_gram_walk(Matrix<T> zh, Vector<int64_t> order, Vector<T> u, Vector<T> total,
                                         Vector<T> weighted_total, OutMatrix<T> grad, Vector<T> factor,
                                         Vector<uint8_t> floored, bool with_grad, int threads) {
  const int64_t rows = static_cast<int64_t>(zh.shape(0));
  const int64_t width = static_cast<int64_t>(zh.shape(1));
  const T* zp = zh.data();
  const int64_t* op = order.data();
  const T* up = u.data();
  const T* t0 = total.data();
  const T* t1 = weighted_total.data();
  const T* fp = factor.data();
  const uint8_t* lp = floored.data();
  T* gp = grad.data();
  double mean = 0;
  for (int64_t i = 0; i < rows; ++i) mean += up[i];
  mean /= double(rows);
  threads = thread_count(threads, rows);
  std::vector<T> carry0(static_cast<size_t>(threads + 1) * width, T(0)), carry1(carry0.size(), T(0));
  double summed = 0, ranked = 0, centred = 0;
#pragma omp parallel num_threads(threads) reduction(+ : summed, ranked, centred)
  {
    const int thread = this_thread();
    const int64_t first = rows * thread / threads, last = rows * (thread + 1) / threads;
    T* p0 = carry0.data() + static_cast<size_t>(thread + 1) * width;
    T* p1 = carry1.data() + static_cast<size_t>(thread + 1) * width;
    if (threads > 1) {
      for (int64_t k = first; k < last; ++k) {  // this range's sums
        if (k + kRowsAhead < last) prefetch_row(zp + op[k + kRowsAhead] * width, width, false);
        const T* z = zp + op[k] * width;
        const T uk = up[op[k]];
#pragma omp simd
        for (int64_t d = 0; d < width; ++d) {
          p0[d] += z[d];
          p1[d] += uk * z[d];
        }
      }
#pragma omp barrier
#pragma omp single
      for (int t = 1; t <= threads; ++t) {  // inclusive scan of the ranges' sums
        for (int64_t d = 0; d < width; ++d) {
          carry0[t * width + d] += carry0[(t - 1) * width + d];
          carry1[t * width + d] += carry1[(t - 1) * width + d];
        }
      }
      std::vector<T> start0(carry0.begin() + thread * width, carry0.begin() + (thread + 1) * width);
      std::vector<T> start1(carry1.begin() + thread * width, carry1.begin() + (thread + 1) * width);
#pragma omp barrier
      std::copy(start0.begin(), start0.end(), p0);
      std::copy(start1.begin(), start1.end(), p1);
    }
    for (int64_t k = first; k < last; ++k) {
      if (k + kRowsAhead < last) {
        prefetch_row(zp + op[k + kRowsAhead] * width, width, false);
        if (with_grad) prefetch_row(gp + op[k + kRowsAhead] * width, width, true);
      }
      const int64_t row = op[k];
      const T* z = zp + row * width;
      const T uk = up[row];
      ranked += double(uk) * double(2 * k - (rows - 1));
      centred += (double(uk) - mean) * (double(uk) - mean);
      if (with_grad) {
        T* g = gp + row * width;
        summed += double(gram_walk_row<T, true>(z, g, uk, p0, p1, t0, t1, width));
        normalize_backward_row(z, g, fp[row], lp[row] != 0, width);
      } else {
        summed += double(gram_walk_row<T, false>(z, nullptr, uk, p0, p1, t0, t1, width));
      }
    }
  }
  const double size = double(rows);
  return {summed, size * size - 4 * ranked + 2 * size * centred};
}

// Softmax of one row into probs; returns the row maximum of the logits.
template <typename T>
double softmax_row(const T* logits, int64_t levels, double* probs) {
  double peak = logits[0];
  for (int64_t c = 1; c < levels; ++c) peak = std::max<double>(peak, logits[c]);
  double sum = 0;
  for (int64_t c = 0; c < levels; ++c) sum += probs[c] = std::exp(double(logits[c]) - peak);
  for (int64_t c = 0; c < levels; ++c) probs[c] /= sum;
  return peak;
}

template <typename T>
std::vector<double> predicted_scores(Matrix<T> logits, Vector<double> values, int threads) {
  const int64_t rows = logits.shape(0), levels = logits.shape(1);
  std::vector<double> scores(rows);
#pragma omp parallel num_threads(thread_count(threads, rows))
  {
    std::vector<double> probs(levels);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < rows; ++i) {
      softmax_row(logits.data() + i * levels, levels, probs.data());
      double score = 0;
      for (int64_t c = 0; c < levels; ++c) score += probs[c] * values.data()[c];
      scores[i] = score;
    }
  }
  return scores;
}

double mean_of(const std::vector<double>& values) {
  double sum = 0;
  for (double v : values) sum += v;
  return values.empty() ? 0.0 : sum / double(values.size());
}

// Grid search accumulation [Eq. 9]: for every beta and every threshold, the number of
// selected samples and the sum of |pseudo score - true score|, in one pass over N. Rows
// go in blocks; per block, beta and threshold a branch-free masked sum (vectorised).
// Sharpening runs in the input precision, as the reference does, so a probability on a
// threshold falls on the same side. pseudo_sharpened: compare the sharpened score.
template <typename T>
void grid_accumulate(Matrix<T> logits, Vector<double> true_scores, Vector<double> values, Vector<double> betas,
                     Vector<double> thresholds, double mean_score, double score_scale, bool strict,
                     bool pseudo_sharpened, OutMatrix<double> counts, OutMatrix<double> sums, int threads) {
  const int64_t rows = logits.shape(0), levels = logits.shape(1);
  const int64_t num_betas = betas.shape(0), num_thresholds = thresholds.shape(0);
  std::vector<double> scores = predicted_scores(logits, values, threads);
  const double centre = std::isnan(mean_score) ? mean_of(scores) : mean_score;
  std::vector<T> edges(num_thresholds);
  for (int64_t t = 0; t < num_thresholds; ++t) edges[t] = T(thresholds.data()[t]);
  std::vector<T> level_values(levels);
  for (int64_t c = 0; c < levels; ++c) level_values[c] = T(values.data()[c]);
  std::vector<double> count_total(num_betas * num_thresholds, 0.0), sum_total(num_betas * num_thresholds, 0.0);
  // Rows go in blocks, stored level-major, so that the exp loops run over contiguous rows
  // and vectorise (a row has only C ~ 10 levels).
  constexpr int64_t kBlock = 64;
  const int64_t blocks = (rows + kBlock - 1) / kBlock;
#pragma omp parallel num_threads(thread_count(threads, rows))
  {
    std::vector<double> local_counts(num_betas * num_thresholds, 0.0), local_sums(num_betas * num_thresholds, 0.0);
    std::vector<T> shifted(levels * kBlock), factor(kBlock), sum(kBlock), weighted(kBlock), gap(kBlock);
#pragma omp for schedule(static)
    for (int64_t block = 0; block < blocks; ++block) {
      const int64_t first = block * kBlock;
      const int64_t count = std::min(kBlock, rows - first);
      if (count < kBlock) {  // the vector loops run over whole blocks: keep the tail finite
        std::fill(shifted.begin(), shifted.end(), T(0));
        std::fill(gap.begin(), gap.end(), T(0));
      }
      for (int64_t r = 0; r < count; ++r) {
        const T* row = logits.data() + (first + r) * levels;
        T peak = row[0];
        for (int64_t c = 1; c < levels; ++c) peak = std::max(peak, row[c]);
        for (int64_t c = 0; c < levels; ++c) shifted[c * kBlock + r] = row[c] - peak;
        gap[r] = T(std::fabs(scores[first + r] - centre) / score_scale);
      }
      T* __restrict factor_p = factor.data();
      T* __restrict sum_p = sum.data();
      T* __restrict weighted_p = weighted.data();
      const T* __restrict gap_p = gap.data();
      for (int64_t b = 0; b < num_betas; ++b) {
        const T beta = T(betas.data()[b]);
#pragma omp simd
        for (int64_t r = 0; r < kBlock; ++r) {
          factor_p[r] = exp_nonnegative(beta * gap_p[r]);
          sum_p[r] = 0;
          weighted_p[r] = 0;
        }
        for (int64_t c = 0; c < levels; ++c) {
          const T* __restrict level = shifted.data() + c * kBlock;
          const T value = level_values[c];
#pragma omp simd
          for (int64_t r = 0; r < kBlock; ++r) {
            // 0 * inf is NaN: the row maximum stays at 0 whatever the factor, so an
            // overflowing temperature gives a one-hot row, as in the reference.
            const T e = exp_nonpositive(level[r] == T(0) ? T(0) : level[r] * factor_p[r]);
            sum_p[r] += e;
            weighted_p[r] += e * value;
          }
        }
        T* __restrict top = factor_p;  // reuse: the factors are no longer needed
        T* __restrict error = weighted_p;
        for (int64_t r = 0; r < count; ++r) {
          const double pseudo = pseudo_sharpened ? double(weighted_p[r] / sum_p[r]) : scores[first + r];
          top[r] = T(1) / sum_p[r];
          error[r] = T(std::fabs(pseudo - true_scores.data()[first + r]));
        }
        // Branch-free: every threshold over the block's rows (the paper's >=, or >).
        for (int64_t t = 0; t < num_thresholds; ++t) {
          const T edge = edges[t];
          T passed = 0, summed = 0;
          if (strict) {
#pragma omp simd reduction(+ : passed, summed)
            for (int64_t r = 0; r < count; ++r) {
              const T pass = top[r] > edge ? T(1) : T(0);
              passed += pass;
              summed += pass * error[r];
            }
          } else {
#pragma omp simd reduction(+ : passed, summed)
            for (int64_t r = 0; r < count; ++r) {
              const T pass = top[r] >= edge ? T(1) : T(0);
              passed += pass;
              summed += pass * error[r];
            }
          }
          local_counts[b * num_thresholds + t] += double(passed);
          local_sums[b * num_thresholds + t] += double(summed);
        }
      }
    }
#pragma omp critical
    for (size_t k = 0; k < count_total.size(); ++k) {
      count_total[k] += local_counts[k];
      sum_total[k] += local_sums[k];
    }
  }
  std::copy(count_total.begin(), count_total.end(), counts.data());
  std::copy(sum_total.begin(), sum_total.end(), sums.data());
}

}  // namespace

NB_MODULE(_native, m) {
  m.doc() = "Native CPU kernels of elta_core (FLSA, APDS).";
  m.def("openmp_enabled", &openmp_enabled);
  m.def("max_threads", []() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
  });
  m.def("flsa_forward_backward", &flsa_forward_backward<float>, nb::arg("z"), nb::arg("s"), nb::arg("grad"),
        nb::call_guard<nb::gil_scoped_release>());
  m.def("flsa_forward_backward", &flsa_forward_backward<double>, nb::arg("z"), nb::arg("s"), nb::arg("grad"),
        nb::call_guard<nb::gil_scoped_release>());
  m.def("flsa_gram_prepare", &flsa_gram_prepare<float>, nb::call_guard<nb::gil_scoped_release>());
  m.def("flsa_gram_prepare", &flsa_gram_prepare<double>, nb::call_guard<nb::gil_scoped_release>());
  m.def("flsa_gram_walk", &flsa_gram_walk<float>, nb::call_guard<nb::gil_scoped_release>());
  m.def("flsa_gram_walk", &flsa_gram_walk<double>, nb::call_guard<nb::gil_scoped_release>());
  m.def("grid_accumulate", &grid_accumulate<float>, nb::call_guard<nb::gil_scoped_release>());
  m.def("grid_accumulate", &grid_accumulate<double>, nb::call_guard<nb::gil_scoped_release>());
}
