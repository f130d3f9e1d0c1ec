/*
 * lfv-edge GPU kernel library, host side: types shared by gpu_host.c and the host functions
 * gpu.py generates. ABI mirrors as in kernels.c (DLPack v0.3, TVM c_runtime_api.h); no TVM or
 * CUDA header is needed.
 */

#pragma once

#include <stdint.h>

#define LFV_EXPORT __attribute__((visibility("default")))

typedef union {
  int64_t v_int64;
  double v_float64;
  void* v_handle;
  const char* v_str;
} TVMValue;

typedef struct {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
} DLDataType;

typedef struct {
  void* data;
  int32_t device_type;
  int32_t device_id;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
} DLTensor;

_Static_assert(sizeof(TVMValue) == 8, "TVMValue is an 8-byte union");
_Static_assert(sizeof(DLTensor) == 48, "DLTensor must be 48 bytes (x86-64 / aarch64 LP64)");

/* What one argument of a node must be: its role (for messages) and exact shape. */
typedef struct {
  const char* role;
  int ndim;
  const int64_t* shape;
} lfv_tensor_spec;

/* The kernel handle a host function fetched, and the module context it came from. */
typedef struct {
  void* ctx;
  void* handle;
} lfv_kernel_cache;

#define LFV_HOST_ARGS \
  TVMValue *args, int *type_codes, int num_args, TVMValue *ret, int *ret_tcode, \
      void *resource_handle

/* Check the node's tensors against `specs` and launch `kernel` with their device pointers and
 * the launch sizes (grid then block, in the kernel's thread-axis tag order). 0 on success. */
int lfv_gpu_node(const char* fn, lfv_kernel_cache* cache, const char* kernel, TVMValue* args,
                 int* type_codes, int num_args, const lfv_tensor_spec* specs, int num_specs,
                 const int64_t* launch, int num_launch);
