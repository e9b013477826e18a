// Native CPU kernels of one PertOPT step (Algorithm 1 of Wang et al., AISTATS 2020).
//
// The same arithmetic as the TensorFlow/XLA ops of keras_pacgen/perturbation.py, one pass over
// each variable instead of several (see keras_pacgen/native/__init__.py for why). Built and
// loaded by that module; float32 variables on the CPU only.
//
//   PacgenStatistics:  max_i |d[i]| and ||w_new - w_old||^2, d = g^2 - h (h = h_{t+1}) or
//                      d = h - h_old when h_old is given (beta1 = 0), and whether g is finite.
//   PacgenNextHessian: h_{t+1} = h_t + (g^2 - h_t)(1 - beta1) (Algorithm 1 line 14), with
//                      max_i |g^2 - h_t| (1 - beta1), ||w_new - w_old||^2 and whether g is
//                      finite.
//   PacgenPerturb:     sigma (bfloat16) and w_new + u, u = sigma * r (Algorithm 1 lines 7-11).
//
// Floating-point contraction is off (-ffp-contract=off) so every product and sum rounds as the
// separate TensorFlow ops do. Partial reductions are combined in a fixed order: the result does
// not depend on the number of threads, so replicas stay identical.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

namespace keras_pacgen {
namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::shape_inference::InferenceContext;

constexpr int kLanes = 16;          // independent accumulators: the loops vectorise
constexpr int64_t kBlock = 16384;   // elements per partial result of a reduction
constexpr float kFloatMax = 3.4028234663852886e38f;

// lowbias32 (C. Wellons), as keras_pacgen.noise.mix32.
inline uint32_t Mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

// float32 -> bfloat16, round to nearest even (as a TensorFlow/XLA cast); NaN stays NaN.
inline uint16_t ToBfloat16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>((u & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FC0u : rounded);
}

inline float FromBfloat16(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// Partial result of a reduction over a block of elements.
struct Partial {
  float max = 0.0f;     // max |d|; NaN once any |d| is NaN (as tf.reduce_max)
  double sum = 0.0;     // sum of (w_new - w_old)^2
  bool finite = true;   // every g finite
  void Max(float a) { max = a > max || a != a ? a : max; }  // a NaN max stays
};

// d[i] of a reduction. kind 0: d = g^2 - h; kind 1: d = h - h_old; kind 2: d = g^2 - h, and
// h_next[i] = h[i] + d * c (h_{t+1}, rounded as TensorFlow's Square, Sub, Mul and AddV2 do).
template <int kind>
inline float Difference(const float* __restrict__ g, const float* __restrict__ h,
                        const float* __restrict__ h_old, float c, float* __restrict__ h_next,
                        int64_t i) {
  const float d = kind == 1 ? h[i] - h_old[i] : g[i] * g[i] - h[i];
  if (kind == 2) h_next[i] = h[i] + d * c;
  return d;
}

// One block of a reduction: max |d|, the sum of (w_new - w_old)^2, whether g is finite.
template <int kind>
void ReduceBlock(const float* __restrict__ g, const float* __restrict__ h,
                 const float* __restrict__ h_old, float c, float* __restrict__ h_next,
                 const float* __restrict__ w_new, const float* __restrict__ w_old,
                 int64_t begin, int64_t end, Partial* out) {
  float lane_max[kLanes] = {0.0f};
  float lane_sum[kLanes] = {0.0f};
  float lane_bad[kLanes] = {0.0f};
  int64_t i = begin;
  for (; i + kLanes <= end; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const float a = std::fabs(Difference<kind>(g, h, h_old, c, h_next, i + j));
      lane_max[j] = a > lane_max[j] || a != a ? a : lane_max[j];  // NaN wins, as tf.reduce_max
      const float e = w_new[i + j] - w_old[i + j];
      lane_sum[j] += e * e;
      lane_bad[j] += g[i + j] - g[i + j];  // 0, or NaN from then on once g is Inf or NaN
    }
  }
  Partial p;
  for (; i < end; ++i) {
    p.Max(std::fabs(Difference<kind>(g, h, h_old, c, h_next, i)));
    const float e = w_new[i] - w_old[i];
    p.sum += static_cast<double>(e) * e;
    p.finite = p.finite && g[i] - g[i] == 0.0f;
  }
  for (int j = 0; j < kLanes; ++j) {
    p.Max(lane_max[j]);
    p.sum += lane_sum[j];
    p.finite = p.finite && lane_bad[j] == 0.0f;
  }
  *out = p;
}

// Runs `block(begin, end, &partial)` over fixed blocks on the op's CPU threads and combines the
// partial results in block order.
template <typename Block>
Partial BlockReduce(OpKernelContext* ctx, int64_t n, const Block& block) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<Partial> partials(blocks);
  const auto* threads = ctx->device()->tensorflow_cpu_worker_threads();
  ::tensorflow::Shard(threads->num_threads, threads->workers, blocks, kBlock * 4,
                      [&](int64_t first, int64_t last) {
                        for (int64_t b = first; b < last; ++b) {
                          block(b * kBlock, std::min(n, (b + 1) * kBlock), &partials[b]);
                        }
                      });
  Partial total;
  for (const Partial& p : partials) {
    total.Max(p.max);
    total.sum += p.sum;
    total.finite = total.finite && p.finite;
  }
  return total;
}

// The outputs of a reduction: max |d|, sum of (w_new - w_old)^2, and whether g is finite.
void SetOutputs(OpKernelContext* ctx, int first, const Partial& p, float max_scale) {
  Tensor* out[3] = {nullptr, nullptr, nullptr};
  for (int k = 0; k < 3; ++k) {
    OP_REQUIRES_OK(ctx, ctx->allocate_output(first + k, TensorShape({}), &out[k]));
  }
  out[0]->scalar<float>()() = p.max * max_scale;
  out[1]->scalar<float>()() = static_cast<float>(p.sum);
  out[2]->scalar<bool>()() = p.finite;
}

// Whether inputs [first, last) have the same number of elements; sets an error if not.
bool SameSize(OpKernelContext* ctx, int first, int last) {
  for (int k = first + 1; k < last; ++k) {
    if (ctx->input(k).NumElements() != ctx->input(first).NumElements()) {
      ctx->CtxFailure(::tensorflow::errors::InvalidArgument(
          "keras_pacgen native kernel ", ctx->op_kernel().type_string(), ": input ", k,
          " has ", ctx->input(k).NumElements(), " elements, input ", first, " has ",
          ctx->input(first).NumElements()));
      return false;
    }
  }
  return true;
}

class StatisticsOp : public OpKernel {
 public:
  explicit StatisticsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    // inputs: gradient, hessian, w_new, w_old, hessian_old (0 or 1 tensors)
    const int count = ctx->num_inputs();
    if (!SameSize(ctx, 0, count)) return;
    const float* g = ctx->input(0).flat<float>().data();
    const float* h = ctx->input(1).flat<float>().data();
    const float* w_new = ctx->input(2).flat<float>().data();
    const float* w_old = ctx->input(3).flat<float>().data();
    const float* h_old = count > 4 ? ctx->input(4).flat<float>().data() : nullptr;
    const int64_t n = ctx->input(0).NumElements();
    const Partial p = h_old == nullptr
        ? BlockReduce(ctx, n, [&](int64_t b, int64_t e, Partial* out) {
            ReduceBlock<0>(g, h, h_old, 0.0f, nullptr, w_new, w_old, b, e, out);
          })
        : BlockReduce(ctx, n, [&](int64_t b, int64_t e, Partial* out) {
            ReduceBlock<1>(g, h, h_old, 0.0f, nullptr, w_new, w_old, b, e, out);
          });
    SetOutputs(ctx, 0, p, 1.0f);
  }
};

class NextHessianOp : public OpKernel {
 public:
  explicit NextHessianOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("rate", &rate_));
  }

  void Compute(OpKernelContext* ctx) override {
    if (!SameSize(ctx, 0, 4)) return;
    const Tensor& h = ctx->input(1);
    const float* g = ctx->input(0).flat<float>().data();
    const float* w_new = ctx->input(2).flat<float>().data();
    const float* w_old = ctx->input(3).flat<float>().data();
    Tensor* h_next = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, h.shape(), &h_next));
    const float* hp = h.flat<float>().data();
    float* out = h_next->flat<float>().data();
    const float c = rate_;
    const Partial p = BlockReduce(ctx, h.NumElements(), [&](int64_t b, int64_t e, Partial* part) {
      ReduceBlock<2>(g, hp, nullptr, c, out, w_new, w_old, b, e, part);
    });
    SetOutputs(ctx, 1, p, c);
  }

 private:
  float rate_;
};

// sigma and w + u for elements [begin, end). kind 0: d = g^2 - h, kind 1: d = h - h_old.
template <int kind>
void PerturbRange(const float* __restrict__ g, const float* __restrict__ h,
                  const float* __restrict__ h_old, const float* __restrict__ w_new,
                  const float* __restrict__ w_kappa, uint16_t* __restrict__ sigma_out,
                  float* __restrict__ noisy_out, int64_t begin, int64_t end, float scale,
                  float inverse_norm, float kappa_scale, float epsilon, float eta,
                  float inverse_log_epoch, float threshold, uint32_t key) {
  for (int64_t i = begin; i < end; ++i) {
    const float gi = g[i];
    const float d = kind == 0 ? gi * gi - h[i] : h[i] - h_old[i];
    const float rho = std::fabs(d) * scale * inverse_norm;
    const float kappa_raw = kappa_scale * std::fabs(w_kappa[i]) + epsilon;
    const float kappa = kappa_raw < kFloatMax ? kappa_raw : kFloatMax;
    const float bound = std::sqrt(1.0f / (eta * (h[i] + rho * kappa))) * inverse_log_epoch;
    const float mask = std::fabs(gi) < threshold ? 1.0f : 0.0f;
    const float sigma = (bound < kappa || bound != bound ? bound : kappa) * mask;
    const uint16_t sigma_bits = ToBfloat16(sigma);
    sigma_out[i] = sigma_bits;
    const uint32_t bits = Mix32(static_cast<uint32_t>(i) + key);
    const float r = static_cast<float>(bits >> 16) * (1.0f / 32768.0f) - 1.0f;
    noisy_out[i] = w_new[i] + FromBfloat16(sigma_bits) * r;
  }
}

class PerturbOp : public OpKernel {
 public:
  explicit PerturbOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("scale", &scale_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("eta", &eta_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("epsilon", &epsilon_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("threshold", &threshold_));
  }

  void Compute(OpKernelContext* ctx) override {
    // inputs: gradient, hessian, w_new, w_kappa, scalars, key, hessian_old (0 or 1 tensors)
    const int count = ctx->num_inputs();
    if (!SameSize(ctx, 0, 4)) return;
    if (count > 6 && !SameSize(ctx, 6, 7)) return;
    OP_REQUIRES(ctx, count <= 6 || ctx->input(6).NumElements() == ctx->input(0).NumElements(),
                ::tensorflow::errors::InvalidArgument("PacgenPerturb: h_old differs in size"));
    const auto scalars = ctx->input(4).flat<float>();
    OP_REQUIRES(ctx, scalars.size() == 3,
                ::tensorflow::errors::InvalidArgument("PacgenPerturb: 3 scalars expected"));
    const float inverse_norm = scalars(0), kappa_scale = scalars(1), inverse_log = scalars(2);
    const uint32_t key = ctx->input(5).scalar<uint32_t>()();
    const Tensor& w_new = ctx->input(2);
    Tensor* sigma = nullptr;
    Tensor* noisy = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, w_new.shape(), &sigma));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, w_new.shape(), &noisy));
    const float* g = ctx->input(0).flat<float>().data();
    const float* h = ctx->input(1).flat<float>().data();
    const float* wn = w_new.flat<float>().data();
    const float* wk = ctx->input(3).flat<float>().data();
    const float* h_old = count > 6 ? ctx->input(6).flat<float>().data() : nullptr;
    uint16_t* s = reinterpret_cast<uint16_t*>(sigma->flat<::tensorflow::bfloat16>().data());
    float* o = noisy->flat<float>().data();
    const float scale = scale_, eta = eta_, eps = epsilon_, thr = threshold_;
    const auto* threads = ctx->device()->tensorflow_cpu_worker_threads();
    ::tensorflow::Shard(threads->num_threads, threads->workers, w_new.NumElements(), 40,
                        [=](int64_t begin, int64_t end) {
                          if (h_old == nullptr) {
                            PerturbRange<0>(g, h, h_old, wn, wk, s, o, begin, end, scale,
                                            inverse_norm, kappa_scale, eps, eta, inverse_log,
                                            thr, key);
                          } else {
                            PerturbRange<1>(g, h, h_old, wn, wk, s, o, begin, end, scale,
                                            inverse_norm, kappa_scale, eps, eta, inverse_log,
                                            thr, key);
                          }
                        });
  }

 private:
  float scale_, eta_, epsilon_, threshold_;
};

::tensorflow::Status ScalarOutputs(InferenceContext* c) {
  for (int k = 0; k < c->num_outputs(); ++k) c->set_output(k, c->Scalar());
  return ::tensorflow::Status();
}

}  // namespace

REGISTER_OP("PacgenStatistics")
    .Input("gradient: float")
    .Input("hessian: float")
    .Input("w_new: float")
    .Input("w_old: float")
    .Input("hessian_old: N * float")
    .Attr("N: int >= 0 = 0")
    .Output("max_abs_difference: float")
    .Output("squared_distance: float")
    .Output("gradient_is_finite: bool")
    .SetShapeFn(ScalarOutputs);

REGISTER_OP("PacgenNextHessian")
    .Input("gradient: float")
    .Input("hessian: float")
    .Input("w_new: float")
    .Input("w_old: float")
    .Attr("rate: float")
    .Output("next_hessian: float")
    .Output("max_abs_change: float")
    .Output("squared_distance: float")
    .Output("gradient_is_finite: bool")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(1));
      for (int k = 1; k < 4; ++k) c->set_output(k, c->Scalar());
      return ::tensorflow::Status();
    });

REGISTER_OP("PacgenPerturb")
    .Input("gradient: float")
    .Input("hessian: float")
    .Input("w_new: float")
    .Input("w_kappa: float")
    .Input("scalars: float")
    .Input("key: uint32")
    .Input("hessian_old: N * float")
    .Attr("N: int >= 0 = 0")
    .Attr("scale: float")
    .Attr("eta: float")
    .Attr("epsilon: float")
    .Attr("threshold: float")
    .Output("sigma: bfloat16")
    .Output("noisy: float")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(2));
      c->set_output(1, c->input(2));
      return ::tensorflow::Status();
    });

REGISTER_KERNEL_BUILDER(Name("PacgenStatistics").Device(::tensorflow::DEVICE_CPU), StatisticsOp);
REGISTER_KERNEL_BUILDER(Name("PacgenNextHessian").Device(::tensorflow::DEVICE_CPU), NextHessianOp);
REGISTER_KERNEL_BUILDER(Name("PacgenPerturb").Device(::tensorflow::DEVICE_CPU), PerturbOp);

}  // namespace keras_pacgen
