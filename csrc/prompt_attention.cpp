// Fused prompt attention for CPU: the C++ implementation of vita_clip::prompt_attention.
//
// Queries q (F, H, L, d) of F = B*T frames attend, with one softmax, over keys/values from
// four sources read in place through their own pointers and strides (the concatenated
// sequence is never built):
//   own tokens k, v        (F, H, L, d)
//   local prompts          (B, H, T_l, d)   shared by the T = F/B frames of a video
//   global prompts         (H, M, d)        shared by every frame
//   summary token          (F, H, d)        one per frame
// Forward: out (F, H, L, d) and lse (F, H, L) (float32, float64 for float64 inputs).
// Backward: gradients of all nine inputs; the local and global gradients are summed over the
// frames sharing them in a fixed order (deterministic, no atomics).
//
// Algorithm (FlashAttention-2, Dao 2023, on CPU tiles): a task owns one (frame, head) and a
// block of queries. The keys of the four sources are cut into "pieces" (a piece is a run of
// rows of one source, at most kKeyBlock rows) and the pieces are packed, in order, into key
// blocks of at most kKeyBlock columns. For each key block the scores of every piece are
// computed by one GEMM straight from the source's memory into the columns of a per-thread
// score tile, the online-softmax statistics are updated once for the whole block and
// P @ V is accumulated piece by piece (GEMM with beta = 1). For ViT-B/16 (L = 197, 8 local,
// 8 global prompts, 1 summary) every frame's 214 keys form one block.
//
// The GEMMs call the BLAS torch is linked with (sgemm_/dgemm_, MKL in the x86 wheels), which
// picks its own vector ISA at run time; if no BLAS symbol is present a plain loop is used. The
// element-wise work (exp, row max/sum, rescaling) is written as simple loops compiled for
// three x86 ISAs (AVX-512, AVX2+FMA, baseline), one picked from the CPU's features.
// float32 and float64; the accumulation type is the input type (float32 accumulation for
// float32, as the brief asks; float64 for the float64 reference checks). bfloat16: on CPUs
// with AVX-512 BF16 (detected at run time) and even head dims the GEMMs are VDPBF16PS dot
// products with float32 accumulation and the softmax stays float32 (forward_kernel_bf16_dot,
// backward_kernel_bf16_dot); elsewhere the float32 kernels run on widened copies (see
// prompt_attention_fwd).

#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

// -- BLAS ---------------------------------------------------------------------------------------

#if defined(__GNUC__) || defined(__clang__)
extern "C" {
// Fortran BLAS exported by libtorch_cpu when torch is built with a BLAS (MKL/OpenBLAS). Weak:
// resolved to null (and replaced by loops) when absent.
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) __attribute__((weak));
}
#define VITA_WEAK_BLAS 1
#else
#define VITA_WEAK_BLAS 0
#endif

// The float32 element-wise loops are compiled three times (AVX-512, AVX2+FMA, baseline) and the
// variant is chosen once from the CPU's features (not its model name, as target_clones("arch=")
// would). Elsewhere (other compilers/architectures) only the baseline exists.
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(VITA_CLIP_SINGLE_ISA)
#define VITA_X86_ISAS 1
#define VITA_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")))
#define VITA_AVX2 __attribute__((target("avx2,fma")))
// Only the functions marked so use AVX-512 BF16: the .so runs on any x86-64 CPU.
#define VITA_AVX512BF16 __attribute__((target("avx512bf16,avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")))
#else
#define VITA_X86_ISAS 0
#endif

#if defined(__GNUC__) || defined(__clang__)
#define VITA_INLINE __attribute__((always_inline)) inline  // inlined into each ISA clone
#else
#define VITA_INLINE inline
#endif

namespace vita_clip_cpu {
namespace {

constexpr int64_t kQueryBlock = 256;  // queries per task (evened out over the frame; ViT-B/16: one block of 197)
constexpr int64_t kKeyBlock = 512;    // key columns per online-softmax step

// Column-major GEMM: C (m x n) = alpha * op(A) (m x k) * op(B) (k x n) + beta * C.
template <typename T>
void gemm_loops(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda, const T* b,
                int64_t ldb, T beta, T* c, int64_t ldc) {
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t i = 0; i < m; ++i) {
      T sum = 0;
      for (int64_t p = 0; p < k; ++p) {
        const T av = ta ? a[p + i * lda] : a[i + p * lda];
        const T bv = tb ? b[j + p * ldb] : b[p + j * ldb];
        sum += av * bv;
      }
      T& dst = c[i + j * ldc];
      dst = alpha * sum + (beta == T(0) ? T(0) : beta * dst);
    }
  }
}

template <typename T>
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda, const T* b,
          int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {  // C = beta * C
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < m; ++i) c[i + j * ldc] = beta == T(0) ? T(0) : beta * c[i + j * ldc];
    return;
  }
  // BLAS requires lda >= rows of A as stored, etc.
  lda = std::max<int64_t>(lda, std::max<int64_t>(1, ta ? k : m));
  ldb = std::max<int64_t>(ldb, std::max<int64_t>(1, tb ? n : k));
  const bool fits = m < INT32_MAX && n < INT32_MAX && k < INT32_MAX && lda < INT32_MAX && ldb < INT32_MAX &&
                    ldc < INT32_MAX;
  const char cta = ta ? 'T' : 'N', ctb = tb ? 'T' : 'N';
  const int im = m, in = n, ik = k, ilda = lda, ildb = ldb, ildc = ldc;
#if VITA_WEAK_BLAS
  if constexpr (std::is_same_v<T, float>) {
    if (sgemm_ != nullptr && fits) {
      sgemm_(&cta, &ctb, &im, &in, &ik, &alpha, a, &ilda, b, &ildb, &beta, c, &ildc);
      return;
    }
  } else {
    if (dgemm_ != nullptr && fits) {
      dgemm_(&cta, &ctb, &im, &in, &ik, &alpha, a, &ilda, b, &ildb, &beta, c, &ildc);
      return;
    }
  }
#endif
  gemm_loops<T>(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

// -- element-wise kernels -------------------------------------------------------------------------

// exp for float32 on [-87, 88] (inputs are clamped; exp(-inf) gives ~1e-38 instead of 0, which
// only ever multiplies zero sums): x = n ln2 + r, |r| <= ln2 / 2, exp(r) by its degree-7 Taylor
// polynomial (relative error < 1e-8 before rounding), 2^n assembled in the exponent bits.
// Branch-free and written so that the compiler vectorizes the loops that call it.
VITA_INLINE float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : x;  // plain ternaries: std::min/max are not inlined into the ISA clones
  x = x > 88.0f ? 88.0f : x;
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;          // ln 2 split in a part exact in float
  constexpr float kLn2Lo = -2.12194440e-4f;       // and the remainder
  constexpr float kRound = 12582912.0f;           // 1.5 * 2^23: adding it rounds to an integer
  const float t = x * kLog2e + kRound;
  const float n = t - kRound;
  const float r = (x - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t bits;
  std::memcpy(&bits, &t, sizeof(bits));
  const int32_t e = (bits - 0x4B400000 + 127) << 23;  // integer n sits in t's low mantissa bits
  float scale;
  std::memcpy(&scale, &e, sizeof(scale));
  return p * scale;
}

inline double exp_approx(double x) { return std::exp(x); }

// Online-softmax step for rows x cols scores s (row stride ld), in place: s <- exp(s - m_new),
// l <- l * alpha + rowsum, m <- m_new; alpha (exp(m_old - m_new)) is returned per row.
template <typename T>
VITA_INLINE void softmax_step_impl(T* s, int64_t rows, int64_t cols, int64_t ld, T* m, T* l, T* alpha) {
  for (int64_t i = 0; i < rows; ++i) {
    T* row = s + i * ld;
    T mx = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : mx)
    for (int64_t j = 0; j < cols; ++j) mx = row[j] > mx ? row[j] : mx;
    const T m_new = m[i] > mx ? m[i] : mx;
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < cols; ++j) {
      const T p = exp_approx(row[j] - m_new);
      row[j] = p;
      sum += p;
    }
    alpha[i] = std::exp(m[i] - m_new);  // 0 on the first block (m = -inf)
    l[i] = l[i] * alpha[i] + sum;
    m[i] = m_new;
  }
}

// Backward: s <- p = exp(s - lse) and dp <- ds = p * (dp - delta) * scale, row by row.
template <typename T>
VITA_INLINE void backward_probs_impl(T* s, T* dp, int64_t rows, int64_t cols, int64_t ld, const T* lse, const T* delta,
                                T scale) {
  for (int64_t i = 0; i < rows; ++i) {
    T* srow = s + i * ld;
    T* dprow = dp + i * ld;
    const T li = lse[i], di = delta[i];
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) {
      const T p = exp_approx(srow[j] - li);
      srow[j] = p;
      dprow[j] = p * (dprow[j] - di) * scale;
    }
  }
}

using SoftmaxStepF = void (*)(float*, int64_t, int64_t, int64_t, float*, float*, float*);
using BackwardProbsF = void (*)(float*, float*, int64_t, int64_t, int64_t, const float*, const float*, float);

void softmax_step_base(float* s, int64_t rows, int64_t cols, int64_t ld, float* m, float* l, float* alpha) {
  softmax_step_impl<float>(s, rows, cols, ld, m, l, alpha);
}
void backward_probs_base(float* s, float* dp, int64_t rows, int64_t cols, int64_t ld, const float* lse,
                         const float* delta, float scale) {
  backward_probs_impl<float>(s, dp, rows, cols, ld, lse, delta, scale);
}
#if VITA_X86_ISAS
VITA_AVX512 void softmax_step_avx512(float* s, int64_t rows, int64_t cols, int64_t ld, float* m, float* l,
                                     float* alpha) {
  softmax_step_impl<float>(s, rows, cols, ld, m, l, alpha);
}
VITA_AVX512 void backward_probs_avx512(float* s, float* dp, int64_t rows, int64_t cols, int64_t ld,
                                       const float* lse, const float* delta, float scale) {
  backward_probs_impl<float>(s, dp, rows, cols, ld, lse, delta, scale);
}
VITA_AVX2 void softmax_step_avx2(float* s, int64_t rows, int64_t cols, int64_t ld, float* m, float* l, float* alpha) {
  softmax_step_impl<float>(s, rows, cols, ld, m, l, alpha);
}
VITA_AVX2 void backward_probs_avx2(float* s, float* dp, int64_t rows, int64_t cols, int64_t ld, const float* lse,
                                   const float* delta, float scale) {
  backward_probs_impl<float>(s, dp, rows, cols, ld, lse, delta, scale);
}
#endif

// 2 = AVX-512, 1 = AVX2+FMA, 0 = baseline
int isa_level() {
#if VITA_X86_ISAS
  static const int level = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
      return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
    return 0;
  }();
  return level;
#else
  return 0;
#endif
}

void softmax_step(float* s, int64_t rows, int64_t cols, int64_t ld, float* m, float* l, float* alpha) {
#if VITA_X86_ISAS
  static const SoftmaxStepF fn = isa_level() == 2 ? softmax_step_avx512
                                 : isa_level() == 1 ? softmax_step_avx2 : softmax_step_base;
#else
  static const SoftmaxStepF fn = softmax_step_base;
#endif
  fn(s, rows, cols, ld, m, l, alpha);
}
void backward_probs(float* s, float* dp, int64_t rows, int64_t cols, int64_t ld, const float* lse,
                    const float* delta, float scale) {
#if VITA_X86_ISAS
  static const BackwardProbsF fn = isa_level() == 2 ? backward_probs_avx512
                                   : isa_level() == 1 ? backward_probs_avx2 : backward_probs_base;
#else
  static const BackwardProbsF fn = backward_probs_base;
#endif
  fn(s, dp, rows, cols, ld, lse, delta, scale);
}
void softmax_step(double* s, int64_t rows, int64_t cols, int64_t ld, double* m, double* l, double* alpha) {
  softmax_step_impl<double>(s, rows, cols, ld, m, l, alpha);
}
void backward_probs(double* s, double* dp, int64_t rows, int64_t cols, int64_t ld, const double* lse,
                    const double* delta, double scale) {
  backward_probs_impl<double>(s, dp, rows, cols, ld, lse, delta, scale);
}

// rows x d: x[i] *= a[i]
template <typename T>
inline void scale_rows(T* x, int64_t rows, int64_t d, int64_t ld, const T* a) {
  for (int64_t i = 0; i < rows; ++i) {
    T* row = x + i * ld;
    const T ai = a[i];
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) row[j] *= ai;
  }
}

// delta[i] = sum_j do[i, j] * o[i, j], accumulated in Acc (float32 for bfloat16 inputs)
template <typename In, typename Acc>
inline void row_dots(const In* x, int64_t ldx, const In* y, int64_t ldy, int64_t rows, int64_t d, Acc* out) {
  for (int64_t i = 0; i < rows; ++i) {
    const In* xr = x + i * ldx;
    const In* yr = y + i * ldy;
    Acc sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < d; ++j) sum += static_cast<Acc>(xr[j]) * static_cast<Acc>(yr[j]);
    out[i] = sum;
  }
}

// -- sources --------------------------------------------------------------------------------------

// A (F or B or 1, H, n, d) key/value source seen through its strides (last-dim stride 1).
template <typename T>
struct Source {
  const T* k = nullptr;
  const T* v = nullptr;
  int64_t k_outer = 0, k_head = 0, k_row = 0;  // strides of frame/video, head, row
  int64_t v_outer = 0, v_head = 0, v_row = 0;
  int64_t rows = 0;
  int64_t frames_per_outer = 1;  // frames sharing one outer index (F/B local, F global (outer 0), 1 own/summary)
  int index = 0;                 // 0 own, 1 local, 2 global, 3 summary
};

// A run of rows [start, start + n) of one source, placed at column `col` of its key block.
struct Piece {
  int source;
  int64_t start, n, col;
};

struct KeyBlock {
  int64_t width;
  std::vector<Piece> pieces;
};

template <typename T>
std::vector<KeyBlock> plan_blocks(const std::vector<Source<T>>& sources) {
  std::vector<KeyBlock> blocks;
  for (size_t s = 0; s < sources.size(); ++s) {
    for (int64_t start = 0; start < sources[s].rows; start += kKeyBlock) {
      const int64_t n = std::min(kKeyBlock, sources[s].rows - start);
      if (blocks.empty() || blocks.back().width + n > kKeyBlock) blocks.push_back(KeyBlock{0, {}});
      blocks.back().pieces.push_back(Piece{static_cast<int>(s), start, n, blocks.back().width});
      blocks.back().width += n;
    }
  }
  return blocks;
}

// Key/value row pointers of `piece` for frame f, head h.
template <typename T>
inline void piece_ptrs(const Source<T>& src, const Piece& piece, int64_t f, int64_t h, const T** k, const T** v) {
  const int64_t outer = src.frames_per_outer > 0 ? f / src.frames_per_outer : 0;
  *k = src.k + outer * src.k_outer + h * src.k_head + piece.start * src.k_row;
  *v = src.v + outer * src.v_outer + h * src.v_head + piece.start * src.v_row;
}

// Row stride usable as a BLAS leading dimension (single rows may have any stride).
template <typename T>
inline int64_t ld_of(int64_t row_stride, int64_t n, int64_t d) {
  return n <= 1 ? std::max<int64_t>(row_stride, d) : row_stride;
}

// Last-dim stride 1 and rows that do not overlap (what a BLAS leading dimension needs).
at::Tensor blas_ready(const at::Tensor& t) {
  const int64_t d = t.size(-1);
  const bool ok = t.stride(-1) == 1 || d <= 1;
  const bool rows_ok = t.dim() < 2 || t.size(-2) <= 1 || t.stride(-2) >= d;
  return ok && rows_ok ? t : t.contiguous();
}

struct Inputs {
  at::Tensor q, k, v;
  std::optional<at::Tensor> kl, vl, kg, vg, ks, vs;
};

void check(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const std::optional<at::Tensor>& kl,
           const std::optional<at::Tensor>& vl, const std::optional<at::Tensor>& kg,
           const std::optional<at::Tensor>& vg, const std::optional<at::Tensor>& ks,
           const std::optional<at::Tensor>& vs) {
  TORCH_CHECK(q.dim() == 4, "prompt_attention_cpu: q must be (frames, heads, tokens, head_dim)");
  TORCH_CHECK(q.device().is_cpu(), "prompt_attention_cpu: CPU tensors only");
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble || q.scalar_type() == at::kBFloat16,
              "prompt_attention_cpu: float32, float64 or bfloat16 only, got ", q.scalar_type());
  TORCH_CHECK(k.sizes() == q.sizes() && v.sizes() == q.sizes(), "prompt_attention_cpu: k, v must match q");
  const int64_t frames = q.size(0), heads = q.size(1), dim = q.size(3);
  auto same = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.scalar_type() == q.scalar_type() && t.device() == q.device(), "prompt_attention_cpu: ", name,
                " must have q's dtype and device");
  };
  same(k, "k");
  same(v, "v");
  TORCH_CHECK(kl.has_value() == vl.has_value() && kg.has_value() == vg.has_value() && ks.has_value() == vs.has_value(),
              "prompt_attention_cpu: keys and values of a source must both be given or both be None");
  if (kl) {
    same(*kl, "k_local");
    same(*vl, "v_local");
    TORCH_CHECK(kl->dim() == 4 && kl->size(1) == heads && kl->size(3) == dim && kl->size(0) > 0 &&
                    frames % kl->size(0) == 0 && vl->sizes() == kl->sizes(),
                "prompt_attention_cpu: bad local prompt shapes");
  }
  if (kg) {
    same(*kg, "k_global");
    same(*vg, "v_global");
    TORCH_CHECK(kg->dim() == 3 && kg->size(0) == heads && kg->size(2) == dim && vg->sizes() == kg->sizes(),
                "prompt_attention_cpu: bad global prompt shapes");
  }
  if (ks) {
    same(*ks, "k_summary");
    same(*vs, "v_summary");
    TORCH_CHECK(ks->dim() == 3 && ks->size(0) == frames && ks->size(1) == heads && ks->size(2) == dim &&
                    vs->sizes() == ks->sizes(),
                "prompt_attention_cpu: bad summary shapes");
  }
}

template <typename T>
std::vector<Source<T>> make_sources(const Inputs& in) {
  std::vector<Source<T>> out;
  const int64_t frames = in.q.size(0);
  {
    Source<T> s;
    s.k = in.k.data_ptr<T>();
    s.v = in.v.data_ptr<T>();
    s.k_outer = in.k.stride(0), s.k_head = in.k.stride(1), s.k_row = in.k.stride(2);
    s.v_outer = in.v.stride(0), s.v_head = in.v.stride(1), s.v_row = in.v.stride(2);
    s.rows = in.k.size(2);
    s.frames_per_outer = 1;
    s.index = 0;
    out.push_back(s);
  }
  if (in.kl && in.kl->size(2) > 0) {
    Source<T> s;
    s.k = in.kl->data_ptr<T>();
    s.v = in.vl->data_ptr<T>();
    s.k_outer = in.kl->stride(0), s.k_head = in.kl->stride(1), s.k_row = in.kl->stride(2);
    s.v_outer = in.vl->stride(0), s.v_head = in.vl->stride(1), s.v_row = in.vl->stride(2);
    s.rows = in.kl->size(2);
    s.frames_per_outer = frames / in.kl->size(0);
    s.index = 1;
    out.push_back(s);
  }
  if (in.kg && in.kg->size(1) > 0) {
    Source<T> s;
    s.k = in.kg->data_ptr<T>();
    s.v = in.vg->data_ptr<T>();
    s.k_head = in.kg->stride(0), s.k_row = in.kg->stride(1);
    s.v_head = in.vg->stride(0), s.v_row = in.vg->stride(1);
    s.rows = in.kg->size(1);
    s.frames_per_outer = 0;  // outer index 0 for every frame
    s.index = 2;
    out.push_back(s);
  }
  if (in.ks) {
    Source<T> s;
    s.k = in.ks->data_ptr<T>();
    s.v = in.vs->data_ptr<T>();
    s.k_outer = in.ks->stride(0), s.k_head = in.ks->stride(1), s.k_row = 0;
    s.v_outer = in.vs->stride(0), s.v_head = in.vs->stride(1), s.v_row = 0;
    s.rows = 1;
    s.frames_per_outer = 1;
    s.index = 3;
    out.push_back(s);
  }
  return out;
}

Inputs prepare(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const std::optional<at::Tensor>& kl,
               const std::optional<at::Tensor>& vl, const std::optional<at::Tensor>& kg,
               const std::optional<at::Tensor>& vg, const std::optional<at::Tensor>& ks,
               const std::optional<at::Tensor>& vs) {
  check(q, k, v, kl, vl, kg, vg, ks, vs);
  auto opt = [](const std::optional<at::Tensor>& t) -> std::optional<at::Tensor> {
    if (!t) return std::nullopt;
    return blas_ready(*t);
  };
  return Inputs{blas_ready(q), blas_ready(k), blas_ready(v), opt(kl), opt(vl), opt(kg), opt(vg), opt(ks), opt(vs)};
}

// Tasks per parallel chunk so that a chunk holds at least ~2^18 multiply-adds: small problems
// (tests, tiny models) run on the calling thread instead of paying for a parallel region.
inline int64_t grain_for(int64_t rows, int64_t keys, int64_t dim) {
  const int64_t work = std::max<int64_t>(1, rows * std::max<int64_t>(keys, 1) * std::max<int64_t>(dim, 1));
  return std::max<int64_t>(1, (int64_t(1) << 18) / work);
}

// Queries per task: blocks of at most kQueryBlock, evened out over the frame's tokens.
inline int64_t query_block(int64_t tokens) {
  const int64_t nblocks = (tokens + kQueryBlock - 1) / kQueryBlock;
  return nblocks == 0 ? 1 : (tokens + nblocks - 1) / nblocks;
}

// -- forward --------------------------------------------------------------------------------------

template <typename T>
void forward_kernel(const Inputs& in, at::Tensor& out, at::Tensor& lse) {
  const int64_t frames = in.q.size(0), heads = in.q.size(1), tokens = in.q.size(2), dim = in.q.size(3);
  const auto sources = make_sources<T>(in);
  const auto blocks = plan_blocks(sources);
  const int64_t bm = query_block(tokens);
  const int64_t qblocks = (tokens + bm - 1) / bm;
  const T scale = T(1) / std::sqrt(static_cast<T>(dim));
  const T* q = in.q.data_ptr<T>();
  const int64_t sq_f = in.q.stride(0), sq_h = in.q.stride(1), sq_l = in.q.stride(2);
  T* o = out.data_ptr<T>();
  T* lse_ptr = lse.data_ptr<T>();
  int64_t keys = 0;
  for (const auto& src : sources) keys += src.rows;
  at::parallel_for(0, frames * heads * qblocks, grain_for(bm, keys, dim), [&](int64_t begin, int64_t end) {
    std::vector<T> s_buf(bm * kKeyBlock), m(bm), l(bm), alpha(bm);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t fh = task / qblocks, qb = task % qblocks;
      const int64_t f = fh / heads, h = fh % heads;
      const int64_t m0 = qb * bm, rows = std::min(bm, tokens - m0);
      const T* qt = q + f * sq_f + h * sq_h + m0 * sq_l;
      T* acc = o + (fh * tokens + m0) * dim;  // out is contiguous: accumulate in place
      std::fill(m.begin(), m.end(), -std::numeric_limits<T>::infinity());
      std::fill(l.begin(), l.end(), T(0));
      for (const auto& block : blocks) {
        const int64_t ld = block.width;
        for (const auto& piece : block.pieces) {  // S[:, col:col+n] = scale * Q K^T
          const T *kp, *vp;
          piece_ptrs(sources[piece.source], piece, f, h, &kp, &vp);
          gemm<T>(true, false, piece.n, rows, dim, scale, kp,
                  ld_of<T>(sources[piece.source].k_row, piece.n, dim), qt, sq_l, T(0), s_buf.data() + piece.col, ld);
        }
        softmax_step(s_buf.data(), rows, block.width, ld, m.data(), l.data(), alpha.data());
        if (&block != &blocks.front()) scale_rows(acc, rows, dim, dim, alpha.data());
        for (const auto& piece : block.pieces) {  // acc += P[:, col:col+n] V (the very first one: acc =)
          const T *kp, *vp;
          piece_ptrs(sources[piece.source], piece, f, h, &kp, &vp);
          const T beta = &block == &blocks.front() && &piece == &block.pieces.front() ? T(0) : T(1);
          gemm<T>(false, false, dim, rows, piece.n, T(1), vp, ld_of<T>(sources[piece.source].v_row, piece.n, dim),
                  s_buf.data() + piece.col, ld, beta, acc, dim);
        }
      }
      for (int64_t i = 0; i < rows; ++i) {
        alpha[i] = T(1) / l[i];
        lse_ptr[fh * tokens + m0 + i] = m[i] + std::log(l[i]);
      }
      scale_rows(acc, rows, dim, dim, alpha.data());
    }
  });
}

// -- bfloat16 with AVX-512 BF16 dot products: microkernels and forward -------------------------------

// VDPBF16PS (_mm512_dpbf16_ps) adds to each float32 lane the products of one pair of bfloat16
// elements of each operand. Operands are laid out so that a lane is one output and a pair runs
// along the reduction: for S = Q K^T a lane is a key (16 keys per vector) and the pair two
// consecutive head-dim elements of the key row (so Q's pair is broadcast); for O += P V a lane
// is an output column and the pair two consecutive keys (so P's pair is broadcast). K and V of
// a key block are repacked into these layouts once per task (a pass over keys x d, small next
// to queries x keys x d), zero-padded to whole vectors. P is rounded to bfloat16 for P V (as
// torch's own bfloat16 flash attention does); scores, softmax statistics and the output
// accumulate in float32.

// Whether the CPU has AVX-512 BF16 (with the AVX-512 subsets the kernel is compiled for).
bool cpu_has_bf16_dot() {
#if VITA_X86_ISAS
  static const bool ok = [] {
    __builtin_cpu_init();
    return isa_level() == 2 && __builtin_cpu_supports("avx512bf16");
  }();
  return ok;
#else
  return false;
#endif
}

// The dot-product path can be switched off (VITA_CLIP_CPU_BF16_DOT=0 before the first call, or
// torch.ops.vita_clip_cpu.set_bf16_dot): the widened float32 path then runs, e.g. to compare.
std::atomic<bool>& bf16_dot_enabled() {
  static std::atomic<bool> enabled{[] {
    const char* env = std::getenv("VITA_CLIP_CPU_BF16_DOT");
    return env == nullptr || std::strcmp(env, "0") != 0;
  }()};
  return enabled;
}

bool use_bf16_dot() { return cpu_has_bf16_dot() && bf16_dot_enabled().load(); }

// Returns whether bfloat16 calls will now use the dot products (false on CPUs without them).
bool set_bf16_dot(bool enabled) {
  bf16_dot_enabled().store(enabled);
  return use_bf16_dot();
}

// The dot products apply to bfloat16 with an even head dim (a pair never straddles two rows).
bool bf16_dot_applies(const at::Tensor& q) {
  return q.scalar_type() == at::kBFloat16 && q.dim() == 4 && q.size(3) % 2 == 0 && use_bf16_dot();
}

// Calls that ran the dot products, forward and backward (torch.ops.vita_clip_cpu.bf16_dot_calls):
// lets the tests check which path ran.
std::atomic<int64_t> bf16_dot_forwards{0}, bf16_dot_backwards{0};
std::vector<int64_t> bf16_dot_calls() { return {bf16_dot_forwards.load(), bf16_dot_backwards.load()}; }

#if VITA_X86_ISAS
using bf16_bits = uint16_t;

inline uint32_t pair_at(const bf16_bits* row, int64_t p) {  // elements 2p, 2p+1 (2p in the low half)
  uint32_t w;
  std::memcpy(&w, row + 2 * p, sizeof(w));
  return w;
}

inline const bf16_bits* bits_of(const at::BFloat16* p) { return reinterpret_cast<const bf16_bits*>(p); }

// The two packed layouts of bfloat16 rows (n rows of dim elements, row stride ld, placed at
// index `at` of the packed operand; the destination is zeroed beforehand, so padding is zero):
// lanes (qk_tile's second operand): a row is one vector lane, the pair two consecutive elements
// of the row: [group of 16 rows][pair][16 lanes][2].
inline void pack_lanes(const bf16_bits* rows, int64_t ld, int64_t n, int64_t at, int64_t pairs_d, bf16_bits* dst) {
  for (int64_t r = 0; r < n; ++r) {
    const int64_t idx = at + r, g = idx / 16, lane = idx % 16;
    const bf16_bits* row = rows + r * ld;
    for (int64_t p = 0; p < pairs_d; ++p) std::memcpy(dst + ((g * pairs_d + p) * 16 + lane) * 2, row + 2 * p, 4);
  }
}
// reduction (pv_tile's second operand): the pair is two consecutive rows, a lane one element of
// the row: [pair of rows][dpad elements][2].
inline void pack_reduction(const bf16_bits* rows, int64_t ld, int64_t n, int64_t at, int64_t dim, int64_t dpad,
                           bf16_bits* dst) {
  for (int64_t r = 0; r < n; ++r) {
    const int64_t idx = at + r;
    const bf16_bits* row = rows + r * ld;
    bf16_bits* d = dst + (idx / 2) * dpad * 2 + (idx % 2);
    for (int64_t c = 0; c < dim; ++c) d[2 * c] = row[c];
  }
}

// S[i, 16 g + lane] = scale * sum_p Q[i, 2p:2p+2] . K[16 g + lane, 2p:2p+2] for NI rows and NG
// key groups; kp: packed K, [group][pair][16 lanes][2].
template <int NI, int NG>
VITA_AVX512BF16 void qk_tile(const bf16_bits* q, int64_t ldq, const bf16_bits* kp, int64_t pairs, float* s,
                             int64_t lds, float scale) {
  __m512 acc[NI][NG];
  for (int a = 0; a < NI; ++a)
    for (int b = 0; b < NG; ++b) acc[a][b] = _mm512_setzero_ps();
  for (int64_t p = 0; p < pairs; ++p) {
    __m512bh kv[NG];
    for (int b = 0; b < NG; ++b) kv[b] = (__m512bh)_mm512_loadu_si512(kp + (b * pairs + p) * 32);
    for (int a = 0; a < NI; ++a) {
      const __m512bh qa = (__m512bh)_mm512_set1_epi32(static_cast<int>(pair_at(q + a * ldq, p)));
      for (int b = 0; b < NG; ++b) acc[a][b] = _mm512_dpbf16_ps(acc[a][b], qa, kv[b]);
    }
  }
  const __m512 vs = _mm512_set1_ps(scale);
  for (int a = 0; a < NI; ++a)
    for (int b = 0; b < NG; ++b) _mm512_storeu_ps(s + a * lds + 16 * b, _mm512_mul_ps(acc[a][b], vs));
}

// acc[i, 16 c + lane] += sum_q P[i, 2q:2q+2] . V[2q:2q+2, 16 c + lane] for NI rows and NC
// column groups; pb: P in bfloat16, its pair q of row i at pb + i * p_row + q * p_pair (p_pair = 2
// for bfloat16 rows; p_row = 2 for the layout of pack_row_pairs: P^T, dS^T); vp: packed V, [key
// pair][dpad columns][2].
template <int NI, int NC>
VITA_AVX512BF16 void pv_tile(const bf16_bits* pb, int64_t p_row, int64_t p_pair, const bf16_bits* vp, int64_t dpad,
                             int64_t pairs, float* acc, int64_t lda) {
  __m512 o[NI][NC];
  for (int a = 0; a < NI; ++a)
    for (int c = 0; c < NC; ++c) o[a][c] = _mm512_loadu_ps(acc + a * lda + 16 * c);
  for (int64_t q = 0; q < pairs; ++q) {
    __m512bh vv[NC];
    for (int c = 0; c < NC; ++c) vv[c] = (__m512bh)_mm512_loadu_si512(vp + (q * dpad + 16 * c) * 2);
    for (int a = 0; a < NI; ++a) {
      const __m512bh pa = (__m512bh)_mm512_set1_epi32(static_cast<int>(pair_at(pb + a * p_row + q * p_pair, 0)));
      for (int c = 0; c < NC; ++c) o[a][c] = _mm512_dpbf16_ps(o[a][c], pa, vv[c]);
    }
  }
  for (int a = 0; a < NI; ++a)
    for (int c = 0; c < NC; ++c) _mm512_storeu_ps(acc + a * lda + 16 * c, o[a][c]);
}

// Tiles of at most 4 x 4 vectors (16 accumulators of the 32 registers), the edges by the
// smaller instantiations.

#define VITA_DISPATCH_4(fn, ni, nj, ...) \
  switch ((ni) * 4 + (nj)) {                   \
    case 5: fn<1, 1>(__VA_ARGS__); break;      \
    case 6: fn<1, 2>(__VA_ARGS__); break;      \
    case 7: fn<1, 3>(__VA_ARGS__); break;      \
    case 8: fn<1, 4>(__VA_ARGS__); break;      \
    case 9: fn<2, 1>(__VA_ARGS__); break;      \
    case 10: fn<2, 2>(__VA_ARGS__); break;     \
    case 11: fn<2, 3>(__VA_ARGS__); break;     \
    case 12: fn<2, 4>(__VA_ARGS__); break;     \
    case 13: fn<3, 1>(__VA_ARGS__); break;     \
    case 14: fn<3, 2>(__VA_ARGS__); break;     \
    case 15: fn<3, 3>(__VA_ARGS__); break;     \
    case 16: fn<3, 4>(__VA_ARGS__); break;     \
    case 17: fn<4, 1>(__VA_ARGS__); break;     \
    case 18: fn<4, 2>(__VA_ARGS__); break;     \
    case 19: fn<4, 3>(__VA_ARGS__); break;     \
    case 20: fn<4, 4>(__VA_ARGS__); break;     \
    default: break;                            \
  }

// S (rows x 16 groups, row stride lds) = scale * A B^T for bfloat16 rows A (row stride lda, pairs_d
// pairs) and B packed by pack_lanes (groups of 16 rows), in qk_tiles.
VITA_AVX512BF16 void qk_product(const bf16_bits* a, int64_t lda, int64_t rows, const bf16_bits* b, int64_t groups,
                                int64_t pairs_d, float* s, int64_t lds, float scale) {
  for (int64_t i = 0; i < rows; i += 4) {
    const int64_t ni = std::min<int64_t>(4, rows - i);
    for (int64_t g = 0; g < groups; g += 4) {
      const int64_t ng = std::min<int64_t>(4, groups - g);
      VITA_DISPATCH_4(qk_tile, ni, ng, a + i * lda, lda, b + g * pairs_d * 32, pairs_d, s + i * lds + 16 * g, lds,
                      scale)
    }
  }
}

// acc (rows x dpad, row stride ldacc) += A B for A in bfloat16 (`pairs` pairs along the
// reduction, addressed as in pv_tile by a_row, a_pair) and B packed by pack_reduction, in pv_tiles.
VITA_AVX512BF16 void pv_product(const bf16_bits* a, int64_t a_row, int64_t a_pair, int64_t rows, const bf16_bits* b,
                                int64_t dpad, int64_t pairs, float* acc, int64_t ldacc) {
  for (int64_t i = 0; i < rows; i += 4) {
    const int64_t ni = std::min<int64_t>(4, rows - i);
    for (int64_t c = 0; c < dpad / 16; c += 4) {
      const int64_t nc = std::min<int64_t>(4, dpad / 16 - c);
      VITA_DISPATCH_4(pv_tile, ni, nc, a + i * a_row, a_row, a_pair, b + 16 * c * 2, dpad, pairs,
                      acc + i * ldacc + 16 * c, ldacc)
    }
  }
}
#undef VITA_DISPATCH_4

// P or dS (float32, row stride lds) -> bfloat16 rows of ldp (a multiple of 32) elements, zero past cols.
VITA_AVX512BF16 void rows_to_bf16(const float* s, int64_t lds, int64_t rows, int64_t cols, bf16_bits* pb,
                                   int64_t ldp) {
  for (int64_t i = 0; i < rows; ++i) {
    const float* row = s + i * lds;
    for (int64_t j = 0; j < ldp; j += 32) {
      const int64_t lo_n = std::max<int64_t>(0, std::min<int64_t>(16, cols - j));
      const int64_t hi_n = std::max<int64_t>(0, std::min<int64_t>(16, cols - j - 16));
      const __m512 lo = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << lo_n) - 1), row + j);
      const __m512 hi = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << hi_n) - 1), row + j + 16);
      _mm512_storeu_si512(pb + i * ldp + j, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
  }
}

// P or dS (float32, rows x cols, row stride lds, cols padded to whole vectors in s) -> bfloat16
// with the pair along the rows, [row pair][lds][2], a zero row completing an odd count: X^T as
// pv_tile's first operand (P^T dO, dS^T Q) with p_row = 2, p_pair = 2 * lds.
VITA_AVX512BF16 void pack_row_pairs(const float* s, int64_t lds, int64_t rows, int64_t cols, bf16_bits* x) {
  for (int64_t i = 0; i < rows; i += 2) {
    const float* r0 = s + i * lds;
    const float* r1 = r0 + lds;
    for (int64_t j = 0; j < cols; j += 16) {
      const __m512i lo = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(r0 + j)));
      const __m512i hi = i + 1 < rows ? _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(r1 + j)))
                                      : _mm512_setzero_si512();
      _mm512_storeu_si512(x + (i / 2 * lds + j) * 2, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
    }
  }
}

// acc (rows x dim, row stride ldacc) -> bfloat16 rows of dst (row stride ldd), rounded to nearest even.
VITA_AVX512BF16 void store_rows_bf16(const float* acc, int64_t ldacc, int64_t rows, int64_t dim, at::BFloat16* dst,
                                     int64_t ldd) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t c = 0; c < dim; c += 16) {
      const __mmask16 mask = static_cast<__mmask16>((1u << std::min<int64_t>(16, dim - c)) - 1);
      const __m256i v = (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(acc + i * ldacc + c));
      _mm256_mask_storeu_epi16(dst + i * ldd + c, mask, v);
    }
}

// Forward in bfloat16 (d even): out (bfloat16) and lse (float32); the structure of forward_kernel.
VITA_AVX512BF16 void forward_kernel_bf16_dot(const Inputs& in, at::Tensor& out, at::Tensor& lse) {
  const int64_t frames = in.q.size(0), heads = in.q.size(1), tokens = in.q.size(2), dim = in.q.size(3);
  const auto sources = make_sources<at::BFloat16>(in);
  const auto blocks = plan_blocks(sources);
  const int64_t bm = query_block(tokens);
  const int64_t qblocks = (tokens + bm - 1) / bm;
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  const auto* q = reinterpret_cast<const bf16_bits*>(in.q.data_ptr<at::BFloat16>());
  const int64_t sq_f = in.q.stride(0), sq_h = in.q.stride(1), sq_l = in.q.stride(2);
  auto* o = out.data_ptr<at::BFloat16>();
  float* lse_ptr = lse.data_ptr<float>();
  const int64_t pairs_d = dim / 2, dpad = (dim + 15) / 16 * 16;
  int64_t keys = 0, widest = 0;
  for (const auto& src : sources) keys += src.rows;
  for (const auto& block : blocks) widest = std::max(widest, block.width);
  const int64_t groups_max = (widest + 15) / 16, ldp = (widest + 31) / 32 * 32;
  at::parallel_for(0, frames * heads * qblocks, grain_for(bm, keys, dim), [&](int64_t begin, int64_t end) {
    const int64_t lds = groups_max * 16;
    std::vector<float> s_buf(bm * lds), acc(bm * dpad), m(bm), l(bm), alpha(bm);
    std::vector<bf16_bits> kpack(groups_max * pairs_d * 32), vpack((ldp / 2) * dpad * 2), pb(bm * ldp);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t fh = task / qblocks, qb = task % qblocks;
      const int64_t f = fh / heads, h = fh % heads;
      const int64_t m0 = qb * bm, rows = std::min(bm, tokens - m0);
      const bf16_bits* qt = q + f * sq_f + h * sq_h + m0 * sq_l;
      std::fill(m.begin(), m.end(), -std::numeric_limits<float>::infinity());
      std::fill(l.begin(), l.end(), 0.0f);
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (const auto& block : blocks) {
        const int64_t groups = (block.width + 15) / 16, kpairs = (block.width + 1) / 2;
        std::fill(kpack.begin(), kpack.end(), bf16_bits(0));
        std::fill(vpack.begin(), vpack.end(), bf16_bits(0));
        for (const auto& piece : block.pieces) {
          const at::BFloat16 *kp, *vp;
          piece_ptrs(sources[piece.source], piece, f, h, &kp, &vp);
          pack_lanes(bits_of(kp), sources[piece.source].k_row, piece.n, piece.col, pairs_d, kpack.data());
          pack_reduction(bits_of(vp), sources[piece.source].v_row, piece.n, piece.col, dim, dpad, vpack.data());
        }
        qk_product(qt, sq_l, rows, kpack.data(), groups, pairs_d, s_buf.data(), lds, scale);  // S = scale * Q K^T
        softmax_step(s_buf.data(), rows, block.width, lds, m.data(), l.data(), alpha.data());
        if (&block != &blocks.front()) scale_rows(acc.data(), rows, dpad, dpad, alpha.data());
        rows_to_bf16(s_buf.data(), lds, rows, block.width, pb.data(), ldp);
        pv_product(pb.data(), ldp, 2, rows, vpack.data(), dpad, kpairs, acc.data(), dpad);  // acc += P V
      }
      at::BFloat16* dst = o + (fh * tokens + m0) * dim;  // out is contiguous
      for (int64_t i = 0; i < rows; ++i) {
        const float inv = 1.0f / l[i];
        lse_ptr[fh * tokens + m0 + i] = m[i] + std::log(l[i]);
        for (int64_t c = 0; c < dim; ++c) dst[i * dim + c] = at::BFloat16(acc[i * dpad + c] * inv);
      }
    }
  });
}
#endif  // VITA_X86_ISAS

// -- backward -------------------------------------------------------------------------------------

// Per-frame partial dk/dv of the shared sources (index 1 local, 2 global; the others undefined),
// (frames, heads, n, dim) in the accumulation type, summed by sum_shared_partials.
struct SharedPartials {
  at::Tensor dk[4], dv[4];
};

SharedPartials shared_partials(const Inputs& in, at::ScalarType acc_type) {
  const int64_t frames = in.q.size(0), heads = in.q.size(1), dim = in.q.size(3);
  const int64_t n[3] = {0, in.kl ? in.kl->size(2) : 0, in.kg ? in.kg->size(1) : 0};
  const auto opts = in.q.options().dtype(acc_type).memory_format(at::MemoryFormat::Contiguous);
  SharedPartials parts;
  for (int s = 1; s <= 2; ++s) {
    if (n[s] == 0) continue;
    parts.dk[s] = at::empty({frames, heads, n[s], dim}, opts);
    parts.dv[s] = at::empty({frames, heads, n[s], dim}, opts);
  }
  return parts;
}

// grads[3..6] = the partials summed over the frames sharing them (a video's frames, or all), in
// frame order, in Acc; then stored as Out.
template <typename Acc, typename Out>
void sum_shared_partials(const Inputs& in, const SharedPartials& parts, std::vector<at::Tensor>& grads) {
  const int64_t frames = in.q.size(0);
  auto reduce = [&](const at::Tensor& part, at::Tensor& dst, int64_t per_group) {
    const Acc* src = part.data_ptr<Acc>();
    Out* d = dst.data_ptr<Out>();
    const int64_t row = part.numel() / frames;  // one frame's partial
    at::parallel_for(0, (frames / per_group) * row, 1 << 15, [&](int64_t begin, int64_t end) {
      for (int64_t idx = begin; idx < end; ++idx) {
        const int64_t g = idx / row, e = idx % row;
        Acc sum = 0;
        for (int64_t t = 0; t < per_group; ++t) sum += src[(g * per_group + t) * row + e];
        d[idx] = static_cast<Out>(sum);
      }
    });
  };
  if (parts.dk[1].defined()) {
    const int64_t per_video = frames / in.kl->size(0);
    reduce(parts.dk[1], grads[3], per_video);
    reduce(parts.dv[1], grads[4], per_video);
  }
  if (parts.dk[2].defined()) {
    reduce(parts.dk[2], grads[5], frames);
    reduce(parts.dv[2], grads[6], frames);
  }
}

template <typename T>
void backward_kernel(const at::Tensor& grad_out, const Inputs& in, const at::Tensor& out, const at::Tensor& lse,
                     std::vector<at::Tensor>& grads) {
  const int64_t frames = in.q.size(0), heads = in.q.size(1), tokens = in.q.size(2), dim = in.q.size(3);
  const auto sources = make_sources<T>(in);
  const auto blocks = plan_blocks(sources);
  const int64_t bm = query_block(tokens);
  const T scale = T(1) / std::sqrt(static_cast<T>(dim));
  const T* q = in.q.data_ptr<T>();
  const int64_t sq_f = in.q.stride(0), sq_h = in.q.stride(1), sq_l = in.q.stride(2);
  const T* go = grad_out.data_ptr<T>();
  const int64_t sg_f = grad_out.stride(0), sg_h = grad_out.stride(1), sg_l = grad_out.stride(2);
  const T* o = out.data_ptr<T>();
  const int64_t so_f = out.stride(0), so_h = out.stride(1), so_l = out.stride(2);
  const T* lse_ptr = lse.data_ptr<T>();
  const int64_t sl_f = lse.stride(0), sl_h = lse.stride(1), sl_l = lse.stride(2);

  // Per-(frame, head) destinations of each source's dk/dv: own and summary go straight to the
  // outputs, local and global to per-frame partials summed afterwards.
  const SharedPartials parts = shared_partials(in, in.q.scalar_type());
  auto ptr = [](const at::Tensor& t) { return t.defined() ? t.data_ptr<T>() : nullptr; };
  T* dq = grads[0].data_ptr<T>();
  T* dk_dst[4] = {ptr(grads[1]), ptr(parts.dk[1]), ptr(parts.dk[2]), in.ks ? ptr(grads[7]) : nullptr};
  T* dv_dst[4] = {ptr(grads[2]), ptr(parts.dv[1]), ptr(parts.dv[2]), in.ks ? ptr(grads[8]) : nullptr};
  const int64_t rows_of[4] = {tokens, in.kl ? in.kl->size(2) : 0, in.kg ? in.kg->size(1) : 0, 1};

  int64_t keys = 0;
  for (const auto& src : sources) keys += src.rows;
  at::parallel_for(0, frames * heads, grain_for(4 * tokens, keys, dim), [&](int64_t begin, int64_t end) {
    std::vector<T> s_buf(bm * kKeyBlock), dp_buf(bm * kKeyBlock), delta(bm), lse_rows(bm);
    for (int64_t fh = begin; fh < end; ++fh) {
      const int64_t f = fh / heads, h = fh % heads;
      for (int64_t m0 = 0; m0 < tokens; m0 += bm) {
        const int64_t rows = std::min(bm, tokens - m0);
        const T* qt = q + f * sq_f + h * sq_h + m0 * sq_l;
        const T* got = go + f * sg_f + h * sg_h + m0 * sg_l;
        T* dqt = dq + (fh * tokens + m0) * dim;
        row_dots<T, T>(got, sg_l, o + f * so_f + h * so_h + m0 * so_l, so_l, rows, dim, delta.data());
        for (int64_t i = 0; i < rows; ++i) lse_rows[i] = lse_ptr[f * sl_f + h * sl_h + (m0 + i) * sl_l];
        for (const auto& block : blocks) {
          const int64_t ld = block.width;
          for (const auto& piece : block.pieces) {
            const auto& src = sources[piece.source];
            const T *kp, *vp;
            piece_ptrs(src, piece, f, h, &kp, &vp);
            // S = scale * Q K^T and dP = dO V^T, columns of this piece
            gemm<T>(true, false, piece.n, rows, dim, scale, kp, ld_of<T>(src.k_row, piece.n, dim), qt, sq_l, T(0),
                    s_buf.data() + piece.col, ld);
            gemm<T>(true, false, piece.n, rows, dim, T(1), vp, ld_of<T>(src.v_row, piece.n, dim), got, sg_l, T(0),
                    dp_buf.data() + piece.col, ld);
          }
          // P = exp(S - lse), dS = P * (dP - delta) * scale
          backward_probs(s_buf.data(), dp_buf.data(), rows, block.width, ld, lse_rows.data(), delta.data(), scale);
          for (const auto& piece : block.pieces) {
            const auto& src = sources[piece.source];
            const T *kp, *vp;
            piece_ptrs(src, piece, f, h, &kp, &vp);
            const int64_t dst_off = (fh * rows_of[src.index] + piece.start) * dim;
            T* dk = dk_dst[src.index] + dst_off;
            T* dv = dv_dst[src.index] + dst_off;
            // dV += P^T dO, dK += dS^T Q, dQ += dS K; the first contribution overwrites (beta = 0):
            // every key row is in exactly one piece, seen first by the first query block
            const T beta_kv = m0 == 0 ? T(0) : T(1);
            const T beta_q = &block == &blocks.front() && &piece == &block.pieces.front() ? T(0) : T(1);
            gemm<T>(false, true, dim, piece.n, rows, T(1), got, sg_l, s_buf.data() + piece.col, ld, beta_kv, dv, dim);
            gemm<T>(false, true, dim, piece.n, rows, T(1), qt, sq_l, dp_buf.data() + piece.col, ld, beta_kv, dk, dim);
            gemm<T>(false, false, dim, rows, piece.n, T(1), kp, ld_of<T>(src.k_row, piece.n, dim),
                    dp_buf.data() + piece.col, ld, beta_q, dqt, dim);
          }
        }
      }
    }
  });

  sum_shared_partials<T, T>(in, parts, grads);
}

#if VITA_X86_ISAS
// Backward in bfloat16 (d even) with the dot products; the structure of backward_kernel, with
// float32 accumulators per task: dQ of the query block, dK and dV of every key of the (frame,
// head). S = scale Q K^T and dP = dO V^T are qk_products (K and V packed as lanes); P and dS
// (float32, from backward_probs) are rounded to bfloat16 only as operands of the pv_products
// dQ += dS K (K packed along the reduction), dV += P^T dO and dK += dS^T Q (P^T and dS^T with the
// pair along the queries, dO and Q packed along the reduction), as torch's and FlashAttention's
// bfloat16 backwards do. Own-token and summary gradients are rounded to bfloat16 once at the end
// of the task; the local/global ones go to float32 partials, summed in float32.
VITA_AVX512BF16 void backward_kernel_bf16_dot(const at::Tensor& grad_out, const Inputs& in, const at::Tensor& out,
                                              const at::Tensor& lse, std::vector<at::Tensor>& grads) {
  using BF = at::BFloat16;
  const int64_t frames = in.q.size(0), heads = in.q.size(1), tokens = in.q.size(2), dim = in.q.size(3);
  const auto sources = make_sources<BF>(in);
  const auto blocks = plan_blocks(sources);
  const int64_t bm = query_block(tokens);
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  const BF* q = in.q.data_ptr<BF>();
  const int64_t sq_f = in.q.stride(0), sq_h = in.q.stride(1), sq_l = in.q.stride(2);
  const BF* go = grad_out.data_ptr<BF>();
  const int64_t sg_f = grad_out.stride(0), sg_h = grad_out.stride(1), sg_l = grad_out.stride(2);
  const BF* o = out.data_ptr<BF>();
  const int64_t so_f = out.stride(0), so_h = out.stride(1), so_l = out.stride(2);
  const float* lse_ptr = lse.data_ptr<float>();
  const int64_t sl_f = lse.stride(0), sl_h = lse.stride(1), sl_l = lse.stride(2);

  const SharedPartials parts = shared_partials(in, at::kFloat);
  BF* dq = grads[0].data_ptr<BF>();
  // dk/dv destinations per source: bfloat16 outputs (own, summary) or float32 partials (local, global)
  BF* dk_out[4] = {grads[1].data_ptr<BF>(), nullptr, nullptr, in.ks ? grads[7].data_ptr<BF>() : nullptr};
  BF* dv_out[4] = {grads[2].data_ptr<BF>(), nullptr, nullptr, in.ks ? grads[8].data_ptr<BF>() : nullptr};
  float* dk_part[4] = {nullptr, nullptr, nullptr, nullptr}, *dv_part[4] = {nullptr, nullptr, nullptr, nullptr};
  for (int s = 1; s <= 2; ++s)
    if (parts.dk[s].defined()) dk_part[s] = parts.dk[s].data_ptr<float>(), dv_part[s] = parts.dv[s].data_ptr<float>();
  const int64_t rows_of[4] = {tokens, in.kl ? in.kl->size(2) : 0, in.kg ? in.kg->size(1) : 0, 1};

  const int64_t pairs_d = dim / 2, dpad = (dim + 15) / 16 * 16;
  int64_t keys = 0, widest = 0;
  std::vector<int64_t> block_key0;  // first key of each block: its rows of the dk/dv accumulators
  for (const auto& block : blocks) {
    block_key0.push_back(keys);
    keys += block.width;
    widest = std::max(widest, block.width);
  }
  const int64_t groups_max = (widest + 15) / 16, lds = groups_max * 16, ldp = (widest + 31) / 32 * 32;
  at::parallel_for(0, frames * heads, grain_for(4 * tokens, keys, dim), [&](int64_t begin, int64_t end) {
    std::vector<float> s_buf(bm * lds), dp_buf(bm * lds), delta(bm), lse_rows(bm), dq_acc(bm * dpad);
    std::vector<float> dk_acc(keys * dpad), dv_acc(keys * dpad);
    std::vector<bf16_bits> k_lanes(groups_max * pairs_d * 32), v_lanes(groups_max * pairs_d * 32);
    std::vector<bf16_bits> k_red((ldp / 2) * dpad * 2), q_red((bm + 1) / 2 * dpad * 2), do_red((bm + 1) / 2 * dpad * 2);
    std::vector<bf16_bits> ds_rows(bm * ldp), p_pairs((bm + 1) / 2 * lds * 2), ds_pairs((bm + 1) / 2 * lds * 2);
    for (int64_t fh = begin; fh < end; ++fh) {
      const int64_t f = fh / heads, h = fh % heads;
      std::fill(dk_acc.begin(), dk_acc.end(), 0.0f);
      std::fill(dv_acc.begin(), dv_acc.end(), 0.0f);
      for (int64_t m0 = 0; m0 < tokens; m0 += bm) {
        const int64_t rows = std::min(bm, tokens - m0), qpairs = (rows + 1) / 2;
        const BF* qt = q + f * sq_f + h * sq_h + m0 * sq_l;
        const BF* got = go + f * sg_f + h * sg_h + m0 * sg_l;
        row_dots<BF, float>(got, sg_l, o + f * so_f + h * so_h + m0 * so_l, so_l, rows, dim, delta.data());
        for (int64_t i = 0; i < rows; ++i) lse_rows[i] = lse_ptr[f * sl_f + h * sl_h + (m0 + i) * sl_l];
        std::fill(q_red.begin(), q_red.end(), bf16_bits(0));
        std::fill(do_red.begin(), do_red.end(), bf16_bits(0));
        pack_reduction(bits_of(qt), sq_l, rows, 0, dim, dpad, q_red.data());
        pack_reduction(bits_of(got), sg_l, rows, 0, dim, dpad, do_red.data());
        std::fill(dq_acc.begin(), dq_acc.end(), 0.0f);
        for (size_t b = 0; b < blocks.size(); ++b) {
          const KeyBlock& block = blocks[b];
          const int64_t groups = (block.width + 15) / 16, kpairs = (block.width + 1) / 2;
          std::fill(k_lanes.begin(), k_lanes.end(), bf16_bits(0));
          std::fill(v_lanes.begin(), v_lanes.end(), bf16_bits(0));
          std::fill(k_red.begin(), k_red.end(), bf16_bits(0));
          for (const auto& piece : block.pieces) {
            const auto& src = sources[piece.source];
            const BF *kp, *vp;
            piece_ptrs(src, piece, f, h, &kp, &vp);
            pack_lanes(bits_of(kp), src.k_row, piece.n, piece.col, pairs_d, k_lanes.data());
            pack_lanes(bits_of(vp), src.v_row, piece.n, piece.col, pairs_d, v_lanes.data());
            pack_reduction(bits_of(kp), src.k_row, piece.n, piece.col, dim, dpad, k_red.data());
          }
          qk_product(bits_of(qt), sq_l, rows, k_lanes.data(), groups, pairs_d, s_buf.data(), lds, scale);  // S
          qk_product(bits_of(got), sg_l, rows, v_lanes.data(), groups, pairs_d, dp_buf.data(), lds, 1.0f);  // dP
          // P = exp(S - lse), dS = P * (dP - delta) * scale, in float32
          backward_probs(s_buf.data(), dp_buf.data(), rows, block.width, lds, lse_rows.data(), delta.data(), scale);
          rows_to_bf16(dp_buf.data(), lds, rows, block.width, ds_rows.data(), ldp);
          pack_row_pairs(s_buf.data(), lds, rows, block.width, p_pairs.data());
          pack_row_pairs(dp_buf.data(), lds, rows, block.width, ds_pairs.data());
          pv_product(ds_rows.data(), ldp, 2, rows, k_red.data(), dpad, kpairs, dq_acc.data(), dpad);  // dQ += dS K
          float* dv_block = dv_acc.data() + block_key0[b] * dpad;
          float* dk_block = dk_acc.data() + block_key0[b] * dpad;
          pv_product(p_pairs.data(), 2, 2 * lds, block.width, do_red.data(), dpad, qpairs, dv_block, dpad);  // dV += P^T dO
          pv_product(ds_pairs.data(), 2, 2 * lds, block.width, q_red.data(), dpad, qpairs, dk_block, dpad);  // dK += dS^T Q
        }
        store_rows_bf16(dq_acc.data(), dpad, rows, dim, dq + (fh * tokens + m0) * dim, dim);  // gradients are contiguous
      }
      for (size_t b = 0; b < blocks.size(); ++b) {
        for (const auto& piece : blocks[b].pieces) {
          const int idx = sources[piece.source].index;
          const int64_t dst_off = (fh * rows_of[idx] + piece.start) * dim;
          const float* dk_rows = dk_acc.data() + (block_key0[b] + piece.col) * dpad;
          const float* dv_rows = dv_acc.data() + (block_key0[b] + piece.col) * dpad;
          if (dk_part[idx] != nullptr) {
            for (int64_t r = 0; r < piece.n; ++r) {
              std::memcpy(dk_part[idx] + dst_off + r * dim, dk_rows + r * dpad, dim * sizeof(float));
              std::memcpy(dv_part[idx] + dst_off + r * dim, dv_rows + r * dpad, dim * sizeof(float));
            }
          } else {
            store_rows_bf16(dk_rows, dpad, piece.n, dim, dk_out[idx] + dst_off, dim);
            store_rows_bf16(dv_rows, dpad, piece.n, dim, dv_out[idx] + dst_off, dim);
          }
        }
      }
    }
  });
  sum_shared_partials<float, BF>(in, parts, grads);
}
#endif  // VITA_X86_ISAS

// -- ops ------------------------------------------------------------------------------------------

// bfloat16 with AVX-512 BF16 and an even head dim: forward_kernel_bf16_dot and
// backward_kernel_bf16_dot. Otherwise the inputs are widened to float32 once (a pass over
// memory, small next to the attention's GEMMs) and the float32 kernel runs, accumulating in
// float32 (the local/global gradient sums too); outputs are rounded to bfloat16 at the end, lse
// stays float32.
std::optional<at::Tensor> widen(const std::optional<at::Tensor>& t) {
  if (!t) return std::nullopt;
  return t->to(at::kFloat);
}

std::tuple<at::Tensor, at::Tensor> prompt_attention_fwd(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const std::optional<at::Tensor>& k_local,
    const std::optional<at::Tensor>& v_local, const std::optional<at::Tensor>& k_global,
    const std::optional<at::Tensor>& v_global, const std::optional<at::Tensor>& k_summary,
    const std::optional<at::Tensor>& v_summary) {
#if VITA_X86_ISAS
  if (bf16_dot_applies(q)) {
    const Inputs in = prepare(q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary);
    at::Tensor out = at::empty(q.sizes(), q.options().memory_format(at::MemoryFormat::Contiguous));
    at::Tensor lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
    if (out.numel() > 0) forward_kernel_bf16_dot(in, out, lse);
    ++bf16_dot_forwards;
    return {out, lse};
  }
#endif
  if (q.scalar_type() == at::kBFloat16) {
    check(q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary);
    auto [out, lse] = prompt_attention_fwd(q.to(at::kFloat), k.to(at::kFloat), v.to(at::kFloat), widen(k_local),
                                           widen(v_local), widen(k_global), widen(v_global), widen(k_summary),
                                           widen(v_summary));
    return {out.to(at::kBFloat16), lse};
  }
  const Inputs in = prepare(q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary);
  at::Tensor out = at::empty(q.sizes(), q.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options());
  if (out.numel() == 0) return {out, lse};
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "prompt_attention_fwd", [&] { forward_kernel<scalar_t>(in, out, lse); });
  return {out, lse};
}

std::vector<at::Tensor> prompt_attention_bwd(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& k_local, const std::optional<at::Tensor>& v_local,
    const std::optional<at::Tensor>& k_global, const std::optional<at::Tensor>& v_global,
    const std::optional<at::Tensor>& k_summary, const std::optional<at::Tensor>& v_summary, const at::Tensor& out,
    const at::Tensor& lse) {
  if (q.scalar_type() == at::kBFloat16 && !bf16_dot_applies(q)) {
    check(q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary);
    TORCH_CHECK(grad_out.scalar_type() == q.scalar_type() && out.scalar_type() == q.scalar_type(),
                "prompt_attention_cpu: grad_out and out must have q's dtype");
    auto grads = prompt_attention_bwd(grad_out.to(at::kFloat), q.to(at::kFloat), k.to(at::kFloat), v.to(at::kFloat),
                                      widen(k_local), widen(v_local), widen(k_global), widen(v_global),
                                      widen(k_summary), widen(v_summary), out.to(at::kFloat), lse.to(at::kFloat));
    for (auto& g : grads) g = g.to(at::kBFloat16);
    return grads;
  }
  const Inputs in = prepare(q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary);
  TORCH_CHECK(grad_out.sizes() == q.sizes() && out.sizes() == q.sizes(),
              "prompt_attention_cpu: grad_out and out must match q");
  TORCH_CHECK(grad_out.scalar_type() == q.scalar_type() && out.scalar_type() == q.scalar_type(),
              "prompt_attention_cpu: grad_out and out must have q's dtype");
  TORCH_CHECK(lse.dim() == 3 && lse.size(0) == q.size(0) && lse.size(1) == q.size(1) && lse.size(2) == q.size(2),
              "prompt_attention_cpu: lse must be (frames, heads, tokens)");
  const auto opts = q.options().memory_format(at::MemoryFormat::Contiguous);
  // The kernel writes every element of every gradient (first contributions with beta = 0, shared
  // sources by the reduction); without queries nothing depends on the inputs: zeros.
  const bool no_queries = q.numel() == 0;
  auto alloc = [&](at::IntArrayRef sizes) { return no_queries ? at::zeros(sizes, opts) : at::empty(sizes, opts); };
  auto like = [&](const std::optional<at::Tensor>& t) { return t ? alloc(t->sizes()) : at::empty({0}, q.options()); };
  std::vector<at::Tensor> grads{alloc(q.sizes()), alloc(q.sizes()), alloc(q.sizes()), like(k_local), like(v_local),
                                like(k_global), like(v_global), like(k_summary), like(v_summary)};
  if (no_queries) return grads;
#if VITA_X86_ISAS
  if (q.scalar_type() == at::kBFloat16) {  // bf16_dot_applies (else widened above)
    backward_kernel_bf16_dot(blas_ready(grad_out), in, blas_ready(out), lse.to(at::kFloat), grads);
    ++bf16_dot_backwards;
    return grads;
  }
#endif
  const at::Tensor g = blas_ready(grad_out), o = blas_ready(out), l = lse.to(q.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "prompt_attention_bwd",
                             [&] { backward_kernel<scalar_t>(g, in, o, l, grads); });
  return grads;
}

std::string backend_info() {
#if VITA_WEAK_BLAS
  const bool blas = sgemm_ != nullptr && dgemm_ != nullptr;
#else
  const bool blas = false;
#endif
  return std::string("gemm=") + (blas ? "blas" : "loops") +
         " bf16=" + (use_bf16_dot() ? "avx512bf16" : cpu_has_bf16_dot() ? "widened (dot products off)" : "widened");
}

}  // namespace
}  // namespace vita_clip_cpu

TORCH_LIBRARY(vita_clip_cpu, m) {
  m.def(
      "prompt_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor? k_local, Tensor? v_local, Tensor? k_global, "
      "Tensor? v_global, Tensor? k_summary, Tensor? v_summary) -> (Tensor, Tensor)");
  m.def(
      "prompt_attention_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor? k_local, Tensor? v_local, "
      "Tensor? k_global, Tensor? v_global, Tensor? k_summary, Tensor? v_summary, Tensor out, Tensor lse) -> Tensor[]");
  m.def("backend_info() -> str", &vita_clip_cpu::backend_info);
  m.def("set_bf16_dot(bool enabled) -> bool", &vita_clip_cpu::set_bf16_dot);
  m.def("bf16_dot_calls() -> int[]", &vita_clip_cpu::bf16_dot_calls);
}

TORCH_LIBRARY_IMPL(vita_clip_cpu, CPU, m) {
  m.impl("prompt_attention_fwd", &vita_clip_cpu::prompt_attention_fwd);
  m.impl("prompt_attention_bwd", &vita_clip_cpu::prompt_attention_bwd);
}

// Importing the shared object as a Python module runs the registrations above.
static struct PyModuleDef vita_clip_cpu_module = {PyModuleDef_HEAD_INIT, "_prompt_attention_cpu",
                                                  "vita_clip_cpu C++ ops (torch.ops.vita_clip_cpu)", -1, nullptr};

PyMODINIT_FUNC PyInit__prompt_attention_cpu(void) { return PyModule_Create(&vita_clip_cpu_module); }
