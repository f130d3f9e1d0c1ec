/*
 * Test kernels for the converter, written the way TVM's code generator writes them: the
 * runtime is reached only through hook slots (exported data symbols filled after dlopen) or,
 * with -DSYSTEM_LIB, through undefined TVMBackend* functions plus a constructor that
 * registers every kernel (what --system-lib builds do).
 *
 *   fused_nn_relu        relu through a workspace buffer and a parallel launch (honest)
 *   fused_nn_relu_1      claims relu, computes |x| (a kernel no plan can match)
 *   fused_nn_relu_2      calls an external packed function (tvm.contrib.*)
 *   fused_vision_nms     a copy under a name no converter knows
 *   fused_tanh           kills its process (SIGSEGV) on every call
 *   fused_nn_relu_3      returns an error through TVMAPISetLastError
 *   fused_sigmoid        never returns
 *
 * Float32, any shape (flat loops), two arguments (input, output).
 */

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

typedef union {
  int64_t v_int64;
  double v_float64;
  void* v_handle;
} TVMValue;

typedef struct {
  void* data;
  int32_t device_type, device_id, ndim;
  uint8_t code, bits;
  uint16_t lanes;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
} DLTensor;

typedef struct {
  void* sync_handle;
  int32_t num_task;
} Env;

typedef int (*Lambda)(int task_id, Env* env, void* closure);

#ifdef SYSTEM_LIB
extern void TVMAPISetLastError(const char*);
extern void* TVMBackendAllocWorkspace(int, int, uint64_t, int, int);
extern int TVMBackendFreeWorkspace(int, int, void*);
extern int TVMBackendParallelLaunch(Lambda, void*, int);
extern int TVMBackendGetFuncFromEnv(void*, const char*, void**);
extern int TVMBackendRegisterSystemLibSymbol(const char*, void*);
EXPORT void* __tvm_module_ctx = NULL;
#define SET_ERROR TVMAPISetLastError
#define ALLOC TVMBackendAllocWorkspace
#define FREE TVMBackendFreeWorkspace
#define LAUNCH TVMBackendParallelLaunch
#define GET_FUNC TVMBackendGetFuncFromEnv
#else
EXPORT void* __tvm_module_ctx = NULL;
EXPORT void (*__TVMAPISetLastError)(const char*) = NULL;
EXPORT void* (*__TVMBackendAllocWorkspace)(int, int, uint64_t, int, int) = NULL;
EXPORT int (*__TVMBackendFreeWorkspace)(int, int, void*) = NULL;
EXPORT int (*__TVMBackendParallelLaunch)(Lambda, void*, int) = NULL;
EXPORT int (*__TVMBackendGetFuncFromEnv)(void*, const char*, void**) = NULL;
#define SET_ERROR __TVMAPISetLastError
#define ALLOC __TVMBackendAllocWorkspace
#define FREE __TVMBackendFreeWorkspace
#define LAUNCH __TVMBackendParallelLaunch
#define GET_FUNC __TVMBackendGetFuncFromEnv
#endif

#define ARGS TVMValue *args, int *codes, int num_args, TVMValue *ret, int *ret_code, void *handle

static int64_t numel(const DLTensor* t) {
  int64_t n = 1;
  for (int i = 0; i < t->ndim; ++i) n *= t->shape[i];
  return n;
}

typedef struct {
  const float* in;
  float* scratch;
  int64_t n;
} Job;

static int relu_task(int task_id, Env* env, void* closure) {
  const Job* job = (const Job*)closure;
  int64_t tasks = env->num_task > 0 ? env->num_task : 1;
  int64_t begin = job->n * task_id / tasks, end = job->n * (task_id + 1) / tasks;
  for (int64_t i = begin; i < end; ++i) job->scratch[i] = job->in[i] > 0.0f ? job->in[i] : 0.0f;
  return 0;
}

EXPORT int fused_nn_relu(ARGS) {
  (void)codes, (void)num_args, (void)ret, (void)ret_code, (void)handle;
  const DLTensor* x = (const DLTensor*)args[0].v_handle;
  DLTensor* y = (DLTensor*)args[1].v_handle;
  int64_t n = numel(x);
  float* scratch = (float*)ALLOC(1, 0, (uint64_t)n * 4, 2, 32);
  if (scratch == NULL) {
    SET_ERROR("fused_nn_relu: no workspace");
    return -1;
  }
  Job job = {(const float*)x->data, scratch, n};
  if (LAUNCH(relu_task, &job, 0) != 0) return -1;
  memcpy(y->data, scratch, (size_t)n * 4);
  return FREE(1, 0, scratch);
}

EXPORT int fused_nn_relu_1(ARGS) {
  (void)codes, (void)num_args, (void)ret, (void)ret_code, (void)handle;
  const DLTensor* x = (const DLTensor*)args[0].v_handle;
  DLTensor* y = (DLTensor*)args[1].v_handle;
  const float* in = (const float*)x->data;
  float* out = (float*)y->data;
  for (int64_t i = 0; i < numel(x); ++i) out[i] = in[i] < 0.0f ? -in[i] : in[i];
  return 0;
}

EXPORT int fused_nn_relu_2(ARGS) {
  (void)args, (void)codes, (void)num_args, (void)ret, (void)ret_code, (void)handle;
  void* function = NULL;
  if (GET_FUNC(__tvm_module_ctx, "tvm.contrib.sort.argsort", &function) != 0) return -1;
  return 0;
}

EXPORT int fused_vision_nms(ARGS) {
  (void)codes, (void)num_args, (void)ret, (void)ret_code, (void)handle;
  const DLTensor* x = (const DLTensor*)args[0].v_handle;
  DLTensor* y = (DLTensor*)args[1].v_handle;
  memcpy(y->data, x->data, (size_t)numel(x) * 4);
  return 0;
}

EXPORT int fused_tanh(ARGS) {
  (void)args, (void)codes, (void)num_args, (void)ret, (void)ret_code, (void)handle;
  raise(SIGSEGV);
  return 0;
}

EXPORT int fused_nn_relu_3(ARGS) {
  (void)args, (void)codes, (void)num_args, (void)ret, (void)ret_code, (void)handle;
  SET_ERROR("fused_nn_relu_3: shape check failed");
  return -1;
}

EXPORT int fused_sigmoid(ARGS) {
  (void)args, (void)codes, (void)num_args, (void)ret, (void)ret_code, (void)handle;
  for (volatile int spin = 0;; spin = spin + 1) {
  }
  return 0;
}

#ifdef SYSTEM_LIB
__attribute__((constructor)) static void register_kernels(void) {
  TVMBackendRegisterSystemLibSymbol("fused_nn_relu", (void*)fused_nn_relu);
  TVMBackendRegisterSystemLibSymbol("fused_nn_relu_1", (void*)fused_nn_relu_1);
  TVMBackendRegisterSystemLibSymbol("__tvm_module_ctx", (void*)&__tvm_module_ctx);
}
#endif
