// Native CPU kernels of elta_core: FLSA loss and gradient, the APDS row operation and
// the APDS grid-search accumulation. The Python reference in elta_core/ stays the
// definition; these are tested against it. Inputs arrive checked and C-contiguous.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
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

// The Gram form's walk over the rows in score order [docs/design.md, "The Gram form"]:
// with P0_k = sum_{m<=k} zh_m and P1_k = sum_{m<=k} u_m zh_m carried, the row
// (M Zh)_k = T0 - (2 (u_k P0_k - P1_k) + T1 - u_k T0). Returns sum_k zh_k . (M Zh)_k, and
// where grad holds Zh G (rows in input order) overwrites each row with 4 (Zh G - M Zh)_k:
// one read of each row and one read-write of its gradient, where the reference makes a
// dozen passes. Threads take contiguous ranges of the sorted rows: their ranges' sums first,
// then each walks its range from the sums of the ranges before it.
// One row of the walk: carry the prefix sums, return zh_k . (M Zh)_k, and (kGrad) write
// 4 (Zh G - M Zh)_k over Zh G.
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

template <typename T>
double flsa_gram_walk(Matrix<T> zh, nb::ndarray<const int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu> order,
                      Vector<T> u_sorted, Vector<T> total, Vector<T> weighted_total, OutMatrix<T> grad,
                      bool with_grad) {
  const int64_t rows = static_cast<int64_t>(zh.shape(0));
  const int64_t width = static_cast<int64_t>(zh.shape(1));
  const T* zp = zh.data();
  const int64_t* op = order.data();
  const T* up = u_sorted.data();
  const T* t0 = total.data();
  const T* t1 = weighted_total.data();
  T* gp = grad.data();
  int threads = 1;
#ifdef _OPENMP
  threads = std::max<int>(1, std::min<int64_t>(omp_get_max_threads(), rows / 256));
#endif
  std::vector<T> carry0(static_cast<size_t>(threads + 1) * width, T(0)), carry1(carry0.size(), T(0));
  double summed = 0;
#pragma omp parallel num_threads(threads) reduction(+ : summed)
  {
    int thread = 0;
#ifdef _OPENMP
    thread = omp_get_thread_num();
#endif
    const int64_t first = rows * thread / threads, last = rows * (thread + 1) / threads;
    T* p0 = carry0.data() + static_cast<size_t>(thread + 1) * width;
    T* p1 = carry1.data() + static_cast<size_t>(thread + 1) * width;
    if (threads > 1) {
      for (int64_t k = first; k < last; ++k) {  // this range's sums
        const T* z = zp + op[k] * width;
        const T u = up[k];
#pragma omp simd
        for (int64_t d = 0; d < width; ++d) {
          p0[d] += z[d];
          p1[d] += u * z[d];
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
      const int64_t row = op[k];
      const T* z = zp + row * width;
      summed += double(with_grad ? gram_walk_row<T, true>(z, gp + row * width, up[k], p0, p1, t0, t1, width)
                                 : gram_walk_row<T, false>(z, nullptr, up[k], p0, p1, t0, t1, width));
    }
  }
  return summed;
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
std::vector<double> predicted_scores(Matrix<T> logits, Vector<double> values) {
  const int64_t rows = logits.shape(0), levels = logits.shape(1);
  std::vector<double> scores(rows);
#pragma omp parallel
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
                     bool pseudo_sharpened, OutMatrix<double> counts, OutMatrix<double> sums) {
  const int64_t rows = logits.shape(0), levels = logits.shape(1);
  const int64_t num_betas = betas.shape(0), num_thresholds = thresholds.shape(0);
  std::vector<double> scores = predicted_scores(logits, values);
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
#pragma omp parallel
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
  m.def("flsa_gram_walk", &flsa_gram_walk<float>, nb::call_guard<nb::gil_scoped_release>());
  m.def("flsa_gram_walk", &flsa_gram_walk<double>, nb::call_guard<nb::gil_scoped_release>());
  m.def("grid_accumulate", &grid_accumulate<float>, nb::call_guard<nb::gil_scoped_release>());
  m.def("grid_accumulate", &grid_accumulate<double>, nb::call_guard<nb::gil_scoped_release>());
}
