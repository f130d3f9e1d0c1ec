/*
 * lfv-edge convert: the TVM runtime functions a kernel library compiled with --system-lib
 * leaves undefined (it expects libtvm_runtime.so to be loaded globally). Loaded RTLD_GLOBAL
 * before such a library, this shim defines them and forwards each to a callback that
 * abi.py installs (the same callbacks that fill the hook slots of ordinary libraries).
 *
 * TVMBackendRegisterSystemLibSymbol is called by the library's constructor for every kernel
 * and hook slot; the kernels are also ordinary ELF exports, so registrations are only kept
 * for a lookup by name (lfv_shim_symbol).
 */

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

typedef struct {
  void* sync_handle;
  int32_t num_task;
} TVMParallelGroupEnv;

typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv* penv, void* cdata);

static void (*set_error_hook)(const char*);
static void* (*alloc_hook)(int, int, uint64_t, int, int);
static int (*free_hook)(int, int, void*);
static int (*launch_hook)(FTVMParallelLambda, void*, int);
static int (*get_func_hook)(void*, const char*, void**);

EXPORT void lfv_shim_set_hooks(void* set_error, void* alloc, void* free_ws, void* launch,
                               void* get_func) {
  set_error_hook = (void (*)(const char*))set_error;
  alloc_hook = (void* (*)(int, int, uint64_t, int, int))alloc;
  free_hook = (int (*)(int, int, void*))free_ws;
  launch_hook = (int (*)(FTVMParallelLambda, void*, int))launch;
  get_func_hook = (int (*)(void*, const char*, void**))get_func;
}

EXPORT void TVMAPISetLastError(const char* message) {
  if (set_error_hook != NULL) set_error_hook(message);
}

EXPORT void* TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes,
                                      int dtype_code_hint, int dtype_bits_hint) {
  if (alloc_hook == NULL) return NULL;
  return alloc_hook(device_type, device_id, nbytes, dtype_code_hint, dtype_bits_hint);
}

EXPORT int TVMBackendFreeWorkspace(int device_type, int device_id, void* ptr) {
  if (free_hook == NULL) return -1;
  return free_hook(device_type, device_id, ptr);
}

EXPORT int TVMBackendParallelLaunch(FTVMParallelLambda flambda, void* cdata, int num_task) {
  if (launch_hook != NULL) return launch_hook(flambda, cdata, num_task);
  TVMParallelGroupEnv env = {NULL, 1};
  (void)num_task;
  return flambda(0, &env, cdata);
}

EXPORT int TVMBackendParallelBarrier(int task_id, TVMParallelGroupEnv* penv) {
  (void)task_id;
  (void)penv;
  return 0; /* tasks run one after another: nothing to wait for */
}

EXPORT int TVMBackendGetFuncFromEnv(void* mod_node, const char* func_name, void** out) {
  if (get_func_hook != NULL) return get_func_hook(mod_node, func_name, out);
  return -1;
}

EXPORT int TVMFuncCall(void* func, void* args, int* arg_type_codes, int num_args, void* ret_val,
                       int* ret_type_code) {
  (void)func;
  (void)args;
  (void)arg_type_codes;
  (void)num_args;
  (void)ret_val;
  (void)ret_type_code;
  TVMAPISetLastError("the kernel calls an external packed function, which is not available");
  return -1;
}

#define MAX_SYMBOLS 8192
static const char* symbol_names[MAX_SYMBOLS];
static void* symbol_pointers[MAX_SYMBOLS];
static int symbol_count;

EXPORT int TVMBackendRegisterSystemLibSymbol(const char* name, void* ptr) {
  if (symbol_count >= MAX_SYMBOLS) return -1;
  symbol_names[symbol_count] = name;
  symbol_pointers[symbol_count] = ptr;
  symbol_count++;
  return 0;
}

EXPORT void* lfv_shim_symbol(const char* name) {
  for (int i = symbol_count - 1; i >= 0; --i) {
    if (strcmp(symbol_names[i], name) == 0) return symbol_pointers[i];
  }
  return NULL;
}
