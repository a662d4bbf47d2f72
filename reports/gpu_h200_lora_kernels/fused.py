"""What a LoRA branch would cost as two hand-written kernels (no cuBLAS, no separate Add) or one, and the floor of 32 empty
kernels, each captured in one CUDA graph of 32 branches at Phi-3.5-mini's qkv_proj shape
(x [3072] fp16, r 64, out 9216): a feasibility check for a fused LoRA op, not something we ship.
  xa[r]  = sum_k x[k] A^T[r, k]        one block per r, fp32 accumulation
  y[n]  += sum_r xa[r] B[r, n]          one thread per n
usage: fused.py (CuPy, in the device image)"""
import json
import cupy as cp

K, R, N, L = 3072, 64, 9216, 32
SRC = r'''
#include <cuda_fp16.h>
extern "C" __global__ void lora_a(const half* x, const half* at, float* xa, int k) {
  __shared__ float part[256];
  const half* row = at + (size_t)blockIdx.x * k;
  float s = 0.f;
  for (int i = threadIdx.x; i < k; i += blockDim.x) s += __half2float(x[i]) * __half2float(row[i]);
  part[threadIdx.x] = s; __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w >>= 1) { if (threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w]; __syncthreads(); }
  if (threadIdx.x == 0) xa[blockIdx.x] = part[0];
}
extern "C" __global__ void lora_b(const float* xa, const half* b, half* y, int r, int n) {
  __shared__ float s_xa[512];
  for (int i = threadIdx.x; i < r; i += blockDim.x) s_xa[i] = xa[i];
  __syncthreads();
  int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= n) return;
  float acc = 0.f;
  for (int i = 0; i < r; ++i) acc += s_xa[i] * __half2float(b[(size_t)i * n + j]);
  y[j] = __float2half(__half2float(y[j]) + acc);
}
// one kernel: every block recomputes xa (A^T read from L2, 393 KB), then its slice of y
extern "C" __global__ void lora_ab(const half* x, const half* at, const half* b, half* y, int k, int r, int n) {
  __shared__ float s_xa[64];
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  for (int q = warp; q < r; q += warps) {
    const half2* row = reinterpret_cast<const half2*>(at + (size_t)q * k);
    const half2* xv = reinterpret_cast<const half2*>(x);
    float s = 0.f;
    for (int i = lane; i < k / 2; i += 32) { float2 a = __half22float2(row[i]), v = __half22float2(xv[i]); s += a.x * v.x + a.y * v.y; }
    for (int o = 16; o > 0; o >>= 1) s += __shfl_down_sync(0xffffffff, s, o);
    if (lane == 0) s_xa[q] = s;
  }
  __syncthreads();
  int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= n) return;
  float acc = 0.f;
  for (int i = 0; i < r; ++i) acc += s_xa[i] * __half2float(b[(size_t)i * n + j]);
  y[j] = __float2half(__half2float(y[j]) + acc);
}
extern "C" __global__ void empty() {}
// tuned pair: A split over K, one 16-byte load per thread and one atomic per warp; B two outputs per thread,
// unrolled; B also zeroes the other xa buffer, which the next branch accumulates into
extern "C" __global__ void lora_a2(const half* x, const half* at, float* xa, int k) {
  int v = blockIdx.x * blockDim.x + threadIdx.x, per_row = k / 8;
  int q = v / per_row, c = v % per_row;
  uint4 a = reinterpret_cast<const uint4*>(at)[v], xv = reinterpret_cast<const uint4*>(x)[c];
  const half2* ah = reinterpret_cast<const half2*>(&a); const half2* xh = reinterpret_cast<const half2*>(&xv);
  float s = 0.f;
  #pragma unroll
  for (int i = 0; i < 4; ++i) { float2 p = __half22float2(ah[i]), w = __half22float2(xh[i]); s += p.x * w.x + p.y * w.y; }
  for (int o = 16; o > 0; o >>= 1) s += __shfl_down_sync(0xffffffff, s, o);
  if ((threadIdx.x & 31) == 0) atomicAdd(xa + q, s);
}
extern "C" __global__ void lora_b2(const float* xa, float* xa_next, const half* b, half* y, int r, int n) {
  __shared__ float s_xa[64];
  if (threadIdx.x < r) s_xa[threadIdx.x] = xa[threadIdx.x];
  if (blockIdx.x == 0 && threadIdx.x < r) xa_next[threadIdx.x] = 0.f;
  __syncthreads();
  int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (2 * j >= n) return;
  const half2* b2 = reinterpret_cast<const half2*>(b);
  float2 acc = make_float2(0.f, 0.f);
  #pragma unroll 16
  for (int i = 0; i < 64; ++i) { float2 w = __half22float2(b2[(size_t)i * (n / 2) + j]); acc.x += s_xa[i] * w.x; acc.y += s_xa[i] * w.y; }
  half2* y2 = reinterpret_cast<half2*>(y);
  float2 old = __half22float2(y2[j]);
  y2[j] = __floats2half2_rn(old.x + acc.x, old.y + acc.y);
}
'''
mod = cp.RawModule(code=SRC, options=("-std=c++17",))
lora_a, lora_b, lora_ab, empty, lora_a2, lora_b2 = (mod.get_function(f) for f in ("lora_a", "lora_b", "lora_ab", "empty",
                                                                                    "lora_a2", "lora_b2"))
rng = cp.random.default_rng(0)
x = rng.standard_normal(K, dtype=cp.float32).astype(cp.float16)
A = [(rng.standard_normal((K, R), dtype=cp.float32) / K ** 0.5).astype(cp.float16) for _ in range(L)]
AT = [cp.ascontiguousarray(a.T) for a in A]
B = [(rng.standard_normal((R, N), dtype=cp.float32) * 0.02).astype(cp.float16) for _ in range(L)]
xa = cp.zeros(R, cp.float32)
xa2 = [cp.zeros(R, cp.float32), cp.zeros(R, cp.float32)]


def fused(y):
    for i in range(L):
        lora_a((R,), (256,), (x, AT[i], xa, cp.int32(K)))
        lora_b(((N + 255) // 256,), (256,), (xa, B[i], y, cp.int32(R), cp.int32(N)))


def tuned_pair(y):
    for i in range(L):
        cur, nxt = xa2[i % 2], xa2[(i + 1) % 2]
        lora_a2((R * K // 8 // 256,), (256,), (x, AT[i], cur, cp.int32(K)))
        lora_b2(((N // 2 + 255) // 256,), (256,), (cur, nxt, B[i], y, cp.int32(R), cp.int32(N)))


def one_kernel(y):
    for i in range(L):
        lora_ab(((N + 511) // 512,), (512,), (x, AT[i], B[i], y, cp.int32(K), cp.int32(R), cp.int32(N)))


def empty_kernels(y):  # the floor: 32 launches of a kernel that does nothing
    for i in range(L):
        empty((1,), (32,), ())


def cublas(y):
    for i in range(L):
        y += (x[None] @ A[i]) @ B[i]


def clock(step, replays=2000):
    y = cp.zeros(N, cp.float16)
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        step(y)  # warm (compile, cuBLAS handles)
        s.begin_capture()
        step(y)
        g = s.end_capture()
        for _ in range(20):
            g.launch(s)
        s.synchronize()
        start, end = cp.cuda.Event(), cp.cuda.Event()
        best = []
        for _ in range(5):
            start.record(s)
            for _ in range(replays):
                g.launch(s)
            end.record(s)
            end.synchronize()
            best.append(cp.cuda.get_elapsed_time(start, end) * 1e3 / replays)
    return round(min(best), 2)


yf, y1, y2, yc = cp.zeros(N, cp.float16), cp.zeros(N, cp.float16), cp.zeros(N, cp.float16), cp.zeros((1, N), cp.float16)
fused(yf)
one_kernel(y1)
tuned_pair(y2)
cublas(yc)
diff = max(float(cp.abs(v.astype(cp.float32) - yc[0].astype(cp.float32)).max()) for v in (yf, y1, y2))
for rep in range(3):
    row = {"rep": rep, "max_abs_diff": diff}
    for name, step in (("fused_two_kernels", fused), ("tuned_pair", tuned_pair), ("one_kernel", one_kernel), ("empty_kernel_floor", empty_kernels)):
        try:
            row[f"{name}_us_32_branches"] = clock(step)
        except Exception as e:  # e.g. an allocation inside the capture
            row[f"{name}_error"] = str(e)[:200]
    print(json.dumps(row), flush=True)
