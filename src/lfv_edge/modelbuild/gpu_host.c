/*
 * lfv-edge GPU kernel library, host side: what every generated host function shares.
 *
 * A TVM CUDA build's kernel library holds no CUDA code of its own: the device code sits in
 * the exported `__tvm_dev_mblob` (a CUDA module, loaded by the runtime's CUDA support), and
 * each graph node's exported host function (the node's `func_name`, packed-C signature)
 * checks its tensors, fetches its kernel `<func_name>_kernel0` through the runtime's module
 * context and calls it with the data pointers and the launch sizes (one int64 per thread-axis
 * tag). gpu.py generates those host functions; this file holds the checks and the launch.
 *
 * Only the runtime's hooks are used (filled after dlopen, dlr-runtime.md §6 and §11): the
 * library links nothing but libc, and never libcudart, so it loads on any machine.
 */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "gpu_host.h"

/* Filled by the TVM runtime inside libdlr.so after dlopen (library_module.cc). */
LFV_EXPORT void* __tvm_module_ctx = NULL;
LFV_EXPORT void (*__TVMAPISetLastError)(const char*) = NULL;
LFV_EXPORT int (*__TVMFuncCall)(void*, TVMValue*, int*, int, TVMValue*, int*) = NULL;
LFV_EXPORT int (*__TVMBackendGetFuncFromEnv)(void*, const char*, void**) = NULL;

enum { kTVMArgInt = 0, kTVMOpaqueHandle = 3, kTVMDLTensorHandle = 7, kDLGPU = 2, kDLFloat = 2 };
enum { kMaxArgs = 16 };

/* fail(fn, fmt, ...): tvm_abi.h. */

static void shape_text(const int64_t* shape, int ndim, char* out, size_t size) {
  size_t used = 0;
  out[0] = '\0';
  for (int d = 0; d < ndim && used + 24 < size; ++d) {
    int n = snprintf(out + used, size - used, "%s%lld", d == 0 ? "[" : ",", (long long)shape[d]);
    if (n < 0) return;
    used += (size_t)n;
  }
  snprintf(out + used, size - used, ndim == 0 ? "[]" : "]");
}

/* Argument i must be a compact float32 GPU tensor of exactly the shape the kernel was built
 * for: the device code has the shapes compiled in, so anything else would read out of bounds. */
static int check_tensor(const char* fn, const TVMValue* args, const int* codes, int i,
                        const lfv_tensor_spec* spec, void** data) {
  if (codes[i] != kTVMDLTensorHandle) {
    return fail(fn, "argument %d (%s) has type code %d, expected %d (DLTensor handle)", i,
                spec->role, codes[i], kTVMDLTensorHandle);
  }
  const DLTensor* t = (const DLTensor*)args[i].v_handle;
  if (t == NULL || t->data == NULL || (t->shape == NULL && t->ndim > 0)) {
    return fail(fn, "argument %d (%s) is a NULL tensor", i, spec->role);
  }
  if (t->device_type != kDLGPU) {
    return fail(fn, "%s is on device type %d; this model is compiled for the GPU (2): load it "
                "with device 'gpu'", spec->role, (int)t->device_type);
  }
  if (t->dtype.code != kDLFloat || t->dtype.bits != 32 || t->dtype.lanes != 1) {
    return fail(fn, "%s has dtype (code %u, bits %u, lanes %u), expected float32", spec->role,
                (unsigned)t->dtype.code, (unsigned)t->dtype.bits, (unsigned)t->dtype.lanes);
  }
  int same = t->ndim == spec->ndim;
  for (int d = 0; same && d < spec->ndim; ++d) same = t->shape[d] == spec->shape[d];
  if (!same) {
    char got[160], want[160];
    shape_text(t->shape, t->ndim, got, sizeof got);
    shape_text(spec->shape, spec->ndim, want, sizeof want);
    return fail(fn, "%s has shape %s, the kernel was compiled for %s", spec->role, got, want);
  }
  int64_t expected_stride = 1;
  for (int d = t->ndim - 1; d >= 0; --d) {
    if (t->strides != NULL && t->shape[d] != 1 && t->strides[d] != expected_stride) {
      return fail(fn, "%s is not compact (C-contiguous); strided tensors are not supported",
                  spec->role);
    }
    expected_stride *= t->shape[d];
  }
  *data = (char*)t->data + t->byte_offset;
  return 0;
}

int lfv_gpu_node(const char* fn, lfv_kernel_cache* cache, const char* kernel, TVMValue* args,
                 int* type_codes, int num_args, const lfv_tensor_spec* specs, int num_specs,
                 const int64_t* launch, int num_launch) {
  if (num_args != num_specs) {
    return fail(fn, "expected %d arguments (inputs, weights, then the output), got %d",
                num_specs, num_args);
  }
  if (num_specs + num_launch > kMaxArgs) return fail(fn, "too many kernel arguments");
  if (__tvm_module_ctx == NULL || __TVMFuncCall == NULL || __TVMBackendGetFuncFromEnv == NULL) {
    return fail(fn, "the TVM runtime did not set up this library's hooks (__tvm_module_ctx, "
                "__TVMFuncCall, __TVMBackendGetFuncFromEnv); load it through DLR");
  }
  TVMValue values[kMaxArgs];
  int codes[kMaxArgs];
  for (int i = 0; i < num_specs; ++i) {
    void* data = NULL;
    if (check_tensor(fn, args, type_codes, i, &specs[i], &data) != 0) return -1;
    values[i].v_handle = data;
    codes[i] = kTVMOpaqueHandle;
  }
  for (int j = 0; j < num_launch; ++j) {
    values[num_specs + j].v_int64 = launch[j];
    codes[num_specs + j] = kTVMArgInt;
  }
  /* The kernel handle belongs to the module that loaded this library last (the runtime
   * overwrites __tvm_module_ctx on every load): fetch again whenever that changes. */
  void* ctx = __tvm_module_ctx;
  if (cache->handle == NULL || cache->ctx != ctx) {
    void* handle = NULL;
    if (__TVMBackendGetFuncFromEnv(ctx, kernel, &handle) != 0 || handle == NULL) {
      return fail(fn, "the CUDA kernel %s is not in this library's device code "
                  "(__tvm_dev_mblob), or the runtime has no CUDA support", kernel);
    }
    cache->handle = handle;
    cache->ctx = ctx;
  }
  TVMValue ret;
  int ret_code = 0;
  /* On a failed launch the runtime has already set its own message (CUDALaunch Error …). */
  return __TVMFuncCall(cache->handle, values, codes, num_specs + num_launch, &ret, &ret_code);
}
