/*
 * lfv-edge GPU kernel library, host side: types shared by gpu_host.c and the host functions
 * gpu.py generates. The ABI mirrors are in tvm_abi.h; no TVM or CUDA header is needed.
 */

#pragma once

#include "tvm_abi.h" /* TVMValue, DLTensor, LFV_EXPORT */

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
