/*
 * lfv-edge GPU kernels: the CUDA twins of kernels.c (float32 NCHW, batch 1).
 *
 * gpu.py writes one `extern "C" __global__` entry per graph node, named `<func_name>_kernel0`
 * as TVM names its CUDA kernels, that calls one of the templates below with the node's
 * shapes as compile-time constants (TVM bakes shapes into its kernels the same way). The
 * host function `<func_name>` in the kernel library launches it through the TVM runtime's
 * CUDA module (gpu_host.c). Every kernel computes what its kernels.c namesake computes,
 * with the same accumulation precision where it matters (double for long reductions), so
 * a GPU package and its CPU twin agree to rounding.
 *
 * Launch shapes (gpu.py computes them; the tags go into the module's function table):
 *   conv2d            grid (ceil(Ho*Wo / B), ceil(Co / COB)), block B: thread = output pixel
 *                     × COB output channels
 *   reductions        grid (channels or outputs), block B: one block per output value
 *   everything else   grid ceil(N / B), block B: thread = output element
 */

#pragma once

#include <stdint.h>

#define LFV_BLOCK 256

namespace lfv {

__device__ __forceinline__ int64_t thread_index() {
  return (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
}

/* Block-wide sum and max in double; every thread gets the result. blockDim.x <= LFV_BLOCK. */
__device__ double block_sum(double value) {
  __shared__ double partial[LFV_BLOCK / 32];
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_down_sync(0xffffffffu, value, offset);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) partial[warp] = value;
  __syncthreads();
  double total = 0.0;
  const int warps = (blockDim.x + 31) >> 5;
  for (int i = 0; i < warps; ++i) total += partial[i];
  return total;
}

__device__ double block_max(double value) {
  __shared__ double partial[LFV_BLOCK / 32];
  for (int offset = 16; offset > 0; offset >>= 1) {
    value = fmax(value, __shfl_down_sync(0xffffffffu, value, offset));
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) partial[warp] = value;
  __syncthreads();
  double top = partial[0];
  const int warps = (blockDim.x + 31) >> 5;
  for (int i = 1; i < warps; ++i) top = fmax(top, partial[i]);
  return top;
}

/* Conv2d(CI, CO, K, stride S, padding K/2) + bias [+ ReLU]; weights [CO, CI, K, K]. Each
 * thread computes COB output channels of one output pixel, so every input value it loads
 * feeds COB multiply-adds; the weight loads are the same address across a warp (broadcast). */
template <int CI, int H, int W, int CO, int HO, int WO, int K, int S, bool RELU, int COB>
__device__ __forceinline__ void conv2d(const float* __restrict__ x, const float* __restrict__ w,
                                       const float* __restrict__ b, float* __restrict__ y) {
  const int64_t pixel = thread_index();
  if (pixel >= (int64_t)HO * WO) return;
  const int oy = (int)(pixel / WO), ox = (int)(pixel % WO);
  const int co0 = blockIdx.y * COB;
  constexpr int PAD = K / 2;
  float acc[COB];
#pragma unroll
  for (int j = 0; j < COB; ++j) acc[j] = 0.0f;
  const int iy0 = oy * S - PAD, ix0 = ox * S - PAD;
  for (int c = 0; c < CI; ++c) {
    const float* __restrict__ plane = x + (int64_t)c * H * W;
#pragma unroll
    for (int ky = 0; ky < K; ++ky) {
      const int iy = iy0 + ky;
      if (PAD > 0 && (iy < 0 || iy >= H)) continue;
#pragma unroll
      for (int kx = 0; kx < K; ++kx) {
        const int ix = ix0 + kx;
        if (PAD > 0 && (ix < 0 || ix >= W)) continue;
        const float v = __ldg(plane + (int64_t)iy * W + ix);
#pragma unroll
        for (int j = 0; j < COB; ++j) {
          const int co = co0 + j < CO ? co0 + j : CO - 1; /* clamped: stored only if < CO */
          acc[j] = fmaf(v, __ldg(w + ((co * CI + c) * K + ky) * K + kx), acc[j]);
        }
      }
    }
  }
#pragma unroll
  for (int j = 0; j < COB; ++j) {
    const int co = co0 + j;
    if (co < CO) {
      float r = acc[j] + __ldg(b + co);
      if (RELU) r = fmaxf(r, 0.0f);
      y[(int64_t)co * HO * WO + pixel] = r;
    }
  }
}

/* Conv2d(C, C, 3, stride S, padding 1, groups C) + bias [+ ReLU]; weights [C, 1, 3, 3]. */
template <int C, int H, int W, int HO, int WO, int S, bool RELU>
__device__ __forceinline__ void dwconv2d(const float* __restrict__ x, const float* __restrict__ w,
                                         const float* __restrict__ b, float* __restrict__ y) {
  const int64_t i = thread_index();
  if (i >= (int64_t)C * HO * WO) return;
  const int c = (int)(i / ((int64_t)HO * WO));
  const int rest = (int)(i % ((int64_t)HO * WO));
  const int oy = rest / WO, ox = rest % WO;
  const float* __restrict__ plane = x + (int64_t)c * H * W;
  float acc = 0.0f;
#pragma unroll
  for (int ky = 0; ky < 3; ++ky) {
    const int iy = oy * S - 1 + ky;
    if (iy < 0 || iy >= H) continue;
#pragma unroll
    for (int kx = 0; kx < 3; ++kx) {
      const int ix = ox * S - 1 + kx;
      if (ix < 0 || ix >= W) continue;
      acc = fmaf(__ldg(plane + (int64_t)iy * W + ix), __ldg(w + c * 9 + ky * 3 + kx), acc);
    }
  }
  float r = acc + __ldg(b + c);
  if (RELU) r = fmaxf(r, 0.0f);
  y[i] = r;
}

template <int64_t N>
__device__ __forceinline__ void relu(const float* __restrict__ x, float* __restrict__ y) {
  const int64_t i = thread_index();
  if (i < N) y[i] = fmaxf(x[i], 0.0f);
}

template <int64_t N, bool RELU>
__device__ __forceinline__ void add(const float* __restrict__ a, const float* __restrict__ b,
                                    float* __restrict__ y) {
  const int64_t i = thread_index();
  if (i >= N) return;
  float r = a[i] + b[i];
  if (RELU) r = fmaxf(r, 0.0f);
  y[i] = r;
}

/* MaxPool2d(2, 2), floor. */
template <int C, int H, int W, int HO, int WO>
__device__ __forceinline__ void maxpool2(const float* __restrict__ x, float* __restrict__ y) {
  const int64_t i = thread_index();
  if (i >= (int64_t)C * HO * WO) return;
  const int c = (int)(i / ((int64_t)HO * WO));
  const int rest = (int)(i % ((int64_t)HO * WO));
  const int oy = rest / WO, ox = rest % WO;
  const float* r0 = x + ((int64_t)c * H + 2 * oy) * W + 2 * ox;
  const float* r1 = r0 + W;
  y[i] = fmaxf(fmaxf(r0[0], r0[1]), fmaxf(r1[0], r1[1]));
}

/* [1,C,H,W] -> [1,C]: one block per channel, summed in double like kernels.c. */
template <int C, int64_t HW>
__device__ __forceinline__ void global_avg_pool(const float* __restrict__ x, float* __restrict__ y) {
  const int c = blockIdx.x;
  const float* __restrict__ plane = x + (int64_t)c * HW;
  double sum = 0.0;
  for (int64_t i = threadIdx.x; i < HW; i += blockDim.x) sum += (double)plane[i];
  sum = block_sum(sum);
  if (threadIdx.x == 0) y[c] = (float)(sum / (double)HW);
}

/* [1,K] x [M,K]^T + [M] -> [1,M]: one block per output, dot product in double. */
template <int K, int M>
__device__ __forceinline__ void dense(const float* __restrict__ x, const float* __restrict__ w,
                                      const float* __restrict__ b, float* __restrict__ y) {
  const int m = blockIdx.x;
  double acc = 0.0;
  for (int k = threadIdx.x; k < K; k += blockDim.x) acc += (double)x[k] * (double)w[(int64_t)m * K + k];
  acc = block_sum(acc);
  if (threadIdx.x == 0) y[m] = (float)((double)b[m] + acc);
}

/* Softmax over the last axis of [1,M]: one block, max and sum in double. */
template <int M>
__device__ __forceinline__ void softmax(const float* __restrict__ x, float* __restrict__ y) {
  double top = (double)x[0];
  for (int i = threadIdx.x; i < M; i += blockDim.x) top = fmax(top, (double)x[i]);
  top = block_max(top);
  double sum = 0.0;
  for (int i = threadIdx.x; i < M; i += blockDim.x) sum += exp((double)x[i] - top);
  sum = block_sum(sum);
  for (int i = threadIdx.x; i < M; i += blockDim.x) y[i] = (float)(exp((double)x[i] - top) / sum);
}

/* Softmax over C of [1,C,H,W] at every pixel (segmentation masks): thread = pixel. */
template <int C, int64_t HW>
__device__ __forceinline__ void softmax_channels(const float* __restrict__ x, float* __restrict__ y) {
  const int64_t p = thread_index();
  if (p >= HW) return;
  float top = x[p];
#pragma unroll 4
  for (int c = 1; c < C; ++c) top = fmaxf(top, x[c * HW + p]);
  double sum = 0.0;
#pragma unroll 4
  for (int c = 0; c < C; ++c) {
    const float e = expf(x[c * HW + p] - top);
    y[c * HW + p] = e;
    sum += (double)e;
  }
  const float scale = (float)(1.0 / sum);
#pragma unroll 4
  for (int c = 0; c < C; ++c) y[c * HW + p] *= scale;
}

/* F.interpolate(mode="nearest"), integer factors: output row y reads row y / FH. */
template <int C, int H, int W, int HO, int WO>
__device__ __forceinline__ void upsample_nearest(const float* __restrict__ x, float* __restrict__ y) {
  const int64_t i = thread_index();
  if (i >= (int64_t)C * HO * WO) return;
  const int c = (int)(i / ((int64_t)HO * WO));
  const int rest = (int)(i % ((int64_t)HO * WO));
  const int oy = rest / WO, ox = rest % WO;
  y[i] = x[((int64_t)c * H + oy / (HO / H)) * W + ox / (WO / W)];
}

/* torch's source coordinate for align_corners=False, as kernels.c's bilinear_coord. */
__device__ __forceinline__ void bilinear_coord(int dst, int f, int size, int* i0, int* i1, float* l0,
                                               float* l1) {
  double src = ((double)dst + 0.5) / (double)f - 0.5;
  if (src < 0.0) src = 0.0;
  int lo = (int)src;
  if (lo > size - 1) lo = size - 1;
  double lambda = src - (double)lo;
  if (lambda > 1.0) lambda = 1.0;
  *i0 = lo;
  *i1 = lo < size - 1 ? lo + 1 : lo;
  *l1 = (float)lambda;
  *l0 = (float)(1.0 - lambda);
}

/* F.interpolate(mode="bilinear", align_corners=False), integer factors. */
template <int C, int H, int W, int HO, int WO>
__device__ __forceinline__ void upsample_bilinear(const float* __restrict__ x, float* __restrict__ y) {
  const int64_t i = thread_index();
  if (i >= (int64_t)C * HO * WO) return;
  const int c = (int)(i / ((int64_t)HO * WO));
  const int rest = (int)(i % ((int64_t)HO * WO));
  const int oy = rest / WO, ox = rest % WO;
  int y0, y1, x0, x1;
  float ly0, ly1, lx0, lx1;
  bilinear_coord(oy, HO / H, H, &y0, &y1, &ly0, &ly1);
  bilinear_coord(ox, WO / W, W, &x0, &x1, &lx0, &lx1);
  const float* r0 = x + ((int64_t)c * H + y0) * W;
  const float* r1 = x + ((int64_t)c * H + y1) * W;
  y[i] = ly0 * (lx0 * r0[x0] + lx1 * r0[x1]) + ly1 * (lx0 * r1[x0] + lx1 * r1[x1]);
}

/* torch.cat([a, b], dim=1) of [1,CA,H,W] and [1,CB,H,W]: two contiguous halves. */
template <int64_t NA, int64_t NB>
__device__ __forceinline__ void concat(const float* __restrict__ a, const float* __restrict__ b,
                                       float* __restrict__ y) {
  const int64_t i = thread_index();
  if (i < NA) {
    y[i] = a[i];
  } else if (i < NA + NB) {
    y[i] = b[i - NA];
  }
}

}  // namespace lfv
