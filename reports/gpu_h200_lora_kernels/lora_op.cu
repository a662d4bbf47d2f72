// LoraUpdate: y += (x A) B for every token, as one onnxruntime CUDA custom op (domain ondevice.lora).
// Inputs x [..., K], A [K, R], B [R, N], y [..., N] (fp16); outputs y (in place where onnxruntime allows,
// "may inplace" on input 3) and the per-block parts of x A [T, blocks, R] (fp32 scratch). R = 0 (the
// zero-size defaults) is a no-op. Kernels: for A stored [K, R] as shipped, A's reads spread over the card
// (16-byte loads, a block-level reduction into per-block parts: no atomics, no zeroing); B sums the parts,
// rounds x A to fp16 as the MatMul chain does, and splits the rank over 8 warps per 32 output pairs.
// Build: nvcc -O3 -arch=sm_90 -shared -Xcompiler -fPIC -I<onnxruntime headers> lora_op.cu -o liblora.so
#include <climits>
#include <cstdio>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include "onnxruntime_c_api.h"

static const OrtApi* api = nullptr;

__global__ void lora_a(const half* x, const half* a, float* part, int k, int r, int k_per_block) {
  // each block: x . A over its slice of K for every rank column -> part[t][block][r] (no atomics, no zeroing)
  __shared__ float acc_s[2048];  // (256 / (r / 8)) k-groups x r columns = 2048 floats for any r <= 256
  const int chunks = r / 8, kgroups = blockDim.x / chunks;
  const int rc = threadIdx.x % chunks, kg = threadIdx.x / chunks, t = blockIdx.y;
  float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  const int k0 = blockIdx.x * k_per_block, k1 = min(k, k0 + k_per_block);
#pragma unroll 2
  for (int kk = k0 + kg; kk < k1; kk += kgroups) {
    const float xv = __half2float(x[(size_t)t * k + kk]);
    uint4 raw = reinterpret_cast<const uint4*>(a + (size_t)kk * r)[rc];
    const half2* h = reinterpret_cast<const half2*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float2 f = __half22float2(h[i]);
      acc[2 * i] += xv * f.x;
      acc[2 * i + 1] += xv * f.y;
    }
  }
  if (threadIdx.x < kgroups * chunks) {
#pragma unroll
    for (int i = 0; i < 8; ++i) acc_s[kg * r + rc * 8 + i] = acc[i];
  }
  __syncthreads();
  for (int c = threadIdx.x; c < r; c += blockDim.x) {
    float s = 0.f;
#pragma unroll 8
    for (int g = 0; g < kgroups; ++g) s += acc_s[g * r + c];
    part[((size_t)t * gridDim.x + blockIdx.x) * r + c] = s;
  }
}

__global__ void lora_b(const float* part, int blocks, const half* b, const half* y, half* out, int r, int n) {
  // sum lora_a's per-block parts into x A (rounded to fp16, as the MatMul chain does), then y += (x A) B:
  // 32 output pairs x 8 rank slices per block, so B's rows are read by many blocks at once
  __shared__ float s_sum[256];
  __shared__ float s_xa[256];
  __shared__ float2 s_acc[8][32];
  const int t = blockIdx.y, groups = blockDim.x / r, c = threadIdx.x % r, g = threadIdx.x / r;
  float s = 0.f;
  if (g < groups)
#pragma unroll 4
    for (int p = g; p < blocks; p += groups) s += part[((size_t)t * blocks + p) * r + c];
  s_sum[threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.x < r) {
    float total = 0.f;
    for (int q = 0; q < groups; ++q) total += s_sum[q * r + threadIdx.x];
    s_xa[threadIdx.x] = __half2float(__float2half(total));
  }
  __syncthreads();
  const int lane = threadIdx.x % 32, slice = threadIdx.x / 32;  // 8 slices of the rank
  const int j = blockIdx.x * 32 + lane;                          // a pair of outputs
  const half2* b2 = reinterpret_cast<const half2*>(b);
  float2 acc = make_float2(0.f, 0.f);
  if (2 * j < n) {
#pragma unroll 4
    for (int i = slice; i < r; i += 8) {
      float2 w = __half22float2(b2[(size_t)i * (n / 2) + j]);
      acc.x += s_xa[i] * w.x;
      acc.y += s_xa[i] * w.y;
    }
  }
  s_acc[slice][lane] = acc;
  __syncthreads();
  if (slice == 0 && 2 * j < n) {
    for (int q = 1; q < 8; ++q) { acc.x += s_acc[q][lane].x; acc.y += s_acc[q][lane].y; }
    const half2 old = reinterpret_cast<const half2*>(y + (size_t)t * n)[j];
    float2 o = __half22float2(old);
    reinterpret_cast<half2*>(out + (size_t)t * n)[j] = __floats2half2_rn(o.x + acc.x, o.y + acc.y);
  }
}

static void check(OrtStatus* s, const char* what) {
  if (s) {
    fprintf(stderr, "LoraUpdate: %s: %s\n", what, api->GetErrorMessage(s));
    api->ReleaseStatus(s);
  }
}

static size_t dims_of(const OrtValue* v, int64_t* dims, size_t* count) {
  OrtTensorTypeAndShapeInfo* info;
  check(api->GetTensorTypeAndShape(v, &info), "shape");
  check(api->GetDimensionsCount(info, count), "rank");
  check(api->GetDimensions(info, dims, *count), "dims");
  size_t n = 1;
  for (size_t i = 0; i < *count; ++i) n *= (size_t)dims[i];
  api->ReleaseTensorTypeAndShapeInfo(info);
  return n;
}

static OrtStatusPtr compute(void*, OrtKernelContext* ctx) {
  const OrtValue *x, *a, *b, *y;
  check(api->KernelContext_GetInput(ctx, 0, &x), "x");
  check(api->KernelContext_GetInput(ctx, 1, &a), "A");
  check(api->KernelContext_GetInput(ctx, 2, &b), "B");
  check(api->KernelContext_GetInput(ctx, 3, &y), "y");
  int64_t xd[8], ad[8], bd[8], yd[8];
  size_t xn, an, bn, yn;
  const size_t x_count = dims_of(x, xd, &xn), y_count = dims_of(y, yd, &yn);
  dims_of(a, ad, &an);
  dims_of(b, bd, &bn);
  const int k = (int)ad[0], r = (int)ad[1], n = (int)bd[1];
  const int tokens = (int)(x_count / (size_t)k);
  void* stream_ptr;
  check(api->KernelContext_GetGPUComputeStream(ctx, &stream_ptr), "stream");
  cudaStream_t stream = (cudaStream_t)stream_ptr;
  OrtValue *out, *xa;
  check(api->KernelContext_GetOutput(ctx, 0, yd, yn, &out), "out");
  const int kgroups = r > 0 ? 256 / (r / 8 > 0 ? r / 8 : 1) : 1, k_per_block = kgroups * 2;
  const int blocks = r > 0 ? (k + k_per_block - 1) / k_per_block : 0;
  int64_t xad[3] = {tokens, blocks, r};
  check(api->KernelContext_GetOutput(ctx, 1, xad, 3, &xa), "xa");
  void *xp, *ap, *bp, *yp, *op, *xap;
  check(api->GetTensorMutableData(const_cast<OrtValue*>(x), &xp), "x data");
  check(api->GetTensorMutableData(const_cast<OrtValue*>(y), &yp), "y data");
  check(api->GetTensorMutableData(out, &op), "out data");
  static bool told = false;
  if (!told) {  // once: did onnxruntime give the output y's buffer (may-inplace), or does every call copy?
    fprintf(stderr, "LoraUpdate: output %s input y\n", op == yp ? "shares" : "does not share");
    told = true;
  }
  if (op != yp) cudaMemcpyAsync(op, yp, y_count * sizeof(half), cudaMemcpyDeviceToDevice, stream);
  if (r == 0 || tokens == 0) return nullptr;
  if (r % 8 != 0 || r > 256 || n % 2 != 0)
    return api->CreateStatus(ORT_INVALID_ARGUMENT, "LoraUpdate needs rank % 8 == 0, rank <= 256, even out features");
  check(api->GetTensorMutableData(const_cast<OrtValue*>(a), &ap), "A data");
  check(api->GetTensorMutableData(const_cast<OrtValue*>(b), &bp), "B data");
  check(api->GetTensorMutableData(xa, &xap), "xa data");
  lora_a<<<dim3(blocks, tokens), 256, 0, stream>>>((const half*)xp, (const half*)ap, (float*)xap, k, r, k_per_block);
  lora_b<<<dim3((n / 2 + 31) / 32, tokens), 256, 0, stream>>>((const float*)xap, blocks, (const half*)bp,
                                                                 (const half*)op, (half*)op, r, n);
  return nullptr;
}

static OrtCustomOp make_op() {
  OrtCustomOp op{};
  op.version = ORT_API_VERSION;
  op.CreateKernel = [](const OrtCustomOp*, const OrtApi*, const OrtKernelInfo*) -> void* { return (void*)1; };
  op.CreateKernelV2 = [](const OrtCustomOp*, const OrtApi*, const OrtKernelInfo*, void** k) -> OrtStatusPtr {
    *k = (void*)1;
    return nullptr;
  };
  op.GetName = [](const OrtCustomOp*) { return "LoraUpdate"; };
  op.GetExecutionProviderType = [](const OrtCustomOp*) { return "CUDAExecutionProvider"; };
  op.GetInputType = [](const OrtCustomOp*, size_t) { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16; };
  op.GetInputTypeCount = [](const OrtCustomOp*) -> size_t { return 4; };
  op.GetOutputType = [](const OrtCustomOp*, size_t i) {
    return i == 0 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  };
  op.GetOutputTypeCount = [](const OrtCustomOp*) -> size_t { return 2; };
  op.KernelCompute = [](void* k, OrtKernelContext* ctx) { check(compute(k, ctx), "compute"); };
  op.KernelComputeV2 = [](void* k, OrtKernelContext* ctx) -> OrtStatusPtr { return compute(k, ctx); };
  op.KernelDestroy = [](void*) {};
  op.GetInputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
  op.GetOutputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
  op.GetInputMemoryType = [](const OrtCustomOp*, size_t) { return OrtMemTypeDefault; };
  op.GetVariadicInputMinArity = [](const OrtCustomOp*) { return 1; };
  op.GetVariadicInputHomogeneity = [](const OrtCustomOp*) { return 1; };
  op.GetVariadicOutputMinArity = [](const OrtCustomOp*) { return 1; };
  op.GetVariadicOutputHomogeneity = [](const OrtCustomOp*) { return 1; };
  op.GetStartVersion = [](const OrtCustomOp*) { return 1; };
  op.GetEndVersion = [](const OrtCustomOp*) { return INT_MAX; };
  op.GetMayInplace = [](int** in, int** out) -> size_t {  // y's buffer may become the output
    *in = new int[1]{3};
    *out = new int[1]{0};
    return 1;
  };
  op.ReleaseMayInplace = [](int* in, int* out) { delete[] in; delete[] out; };
  op.GetAliasMap = [](int** in, int** out) -> size_t { *in = nullptr; *out = nullptr; return 0; };
  op.ReleaseAliasMap = [](int* in, int* out) { delete[] in; delete[] out; };
  return op;
}

static OrtCustomOp lora_update = make_op();

extern "C" OrtStatus* RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* base) {
  api = base->GetApi(ORT_API_VERSION);
  if (!api) return nullptr;
  OrtCustomOpDomain* domain;
  OrtStatus* s = api->CreateCustomOpDomain("ondevice.lora", &domain);
  if (s) return s;
  if ((s = api->CustomOpDomain_Add(domain, &lora_update))) return s;
  return api->AddCustomOpDomain(options, domain);
}
