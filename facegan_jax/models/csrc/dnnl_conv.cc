// oneDNN convolutions for facegan_jax's 4x4 layers, called from XLA:CPU through jax.ffi.
//
// One handler, `FaceganDnnlConv`, runs a 2D convolution (NHWC activations, HWIO weights,
// float32 or bfloat16 (all three operands the same type), square stride, the same padding on both sides of each axis) in one of three
// directions:
//   kind 0 forward:          a = src [N,H,W,I],       b = weights [KH,KW,I,O] -> dst [N,OH,OW,O]
//   kind 1 backward data:    a = diff_dst [N,OH,OW,O], b = weights [KH,KW,I,O] -> diff_src [N,H,W,I]
//   kind 2 backward weights: a = src [N,H,W,I],       b = diff_dst [N,OH,OW,O] -> diff_w [KH,KW,I,O]
// A second handler, `FaceganDnnlConvInfer`, is the inference forward with the bias added and,
// optionally, the ReLU applied inside the convolution (oneDNN post-op): src [N,H,W,I], weights
// [KH,KW,I,O], bias [O] -> relu?(conv + bias) [N,OH,OW,O]; float32 only (the FID network).
// Primitives are created once per shape and cached; weights are reordered to the layout the
// chosen implementation prefers on every call (they are small); activations stay NHWC. The
// scratchpad and the reordered weights live in per-thread buffers reused from call to call.
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

struct Plan {
  dnnl::primitive prim;
  dnnl::memory::desc user_w, prim_w;  // HWIO and the implementation's weight layout
  dnnl::memory::desc src, dst, scratch, bias;
  bool reorder_w = false;
};

std::mutex cache_mutex;
std::map<std::string, std::shared_ptr<Plan>> cache;

// The cache key of a primitive: its tag and integer settings, then the three shapes.
std::string Key(std::initializer_list<int64_t> head, const dnnl::memory::dims& src_d,
                const dnnl::memory::dims& w_d, const dnnl::memory::dims& dst_d) {
  std::string key;
  for (auto v : head) key += std::to_string(v) + ":";
  for (const auto* dims : {&src_d, &w_d, &dst_d})
    for (auto v : *dims) key += "," + std::to_string(v);
  return key;
}

// The cached plan of `key`, made (outside the lock) by `make` the first time.
template <class Make>
std::shared_ptr<Plan> Cached(const std::string& key, Make make) {
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  std::shared_ptr<Plan> plan = make();
  std::lock_guard<std::mutex> lock(cache_mutex);
  cache.emplace(key, plan);
  return plan;
}

// Fills the descriptors every plan has from a primitive descriptor `pd` whose weights are
// `prim_w` (the weights or their gradient).
template <class Pd>
void Describe(Plan& plan, const Pd& pd, const dnnl::memory::desc& prim_w,
              const dnnl::memory::desc& src, const dnnl::memory::desc& w_user,
              const dnnl::memory::desc& dst) {
  plan.src = src;
  plan.dst = dst;
  plan.user_w = w_user;
  plan.prim_w = prim_w;
  plan.scratch = pd.scratchpad_desc();
  plan.reorder_w = prim_w != w_user;
}

// This thread's buffer number `slot` (0: scratchpad, 1: reordered weights), at least `size`
// bytes, 64-byte aligned and reused by the next call: neither allocated nor zeroed per call
// (oneDNN writes before it reads both).
void* ThreadBuffer(int slot, size_t size) {
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  thread_local std::unique_ptr<void, Free> buffers[2];
  thread_local size_t capacity[2] = {0, 0};
  if (capacity[slot] < size) {
    size_t rounded = (size + 63) / 64 * 64;
    buffers[slot].reset(std::aligned_alloc(64, rounded));
    if (!buffers[slot]) throw std::bad_alloc();
    capacity[slot] = rounded;
  }
  return buffers[slot].get();
}

// The weights in the layout `plan`'s primitive wants: the user's HWIO memory itself, or this
// thread's weight buffer that `copy_in` fills with them by a reorder.
dnnl::memory PrimitiveWeights(const Plan& plan, dnnl::stream& strm, dnnl::memory& w_user,
                              bool copy_in) {
  if (!plan.reorder_w) return w_user;
  dnnl::memory w_prim(plan.prim_w, Engine(), ThreadBuffer(1, plan.prim_w.get_size()));
  if (copy_in) dnnl::reorder(w_user, w_prim).execute(strm, w_user, w_prim);
  return w_prim;
}

std::shared_ptr<Plan> MakePlan(int kind, dt type, dnnl::memory::dims src_d, dnnl::memory::dims w_d,
                               dnnl::memory::dims dst_d, int64_t stride, int64_t pad_h,
                               int64_t pad_w) {
  auto& eng = Engine();
  dnnl::memory::desc src(src_d, type, tag::nhwc), dst(dst_d, type, tag::nhwc);
  dnnl::memory::desc w_any(w_d, type, tag::any), w_user(w_d, type, tag::hwio);
  dnnl::memory::dims strides = {stride, stride}, pads = {pad_h, pad_w};
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  auto fwd = dnnl::convolution_forward::primitive_desc(
      eng, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src, w_any,
      dst, strides, pads, pads, attr);
  auto plan = std::make_shared<Plan>();
  if (kind == 0) {
    plan->prim = dnnl::convolution_forward(fwd);
    Describe(*plan, fwd, fwd.weights_desc(), src, w_user, dst);
  } else if (kind == 1) {
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        eng, dnnl::algorithm::convolution_direct, src, w_any, dst, strides, pads, pads, fwd, attr);
    plan->prim = dnnl::convolution_backward_data(pd);
    Describe(*plan, pd, pd.weights_desc(), src, w_user, dst);
  } else {
    auto pd = dnnl::convolution_backward_weights::primitive_desc(
        eng, dnnl::algorithm::convolution_direct, src, w_any, dst, strides, pads, pads, fwd,
        attr);
    plan->prim = dnnl::convolution_backward_weights(pd);
    Describe(*plan, pd, pd.diff_weights_desc(), src, w_user, dst);
  }
  return plan;
}

ffi::Error Conv(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> out,
                int64_t kind, int64_t stride, int64_t pad_h, int64_t pad_w) {
  if (kind < 0 || kind > 2) return ffi::Error::InvalidArgument("kind must be 0, 1 or 2");
  auto et = a.element_type();
  if (b.element_type() != et || out->element_type() != et ||
      (et != ffi::DataType::F32 && et != ffi::DataType::BF16))
    return ffi::Error::InvalidArgument("operands must be all float32 or all bfloat16");
  dt type = et == ffi::DataType::F32 ? dt::f32 : dt::bf16;
  auto ad = a.dimensions(), bd = b.dimensions(), od = out->dimensions();
  if (ad.size() != 4 || bd.size() != 4 || od.size() != 4)
    return ffi::Error::InvalidArgument("operands must be rank 4");
  // Logical oneDNN dims: activations {N, C, H, W}, weights {O, I, KH, KW}.
  const int64_t* s = kind == 1 ? od.begin() : ad.begin();                       // NHWI
  const int64_t* w = kind == 2 ? od.begin() : bd.begin();                       // KH KW I O
  const int64_t* d = kind == 0 ? od.begin() : (kind == 1 ? ad.begin() : bd.begin());  // NHWO
  dnnl::memory::dims src_d = {s[0], s[3], s[1], s[2]}, w_d = {w[3], w[2], w[0], w[1]},
                     dst_d = {d[0], d[3], d[1], d[2]};
  std::string key = Key({kind, static_cast<int64_t>(type), stride, pad_h, pad_w}, src_d, w_d, dst_d);
  try {
    auto plan = Cached(key, [&] {
      return MakePlan(static_cast<int>(kind), type, src_d, w_d, dst_d, stride, pad_h, pad_w);
    });
    auto& eng = Engine();
    dnnl::stream strm(eng);
    dnnl::memory scratch(plan->scratch, eng, ThreadBuffer(0, plan->scratch.get_size()));
    void* src_p = kind == 1 ? out->untyped_data() : a.untyped_data();
    void* dst_p =
        kind == 0 ? out->untyped_data() : (kind == 1 ? a.untyped_data() : b.untyped_data());
    void* w_p = kind == 2 ? out->untyped_data() : b.untyped_data();
    dnnl::memory src(plan->src, eng, src_p), dst(plan->dst, eng, dst_p);
    dnnl::memory w_user(plan->user_w, eng, w_p);
    dnnl::memory w_prim = PrimitiveWeights(*plan, strm, w_user, kind != 2);
    if (kind == 0) {
      plan->prim.execute(strm, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, w_prim},
                                {DNNL_ARG_DST, dst}, {DNNL_ARG_SCRATCHPAD, scratch}});
    } else if (kind == 1) {
      plan->prim.execute(strm, {{DNNL_ARG_DIFF_SRC, src}, {DNNL_ARG_WEIGHTS, w_prim},
                                {DNNL_ARG_DIFF_DST, dst}, {DNNL_ARG_SCRATCHPAD, scratch}});
    } else {
      plan->prim.execute(strm, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_WEIGHTS, w_prim},
                                {DNNL_ARG_DIFF_DST, dst}, {DNNL_ARG_SCRATCHPAD, scratch}});
      if (plan->reorder_w) dnnl::reorder(w_prim, w_user).execute(strm, w_prim, w_user);
    }
    strm.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

std::shared_ptr<Plan> MakeInferPlan(dnnl::memory::dims src_d, dnnl::memory::dims w_d,
                                    dnnl::memory::dims dst_d, dnnl::memory::dims bias_d,
                                    int64_t stride, int64_t pad_h, int64_t pad_w, bool relu) {
  dnnl::memory::desc src(src_d, dt::f32, tag::nhwc), dst(dst_d, dt::f32, tag::nhwc);
  dnnl::memory::desc w_any(w_d, dt::f32, tag::any), w_user(w_d, dt::f32, tag::hwio);
  dnnl::memory::desc bias(bias_d, dt::f32, tag::a);
  dnnl::memory::dims strides = {stride, stride}, pads = {pad_h, pad_w};
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  if (relu) {
    dnnl::post_ops ops;
    ops.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
    attr.set_post_ops(ops);
  }
  auto pd = dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, src,
      w_any, bias, dst, strides, pads, pads, attr);
  auto plan = std::make_shared<Plan>();
  plan->prim = dnnl::convolution_forward(pd);
  plan->bias = bias;
  Describe(*plan, pd, pd.weights_desc(), src, w_user, dst);
  return plan;
}

ffi::Error ConvInfer(ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b, ffi::Buffer<ffi::F32> c,
                     ffi::Result<ffi::Buffer<ffi::F32>> out, int64_t stride, int64_t pad_h,
                     int64_t pad_w, int64_t relu) {
  auto ad = a.dimensions(), bd = b.dimensions(), cd = c.dimensions(), od = out->dimensions();
  if (ad.size() != 4 || bd.size() != 4 || cd.size() != 1 || od.size() != 4 || cd[0] != bd[3])
    return ffi::Error::InvalidArgument("expected src [N,H,W,I], weights [KH,KW,I,O], bias [O]");
  dnnl::memory::dims src_d = {ad[0], ad[3], ad[1], ad[2]}, w_d = {bd[3], bd[2], bd[0], bd[1]},
                     dst_d = {od[0], od[3], od[1], od[2]}, bias_d = {cd[0]};
  // Tag 3 keeps these keys apart from Conv's (kinds 0-2).
  std::string key = Key({3, stride, pad_h, pad_w, relu}, src_d, w_d, dst_d);
  try {
    auto plan = Cached(key, [&] {
      return MakeInferPlan(src_d, w_d, dst_d, bias_d, stride, pad_h, pad_w, relu != 0);
    });
    auto& eng = Engine();
    dnnl::stream strm(eng);
    dnnl::memory scratch(plan->scratch, eng, ThreadBuffer(0, plan->scratch.get_size()));
    dnnl::memory src(plan->src, eng, a.typed_data()), dst(plan->dst, eng, out->typed_data());
    dnnl::memory bias(plan->bias, eng, c.typed_data());
    dnnl::memory w_user(plan->user_w, eng, b.typed_data());
    dnnl::memory w_prim = PrimitiveWeights(*plan, strm, w_user, true);
    plan->prim.execute(strm, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, w_prim},
                              {DNNL_ARG_BIAS, bias}, {DNNL_ARG_DST, dst},
                              {DNNL_ARG_SCRATCHPAD, scratch}});
    strm.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FaceganDnnlConvInfer, ConvInfer,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("pad_h")
                                  .Attr<int64_t>("pad_w")
                                  .Attr<int64_t>("relu"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(FaceganDnnlConv, Conv,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("kind")
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("pad_h")
                                  .Attr<int64_t>("pad_w"));

extern "C" const char* FaceganDnnlVersion() {
  static const std::string v = [] {
    const dnnl_version_t* ver = dnnl::version();
    return std::to_string(ver->major) + "." + std::to_string(ver->minor) + "." +
           std::to_string(ver->patch);
  }();
  return v.c_str();
}
