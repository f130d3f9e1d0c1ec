/*
 * lfv-edge test/demo model kernels: float32 NCHW, batch 1, TVM packed-function ABI.
 *
 * Loaded by the real libdlr.so (TVM graph executor, docs/dlr-runtime.md section 6). Every exported
 * kernel has the TVM backend signature
 *     int f(TVMValue* args, int* type_codes, int num_args,
 *           TVMValue* ret, int* ret_tcode, void* resource_handle)
 * and receives its input tensors, then its output tensor, as DLTensor handles (type code 7).
 * No TVM header is needed: DLTensor and TVMValue are mirrored in tvm_abi.h.
 *
 * Semantics mirror PyTorch so a trained model maps 1:1 (see modelbuild/graph.py for the
 * symbol table and modelbuild/reference.py for the float64 oracle):
 *   lfv_conv2d_k{1,3}_s{1,2}[_relu]  Conv2d(Ci, Co, K, stride=S, padding=K//2) + bias [+ ReLU]
 *   lfv_dwconv2d_k3_s{1,2}[_relu]    Conv2d(C, C, 3, stride=S, padding=1, groups=C) + bias [+ ReLU]
 *   lfv_relu, lfv_add, lfv_add_relu  elementwise, any shape (also with flatten_data "1")
 *   lfv_maxpool2d_k2_s2              MaxPool2d(2, 2), floor
 *   lfv_global_avg_pool              [1,C,H,W] -> [1,C]
 *   lfv_dense                        [1,K] x [M,K]^T + [M] -> [1,M]
 *   lfv_softmax                      softmax over the last axis of [1,M]
 *   lfv_softmax_channels             softmax over C of [1,C,H,W], per pixel
 *   lfv_upsample_nearest             F.interpolate(mode="nearest"), integer factors from shapes
 *   lfv_upsample_bilinear            F.interpolate(mode="bilinear", align_corners=False), ditto
 *   lfv_concat_channels              torch.cat([a, b], dim=1)
 *
 * Hooks: the runtime fills the exported data symbols __tvm_module_ctx, __TVMAPISetLastError
 * and __TVMBackendParallelLaunch right after dlopen. They stay NULL when this library is
 * loaded any other way (ctypes): errors are then silent and everything runs serially.
 */

#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GLIBC__) && defined(__x86_64__)
/* Bind to the original x86-64 symbol versions: built on glibc 2.36 the library would
 * otherwise need exp@GLIBC_2.29 (a faster rewrite, same results within 1 ulp) and
 * memcpy@GLIBC_2.14, and would not load on Ubuntu 18.04 (glibc 2.27) or Debian 10 (2.28),
 * where libdlr.so 1.6.0 itself loads (it needs GLIBC_2.14). */
__asm__(".symver exp,exp@GLIBC_2.2.5");
__asm__(".symver memcpy,memcpy@GLIBC_2.2.5");
#endif

#include "tvm_abi.h" /* TVMValue, DLTensor, LFV_EXPORT */

typedef struct {
  void* sync_handle;
  int32_t num_task;
} TVMParallelGroupEnv;

typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv* penv, void* cdata);

enum { kTVMDLTensorHandle = 7, kDLCPU = 1, kDLFloat = 2 };

/* Filled by libdlr's TVM runtime after dlopen (library_module.cc); NULL otherwise. */
LFV_EXPORT void* __tvm_module_ctx = NULL;
LFV_EXPORT void (*__TVMAPISetLastError)(const char*) = NULL;
LFV_EXPORT int (*__TVMBackendParallelLaunch)(FTVMParallelLambda, void*, int) = NULL;

#define KERNEL_ARGS \
  TVMValue *args, int *type_codes, int num_args, TVMValue *ret, int *ret_tcode, \
      void *resource_handle
#define UNUSED_KERNEL_ARGS \
  (void)ret;               \
  (void)ret_tcode;         \
  (void)resource_handle

/* ---- errors ---------------------------------------------------------------------------------- */

/* fail(fn, fmt, ...): tvm_abi.h. */

static void shape_text(const DLTensor* t, char* out, size_t size) {
  size_t used = 0;
  out[0] = '\0';
  for (int32_t d = 0; d < t->ndim && used + 24 < size; ++d) {
    int n = snprintf(out + used, size - used, "%s%lld", d == 0 ? "[" : ",", (long long)t->shape[d]);
    if (n < 0) return;
    used += (size_t)n;
  }
  snprintf(out + used, size - used, t->ndim == 0 ? "[]" : "]");
}

/* Fetch argument i as a compact float32 CPU tensor with `ndim` dimensions (any if ndim < 0). */
static int get_tensor(const char* fn, const TVMValue* args, const int* codes, int i,
                      const char* role, int ndim, const DLTensor** out) {
  if (codes[i] != kTVMDLTensorHandle) {
    return fail(fn, "argument %d (%s) has type code %d, expected %d (DLTensor handle)", i, role,
                codes[i], kTVMDLTensorHandle);
  }
  const DLTensor* t = (const DLTensor*)args[i].v_handle;
  if (t == NULL || t->data == NULL || (t->shape == NULL && t->ndim > 0)) {
    return fail(fn, "argument %d (%s) is a NULL tensor", i, role);
  }
  if (t->device_type != kDLCPU) {
    return fail(fn, "%s is on device type %d, these kernels run on CPU (1)", role,
                (int)t->device_type);
  }
  if (t->dtype.code != kDLFloat || t->dtype.bits != 32 || t->dtype.lanes != 1) {
    return fail(fn, "%s has dtype (code %u, bits %u, lanes %u), expected float32", role,
                (unsigned)t->dtype.code, (unsigned)t->dtype.bits, (unsigned)t->dtype.lanes);
  }
  if (ndim >= 0 && t->ndim != ndim) {
    char s[128];
    shape_text(t, s, sizeof s);
    return fail(fn, "%s has shape %s (%d dimensions), expected %d dimensions", role, s,
                (int)t->ndim, ndim);
  }
  int64_t expected_stride = 1;
  for (int32_t d = t->ndim - 1; d >= 0; --d) {
    if (t->shape[d] < 0) return fail(fn, "%s has a negative dimension", role);
    /* A size-1 dimension may carry any stride and still be compact. */
    if (t->strides != NULL && t->shape[d] != 1 && t->strides[d] != expected_stride) {
      return fail(fn, "%s is not compact (C-contiguous); strided tensors are not supported", role);
    }
    expected_stride *= t->shape[d];
  }
  *out = t;
  return 0;
}

static float* data_of(const DLTensor* t) { return (float*)((char*)t->data + t->byte_offset); }

static int64_t numel(const DLTensor* t) {
  int64_t n = 1;
  for (int32_t d = 0; d < t->ndim; ++d) n *= t->shape[d];
  return n;
}

static int same_shape(const DLTensor* a, const DLTensor* b) {
  if (a->ndim != b->ndim) return 0;
  for (int32_t d = 0; d < a->ndim; ++d) {
    if (a->shape[d] != b->shape[d]) return 0;
  }
  return 1;
}

static int check_num_args(const char* fn, int num_args, int expected) {
  if (num_args != expected) {
    return fail(fn, "expected %d arguments (inputs then output), got %d", expected, num_args);
  }
  return 0;
}

static int check_batch1(const char* fn, const char* role, const DLTensor* t) {
  if (t->shape[0] != 1) {
    char s[128];
    shape_text(t, s, sizeof s);
    return fail(fn, "%s has shape %s: only batch 1 is supported", role, s);
  }
  return 0;
}

static int shape_mismatch(const char* fn, const char* what, const DLTensor* got,
                          const char* expected) {
  char s[128];
  shape_text(got, s, sizeof s);
  return fail(fn, "%s has shape %s, expected %s", what, s, expected);
}

/* ---- parallel loops over the TVM thread pool ------------------------------------------------- */

typedef int (*range_fn)(void* ctx, int64_t begin, int64_t end);

typedef struct {
  range_fn fn;
  void* ctx;
  int64_t total;
} parallel_job;

/* Below this many multiply-adds (or element moves) a pool launch costs more than it saves:
 * a launch is a few microseconds, 32k flops take about as long on one core. */
#define LFV_PARALLEL_MIN_WORK 32768

static int parallel_task(int task_id, TVMParallelGroupEnv* env, void* cdata) {
  const parallel_job* job = (const parallel_job*)cdata;
  int64_t tasks = env != NULL && env->num_task > 0 ? env->num_task : 1;
  int64_t begin = job->total * task_id / tasks;
  int64_t end = job->total * (task_id + 1) / tasks;
  return begin < end ? job->fn(job->ctx, begin, end) : 0;
}

/* Run fn over [0, total) split into contiguous ranges, one per pool worker (num_task 0 = all
 * workers of the calling thread's pool; the real count arrives in env->num_task). Serial when
 * the hook is absent (ctypes) or the work is small. */
static int parallel_for(const char* fn_name, range_fn fn, void* ctx, int64_t total, int64_t work) {
  int rc;
  if (total <= 0) return 0;
  if (__TVMBackendParallelLaunch == NULL || total < 2 || work < LFV_PARALLEL_MIN_WORK) {
    rc = fn(ctx, 0, total);
  } else {
    parallel_job job = {fn, ctx, total};
    rc = __TVMBackendParallelLaunch(parallel_task, &job, 0);
  }
  if (rc != 0) return fail(fn_name, "a parallel task failed (out of memory?)");
  return 0;
}

/* ---- convolution (dense and depthwise) ------------------------------------------------------- */

typedef struct {
  const float* in;
  const float* weight;
  const float* bias;
  float* out;
  int64_t in_c, h, w;    /* input channels (per group for depthwise: 1), height, width */
  int64_t out_c, ho, wo; /* output channels, height, width */
  int64_t k, s;
  int relu, depthwise;
} conv_job;

/* Output channels computed together per pass over an input row: each loaded input value feeds
 * CONV_BLOCK accumulating rows. 4 measured 1.2-1.7x faster than 1 (gcc 12, SSE2); 8 defeats
 * the vectoriser. Per output element the summation order is unchanged, so results are
 * bit-identical whatever the blocking or the thread split. */
#define CONV_BLOCK 4

/* dst[i] += a * src[i * stride], i < n; restrict lets gcc vectorise without alias checks. */
static inline void axpy_s1(float* restrict dst, const float* restrict src, float a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] += a * src[i];
}

static inline void axpy_s2(float* restrict dst, const float* restrict src, float a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] += a * src[2 * i];
}

/* The same for CONV_BLOCK destination rows sharing one source row. */
static inline void axpy4_s1(float* restrict d0, float* restrict d1, float* restrict d2,
                            float* restrict d3, const float* restrict src, const float* a,
                            int64_t n) {
  const float a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
  for (int64_t i = 0; i < n; ++i) {
    const float v = src[i];
    d0[i] += a0 * v;
    d1[i] += a1 * v;
    d2[i] += a2 * v;
    d3[i] += a3 * v;
  }
}

static inline void axpy4_s2(float* restrict d0, float* restrict d1, float* restrict d2,
                            float* restrict d3, const float* restrict src, const float* a,
                            int64_t n) {
  const float a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
  for (int64_t i = 0; i < n; ++i) {
    const float v = src[2 * i];
    d0[i] += a0 * v;
    d1[i] += a1 * v;
    d2[i] += a2 * v;
    d3[i] += a3 * v;
  }
}

static inline void relu_inplace(float* restrict x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = x[i] < 0.0f ? 0.0f : x[i];
}

/* One work item = one output row of a block of up to CONV_BLOCK output channels. Dense conv
 * orders items row-major (all channel blocks of row oy together) so the K input rows stay in
 * cache; depthwise uses blocks of one channel, channel-major (each reads only its own plane).
 * Borders: for every kernel tap the valid output-column range is computed once, so the inner
 * loop is a branch-free, vectorisable axpy over a row. */
static int conv_rows(void* ctx, int64_t begin, int64_t end) {
  const conv_job* j = (const conv_job*)ctx;
  const int64_t pad = j->k / 2, taps_per_plane = j->k * j->k;
  const int64_t block = j->depthwise ? 1 : CONV_BLOCK;
  const int64_t blocks = (j->out_c + block - 1) / block;
  for (int64_t item = begin; item < end; ++item) {
    int64_t oy, o0;
    if (j->depthwise) {
      o0 = item / j->ho;
      oy = item % j->ho;
    } else {
      oy = item / blocks;
      o0 = (item % blocks) * block;
    }
    const int64_t count = j->out_c - o0 < block ? j->out_c - o0 : block;
    float* dst[CONV_BLOCK];
    for (int64_t q = 0; q < count; ++q) {
      dst[q] = j->out + ((o0 + q) * j->ho + oy) * j->wo;
      const float b = j->bias[o0 + q];
      for (int64_t x = 0; x < j->wo; ++x) dst[q][x] = b;
    }
    const int64_t first_plane = j->depthwise ? o0 : 0;
    for (int64_t c = 0; c < j->in_c; ++c) {
      const float* plane = j->in + (first_plane + c) * j->h * j->w;
      for (int64_t ky = 0; ky < j->k; ++ky) {
        const int64_t iy = oy * j->s + ky - pad;
        if (iy < 0 || iy >= j->h) continue; /* zero padding rows */
        const float* row = plane + iy * j->w;
        for (int64_t kx = 0; kx < j->k; ++kx) {
          const int64_t off = kx - pad;
          /* valid ox: 0 <= ox * s + off <= w - 1 */
          const int64_t lo = off < 0 ? (-off + j->s - 1) / j->s : 0;
          if (j->w - 1 - off < 0) continue;
          int64_t hi = (j->w - 1 - off) / j->s;
          if (hi > j->wo - 1) hi = j->wo - 1;
          if (hi < lo) continue;
          const int64_t n = hi - lo + 1;
          const float* src = row + j->s * lo + off;
          float a[CONV_BLOCK];
          for (int64_t q = 0; q < count; ++q) {
            a[q] = j->weight[((o0 + q) * j->in_c + c) * taps_per_plane + ky * j->k + kx];
          }
          if (count == CONV_BLOCK && j->s == 1) {
            axpy4_s1(dst[0] + lo, dst[1] + lo, dst[2] + lo, dst[3] + lo, src, a, n);
          } else if (count == CONV_BLOCK) {
            axpy4_s2(dst[0] + lo, dst[1] + lo, dst[2] + lo, dst[3] + lo, src, a, n);
          } else {
            for (int64_t q = 0; q < count; ++q) {
              if (j->s == 1) {
                axpy_s1(dst[q] + lo, src, a[q], n);
              } else {
                axpy_s2(dst[q] + lo, src, a[q], n);
              }
            }
          }
        }
      }
    }
    if (j->relu) {
      for (int64_t q = 0; q < count; ++q) relu_inplace(dst[q], j->wo);
    }
  }
  return 0;
}

static int conv_entry(const char* fn, TVMValue* args, int* codes, int num_args, int64_t k,
                      int64_t s, int relu, int depthwise) {
  const DLTensor *x, *w, *b, *y;
  if (check_num_args(fn, num_args, 4) != 0) return -1;
  if (get_tensor(fn, args, codes, 0, "data", 4, &x) != 0) return -1;
  if (get_tensor(fn, args, codes, 1, "weight", 4, &w) != 0) return -1;
  if (get_tensor(fn, args, codes, 2, "bias", 1, &b) != 0) return -1;
  if (get_tensor(fn, args, codes, 3, "output", 4, &y) != 0) return -1;
  if (check_batch1(fn, "data", x) != 0) return -1;
  const int64_t ci = x->shape[1], h = x->shape[2], wd = x->shape[3];
  const int64_t co = w->shape[0];
  char expected[256]; /* up to 227 bytes; gcc 13 with _FORTIFY_SOURCE checks the bound */
  const int64_t w_in = depthwise ? 1 : ci;
  if ((depthwise && co != ci) || w->shape[1] != w_in || w->shape[2] != k || w->shape[3] != k) {
    snprintf(expected, sizeof expected, "[%lld,%lld,%lld,%lld] for data with %lld channels",
             (long long)(depthwise ? ci : co), (long long)w_in, (long long)k, (long long)k,
             (long long)ci);
    return shape_mismatch(fn, "weight", w, expected);
  }
  if (b->shape[0] != co) {
    snprintf(expected, sizeof expected, "[%lld]", (long long)co);
    return shape_mismatch(fn, "bias", b, expected);
  }
  const int64_t pad = k / 2;
  const int64_t ho = (h + 2 * pad - k) / s + 1, wo = (wd + 2 * pad - k) / s + 1;
  if (h < 1 || wd < 1 || y->shape[0] != 1 || y->shape[1] != co || y->shape[2] != ho ||
      y->shape[3] != wo) {
    char in_shape[128];
    shape_text(x, in_shape, sizeof in_shape);
    snprintf(expected, sizeof expected,
             "[1,%lld,%lld,%lld] for data %s (K %lld, stride %lld, pad %lld)", (long long)co,
             (long long)ho, (long long)wo, in_shape, (long long)k, (long long)s, (long long)pad);
    return shape_mismatch(fn, "output", y, expected);
  }
  conv_job job = {data_of(x), data_of(w), data_of(b), data_of(y), w_in, h, wd, co, ho, wo,
                  k, s, relu, depthwise};
  const int64_t items = depthwise ? co * ho : ho * ((co + CONV_BLOCK - 1) / CONV_BLOCK);
  return parallel_for(fn, conv_rows, &job, items, co * ho * wo * w_in * k * k);
}

#define DEFINE_CONV(K, S, RELU, SUFFIX)                                            \
  LFV_EXPORT int lfv_conv2d_k##K##_s##S##SUFFIX(KERNEL_ARGS) {                     \
    UNUSED_KERNEL_ARGS;                                                            \
    return conv_entry("lfv_conv2d_k" #K "_s" #S #SUFFIX, args, type_codes, num_args, K, S, \
                      RELU, 0);                                                    \
  }

#define DEFINE_DWCONV(S, RELU, SUFFIX)                                             \
  LFV_EXPORT int lfv_dwconv2d_k3_s##S##SUFFIX(KERNEL_ARGS) {                       \
    UNUSED_KERNEL_ARGS;                                                            \
    return conv_entry("lfv_dwconv2d_k3_s" #S #SUFFIX, args, type_codes, num_args, 3, S, \
                      RELU, 1);                                                    \
  }

DEFINE_CONV(1, 1, 0, )
DEFINE_CONV(1, 1, 1, _relu)
DEFINE_CONV(1, 2, 0, )
DEFINE_CONV(1, 2, 1, _relu)
DEFINE_CONV(3, 1, 0, )
DEFINE_CONV(3, 1, 1, _relu)
DEFINE_CONV(3, 2, 0, )
DEFINE_CONV(3, 2, 1, _relu)
DEFINE_DWCONV(1, 0, )
DEFINE_DWCONV(1, 1, _relu)
DEFINE_DWCONV(2, 0, )
DEFINE_DWCONV(2, 1, _relu)

/* ---- elementwise ----------------------------------------------------------------------------- */

/* Elementwise kernels split the flat index range into chunks of this many elements. */
#define LFV_CHUNK 16384

typedef struct {
  const float* a;
  const float* b; /* NULL for relu */
  float* out;
  int64_t n;
  int relu;
} elementwise_job;

static int elementwise_chunks(void* ctx, int64_t begin, int64_t end) {
  const elementwise_job* j = (const elementwise_job*)ctx;
  const int64_t lo = begin * LFV_CHUNK;
  const int64_t hi = end * LFV_CHUNK < j->n ? end * LFV_CHUNK : j->n;
  const float* restrict a = j->a;
  float* restrict out = j->out;
  if (j->b != NULL) {
    const float* restrict b = j->b;
    for (int64_t i = lo; i < hi; ++i) out[i] = a[i] + b[i];
    if (j->relu) relu_inplace(out + lo, hi - lo);
  } else {
    for (int64_t i = lo; i < hi; ++i) out[i] = a[i] < 0.0f ? 0.0f : a[i];
  }
  return 0;
}

static int elementwise_entry(const char* fn, TVMValue* args, int* codes, int num_args, int binary,
                             int relu) {
  const DLTensor *a, *b = NULL, *y;
  const int n_args = binary ? 3 : 2;
  if (check_num_args(fn, num_args, n_args) != 0) return -1;
  if (get_tensor(fn, args, codes, 0, binary ? "lhs" : "data", -1, &a) != 0) return -1;
  if (binary && get_tensor(fn, args, codes, 1, "rhs", -1, &b) != 0) return -1;
  if (get_tensor(fn, args, codes, n_args - 1, "output", -1, &y) != 0) return -1;
  char expected[128];
  shape_text(a, expected, sizeof expected);
  if (b != NULL && !same_shape(a, b)) return shape_mismatch(fn, "rhs", b, expected);
  if (!same_shape(a, y)) return shape_mismatch(fn, "output", y, expected);
  const int64_t n = numel(a);
  elementwise_job job = {data_of(a), b != NULL ? data_of(b) : NULL, data_of(y), n, relu};
  return parallel_for(fn, elementwise_chunks, &job, (n + LFV_CHUNK - 1) / LFV_CHUNK, n);
}

LFV_EXPORT int lfv_relu(KERNEL_ARGS) {
  UNUSED_KERNEL_ARGS;
  return elementwise_entry("lfv_relu", args, type_codes, num_args, 0, 1);
}

LFV_EXPORT int lfv_add(KERNEL_ARGS) {
  UNUSED_KERNEL_ARGS;
  return elementwise_entry("lfv_add", args, type_codes, num_args, 1, 0);
}

LFV_EXPORT int lfv_add_relu(KERNEL_ARGS) {
  UNUSED_KERNEL_ARGS;
  return elementwise_entry("lfv_add_relu", args, type_codes, num_args, 1, 1);
}

/* ---- pooling --------------------------------------------------------------------------------- */

typedef struct {
  const float* in;
  float* out;
  int64_t h, w, ho, wo;
} plane_job;

static int maxpool_rows(void* ctx, int64_t begin, int64_t end) {
  const plane_job* j = (const plane_job*)ctx;
  for (int64_t item = begin; item < end; ++item) {
    const int64_t c = item / j->ho, oy = item % j->ho;
    const float* restrict r0 = j->in + (c * j->h + 2 * oy) * j->w;
    const float* restrict r1 = r0 + j->w;
    float* restrict dst = j->out + (c * j->ho + oy) * j->wo;
    for (int64_t x = 0; x < j->wo; ++x) {
      const float a = r0[2 * x] > r0[2 * x + 1] ? r0[2 * x] : r0[2 * x + 1];
      const float b = r1[2 * x] > r1[2 * x + 1] ? r1[2 * x] : r1[2 * x + 1];
      dst[x] = a > b ? a : b;
    }
  }
  return 0;
}

LFV_EXPORT int lfv_maxpool2d_k2_s2(KERNEL_ARGS) {
  UNUSED_KERNEL_ARGS;
  static const char fn[] = "lfv_maxpool2d_k2_s2";
  const DLTensor *x, *y;
  if (check_num_args(fn, num_args, 2) != 0) return -1;
  if (get_tensor(fn, args, type_codes, 0, "data", 4, &x) != 0) return -1;
  if (get_tensor(fn, args, type_codes, 1, "output", 4, &y) != 0) return -1;
  if (check_batch1(fn, "data", x) != 0) return -1;
  const int64_t c = x->shape[1], h = x->shape[2], w = x->shape[3];
  const int64_t ho = h / 2, wo = w / 2;
  if (ho < 1 || wo < 1 || y->shape[0] != 1 || y->shape[1] != c || y->shape[2] != ho ||
      y->shape[3] != wo) {
    char expected[128];
    snprintf(expected, sizeof expected, "[1,%lld,%lld,%lld] (floor of half the input, at least 1)",
             (long long)c, (long long)ho, (long long)wo);
    return shape_mismatch(fn, "output", y, expected);
  }
  plane_job job = {data_of(x), data_of(y), h, w, ho, wo};
  return parallel_for(fn, maxpool_rows, &job, c * ho, c * ho * wo * 4);
}

static int gap_channels(void* ctx, int64_t begin, int64_t end) {
  const plane_job* j = (const plane_job*)ctx;
  const int64_t n = j->h * j->w;
  for (int64_t c = begin; c < end; ++c) {
    const float* restrict src = j->in + c * n;
    double sum = 0.0; /* 1e6 float terms: float accumulation would lose ~3 digits */
    for (int64_t i = 0; i < n; ++i) sum += (double)src[i];
    j->out[c] = (float)(sum / (double)n);
  }
  return 0;
}

LFV_EXPORT int lfv_global_avg_pool(KERNEL_ARGS) {
  UNUSED_KERNEL_ARGS;
  static const char fn[] = "lfv_global_avg_pool";
  const DLTensor *x, *y;
  if (check_num_args(fn, num_args, 2) != 0) return -1;
  if (get_tensor(fn, args, type_codes, 0, "data", 4, &x) != 0) return -1;
  if (get_tensor(fn, args, type_codes, 1, "output", 2, &y) != 0) return -1;
  if (check_batch1(fn, "data", x) != 0) return -1;
  const int64_t c = x->shape[1], h = x->shape[2], w = x->shape[3];
  if (h < 1 || w < 1 || y->shape[0] != 1 || y->shape[1] != c) {
    char expected[64];
    snprintf(expected, sizeof expected, "[1,%lld] (non-empty input planes)", (long long)c);
    return shape_mismatch(fn, "output", y, expected);
  }
  plane_job job = {data_of(x), data_of(y), h, w, 1, 1};
  return parallel_for(fn, gap_channels, &job, c, c * h * w);
}

/* ---- dense and softmax over the last axis ---------------------------------------------------- */

LFV_EXPORT int lfv_dense(KERNEL_ARGS) {
  UNUSED_KERNEL_ARGS;
  static const char fn[] = "lfv_dense";
  const DLTensor *x, *w, *b, *y;
  if (check_num_args(fn, num_args, 4) != 0) return -1;
  if (get_tensor(fn, args, type_codes, 0, "data", 2, &x) != 0) return -1;
  if (get_tensor(fn, args, type_codes, 1, "weight", 2, &w) != 0) return -1;
  if (get_tensor(fn, args, type_codes, 2, "bias", 1, &b) != 0) return -1;
  if (get_tensor(fn, args, type_codes, 3, "output", 2, &y) != 0) return -1;
  if (check_batch1(fn, "data", x) != 0) return -1;
  const int64_t k = x->shape[1], m = w->shape[0];
  char expected[64];
  if (w->shape[1] != k) {
    snprintf(expected, sizeof expected, "[M,%lld] (K %lld from the data)", (long long)k,
             (long long)k);
    return shape_mismatch(fn, "weight", w, expected);
  }
  if (b->shape[0] != m) {
    snprintf(expected, sizeof expected, "[%lld]", (long long)m);
    return shape_mismatch(fn, "bias", b, expected);
  }
  if (y->shape[0] != 1 || y->shape[1] != m) {
    snprintf(expected, sizeof expected, "[1,%lld]", (long long)m);
    return shape_mismatch(fn, "output", y, expected);
  }
  const float *xd = data_of(x), *wd = data_of(w), *bd = data_of(b);
  float* yd = data_of(y);
  for (int64_t i = 0; i < m; ++i) {
    double acc = (double)bd[i];
    for (int64_t j = 0; j < k; ++j) acc += (double)xd[j] * (double)wd[i * k + j];
    yd[i] = (float)acc;
  }
  return 0;
}

LFV_EXPORT int lfv_softmax(KERNEL_ARGS) {
  UNUSED_KERNEL_ARGS;
  static const char fn[] = "lfv_softmax";
  const DLTensor *x, *y;
  if (check_num_args(fn, num_args, 2) != 0) return -1;
  if (get_tensor(fn, args, type_codes, 0, "data", 2, &x) != 0) return -1;
  if (get_tensor(fn, args, type_codes, 1, "output", 2, &y) != 0) return -1;
  if (check_batch1(fn, "data", x) != 0) return -1;
  char expected[128];
  shape_text(x, expected, sizeof expected);
  if (!same_shape(x, y)) return shape_mismatch(fn, "output", y, expected);
  const int64_t m = x->shape[1];
  if (m < 1) return fail(fn, "cannot take a softmax over 0 classes");
  const float* xd = data_of(x);
  float* yd = data_of(y);
  double top = xd[0];
  for (int64_t i = 1; i < m; ++i) top = xd[i] > top ? xd[i] : top;
  double sum = 0.0;
  for (int64_t i = 0; i < m; ++i) sum += exp((double)xd[i] - top);
  for (int64_t i = 0; i < m; ++i) yd[i] = (float)(exp((double)xd[i] - top) / sum);
  return 0;
}

/* ---- softmax over channels (segmentation masks) ---------------------------------------------- */

/* exp(x) for x <= 0 (softmax after subtracting the max), branch-free so gcc vectorises the
 * row loop: libm's expf is a call per element, 3-4x slower over a 1000x1000x3 mask.
 * Cephes expf: x = n*ln2 + r, |r| <= ln2/2, degree-6 polynomial for e^r, 2^n from the
 * exponent bits. Relative error about 1e-7; inputs below -87 are clamped (result ~1e-38). */
static inline float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 0.0f ? 0.0f : x;
  const float fx = x * 1.44269504088896341f + 0.5f;
  float n = (float)(int32_t)fx; /* truncation; fix up to floor for negative fx */
  n = n > fx ? n - 1.0f : n;
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  union {
    int32_t i;
    float f;
  } two_n;
  two_n.i = ((int32_t)n + 127) << 23;
  return p * two_n.f;
}

typedef struct {
  const float* in;
  float* out;
  int64_t c, h, w;
} channel_job;

/* One work item = one image row: max over channels, exp, sum (double), scale. Two row-sized
 * scratch buffers per task keep every pass a contiguous, vectorisable row loop. */
static int softmax_channel_rows(void* ctx, int64_t begin, int64_t end) {
  const channel_job* j = (const channel_job*)ctx;
  const int64_t plane = j->h * j->w;
  float* top = (float*)malloc((size_t)j->w * sizeof(float));
  double* sum = (double*)malloc((size_t)j->w * sizeof(double));
  if (top == NULL || sum == NULL) {
    free(top);
    free(sum);
    return -1;
  }
  for (int64_t y = begin; y < end; ++y) {
    const float* src = j->in + y * j->w;
    float* dst = j->out + y * j->w;
    for (int64_t x = 0; x < j->w; ++x) {
      top[x] = src[x];
      sum[x] = 0.0;
    }
    for (int64_t c = 1; c < j->c; ++c) {
      const float* restrict s = src + c * plane;
      for (int64_t x = 0; x < j->w; ++x) top[x] = s[x] > top[x] ? s[x] : top[x];
    }
    for (int64_t c = 0; c < j->c; ++c) {
      const float* restrict s = src + c * plane;
      float* restrict d = dst + c * plane;
      for (int64_t x = 0; x < j->w; ++x) d[x] = exp_nonpositive(s[x] - top[x]);
      for (int64_t x = 0; x < j->w; ++x) sum[x] += (double)d[x];
    }
    for (int64_t x = 0; x < j->w; ++x) top[x] = (float)(1.0 / sum[x]); /* reuse as 1/sum */
    for (int64_t c = 0; c < j->c; ++c) {
      float* restrict d = dst + c * plane;
      for (int64_t x = 0; x < j->w; ++x) d[x] *= top[x];
    }
  }
  free(top);
  free(sum);
  return 0;
}

LFV_EXPORT int lfv_softmax_channels(KERNEL_ARGS) {
  UNUSED_KERNEL_ARGS;
  static const char fn[] = "lfv_softmax_channels";
  const DLTensor *x, *y;
  if (check_num_args(fn, num_args, 2) != 0) return -1;
  if (get_tensor(fn, args, type_codes, 0, "data", 4, &x) != 0) return -1;
  if (get_tensor(fn, args, type_codes, 1, "output", 4, &y) != 0) return -1;
  if (check_batch1(fn, "data", x) != 0) return -1;
  char expected[128];
  shape_text(x, expected, sizeof expected);
  if (!same_shape(x, y)) return shape_mismatch(fn, "output", y, expected);
  const int64_t c = x->shape[1], h = x->shape[2], w = x->shape[3];
  if (c < 1) return fail(fn, "cannot take a softmax over 0 channels");
  channel_job job = {data_of(x), data_of(y), c, h, w};
  return parallel_for(fn, softmax_channel_rows, &job, h, c * h * w * 4);
}

/* ---- upsampling ------------------------------------------------------------------------------ */

typedef struct {
  const float* in;
  float* out;
  int64_t h, w, ho, wo, fh, fw;
  /* bilinear only: per output column the two source columns and their weights */
  const int64_t* x0;
  const int64_t* x1;
  const float* lx0;
  const float* lx1;
} upsample_job;

static int nearest_rows(void* ctx, int64_t begin, int64_t end) {
  const upsample_job* j = (const upsample_job*)ctx;
  for (int64_t item = begin; item < end; ++item) {
    const int64_t c = item / j->ho, oy = item % j->ho;
    const float* restrict src = j->in + (c * j->h + oy / j->fh) * j->w;
    float* restrict dst = j->out + (c * j->ho + oy) * j->wo;
    for (int64_t x = 0; x < j->w; ++x) {
      for (int64_t r = 0; r < j->fw; ++r) dst[x * j->fw + r] = src[x];
    }
  }
  return 0;
}

/* torch's source coordinate for align_corners=False: (dst + 0.5) / f - 0.5, clamped at 0;
 * i0 = floor, i1 = i0 + 1 unless i0 is the last index; weights (1 - l, l). */
static void bilinear_coord(int64_t dst, int64_t f, int64_t size, int64_t* i0, int64_t* i1,
                           float* l0, float* l1) {
  double src = ((double)dst + 0.5) / (double)f - 0.5;
  if (src < 0.0) src = 0.0;
  int64_t lo = (int64_t)src;
  if (lo > size - 1) lo = size - 1;
  double lambda = src - (double)lo;
  if (lambda > 1.0) lambda = 1.0;
  *i0 = lo;
  *i1 = lo < size - 1 ? lo + 1 : lo;
  *l1 = (float)lambda;
  *l0 = (float)(1.0 - lambda);
}

static int bilinear_rows(void* ctx, int64_t begin, int64_t end) {
  const upsample_job* j = (const upsample_job*)ctx;
  for (int64_t item = begin; item < end; ++item) {
    const int64_t c = item / j->ho, oy = item % j->ho;
    int64_t y0, y1;
    float ly0, ly1;
    bilinear_coord(oy, j->fh, j->h, &y0, &y1, &ly0, &ly1);
    const float* restrict r0 = j->in + (c * j->h + y0) * j->w;
    const float* restrict r1 = j->in + (c * j->h + y1) * j->w;
    float* restrict dst = j->out + (c * j->ho + oy) * j->wo;
    for (int64_t x = 0; x < j->wo; ++x) {
      const int64_t a = j->x0[x], b = j->x1[x];
      dst[x] = ly0 * (j->lx0[x] * r0[a] + j->lx1[x] * r0[b]) +
               ly1 * (j->lx0[x] * r1[a] + j->lx1[x] * r1[b]);
    }
  }
  return 0;
}

static int upsample_entry(const char* fn, TVMValue* args, int* codes, int num_args, int bilinear) {
  const DLTensor *x, *y;
  if (check_num_args(fn, num_args, 2) != 0) return -1;
  if (get_tensor(fn, args, codes, 0, "data", 4, &x) != 0) return -1;
  if (get_tensor(fn, args, codes, 1, "output", 4, &y) != 0) return -1;
  if (check_batch1(fn, "data", x) != 0) return -1;
  const int64_t c = x->shape[1], h = x->shape[2], w = x->shape[3];
  const int64_t ho = y->shape[2], wo = y->shape[3];
  if (h < 1 || w < 1 || y->shape[0] != 1 || y->shape[1] != c || ho < h || wo < w ||
      ho % h != 0 || wo % w != 0) {
    char expected[160];
    snprintf(expected, sizeof expected,
             "[1,%lld,fh*%lld,fw*%lld] with integer factors fh, fw >= 1", (long long)c,
             (long long)h, (long long)w);
    return shape_mismatch(fn, "output", y, expected);
  }
  upsample_job job = {data_of(x), data_of(y), h, w, ho, wo, ho / h, wo / w, NULL, NULL, NULL, NULL};
  if (!bilinear) return parallel_for(fn, nearest_rows, &job, c * ho, c * ho * wo);
  /* Column coordinates are the same for every row: compute them once per call. */
  int64_t* cols = (int64_t*)malloc((size_t)wo * 2 * sizeof(int64_t));
  float* weights = (float*)malloc((size_t)wo * 2 * sizeof(float));
  if (cols == NULL || weights == NULL) {
    free(cols);
    free(weights);
    return fail(fn, "out of memory for %lld column coordinates", (long long)wo);
  }
  for (int64_t ox = 0; ox < wo; ++ox) {
    bilinear_coord(ox, job.fw, w, &cols[ox], &cols[wo + ox], &weights[ox], &weights[wo + ox]);
  }
  job.x0 = cols;
  job.x1 = cols + wo;
  job.lx0 = weights;
  job.lx1 = weights + wo;
  const int rc = parallel_for(fn, bilinear_rows, &job, c * ho, c * ho * wo * 6);
  free(cols);
  free(weights);
  return rc;
}

LFV_EXPORT int lfv_upsample_nearest(KERNEL_ARGS) {
  UNUSED_KERNEL_ARGS;
  return upsample_entry("lfv_upsample_nearest", args, type_codes, num_args, 0);
}

LFV_EXPORT int lfv_upsample_bilinear(KERNEL_ARGS) {
  UNUSED_KERNEL_ARGS;
  return upsample_entry("lfv_upsample_bilinear", args, type_codes, num_args, 1);
}

/* ---- concat ---------------------------------------------------------------------------------- */

LFV_EXPORT int lfv_concat_channels(KERNEL_ARGS) {
  UNUSED_KERNEL_ARGS;
  static const char fn[] = "lfv_concat_channels";
  const DLTensor *a, *b, *y;
  if (check_num_args(fn, num_args, 3) != 0) return -1;
  if (get_tensor(fn, args, type_codes, 0, "lhs", 4, &a) != 0) return -1;
  if (get_tensor(fn, args, type_codes, 1, "rhs", 4, &b) != 0) return -1;
  if (get_tensor(fn, args, type_codes, 2, "output", 4, &y) != 0) return -1;
  if (check_batch1(fn, "lhs", a) != 0) return -1;
  const int64_t ca = a->shape[1], cb = b->shape[1], h = a->shape[2], w = a->shape[3];
  char expected[128];
  if (b->shape[0] != 1 || b->shape[2] != h || b->shape[3] != w) {
    snprintf(expected, sizeof expected, "[1,C,%lld,%lld] (the lhs's height and width)",
             (long long)h, (long long)w);
    return shape_mismatch(fn, "rhs", b, expected);
  }
  if (y->shape[0] != 1 || y->shape[1] != ca + cb || y->shape[2] != h || y->shape[3] != w) {
    snprintf(expected, sizeof expected, "[1,%lld,%lld,%lld]", (long long)(ca + cb),
             (long long)h, (long long)w);
    return shape_mismatch(fn, "output", y, expected);
  }
  /* Batch 1, NCHW: concatenating on channels is two contiguous copies. */
  const size_t bytes_a = (size_t)numel(a) * sizeof(float);
  memcpy(data_of(y), data_of(a), bytes_a);
  memcpy((char*)data_of(y) + bytes_a, data_of(b), (size_t)numel(b) * sizeof(float));
  return 0;
}
