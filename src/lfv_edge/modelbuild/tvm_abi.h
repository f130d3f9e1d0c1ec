/*
 * The TVM/DLPack ABI our kernel libraries are called with, mirrored (DLPack v0.3, TVM
 * c_runtime_api.h / c_backend_api.h): no TVM or CUDA header is needed. Included by kernels.c
 * (the CPU library) and gpu_host.h (the GPU libraries' host side).
 */

#pragma once

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

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
_Static_assert(offsetof(DLTensor, shape) == 24, "DLTensor.shape at offset 24");
_Static_assert(offsetof(DLTensor, byte_offset) == 40, "DLTensor.byte_offset at offset 40");

/* Filled by the TVM runtime after dlopen; each library defines it (an exported data symbol). */
extern void (*__TVMAPISetLastError)(const char*);

/* A kernel's error: the runtime reports "<fn>: Check failed: ret == 0 (-1 vs. 0) : <message>",
 * so every message starts with the function's name and says what was expected. */
static inline int fail(const char* fn, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
static inline int fail(const char* fn, const char* fmt, ...) {
  char message[640];
  int used = snprintf(message, sizeof message, "%s: ", fn);
  if (used < 0 || (size_t)used >= sizeof message) used = 0;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(message + used, sizeof message - (size_t)used, fmt, ap);
  va_end(ap);
  if (__TVMAPISetLastError != NULL) __TVMAPISetLastError(message);
  return -1;
}
