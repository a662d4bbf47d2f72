"""The decode roofline on this host, as the benchmark stage computes it (ondevice.measure.engines: the
best numpy copy, bytes read + written per second, over the weight bytes one decode step reads), plus
torch's all-thread copy for comparison."""
import json, sys, time
import torch
sys.path.insert(0, ".")
from ondevice.measure.engines import memory_bandwidth_gb_s, weight_bytes_per_token

x = torch.ones(2 ** 28)
y = torch.empty_like(x)
times = []
for _ in range(6):
    t0 = time.perf_counter(); y.copy_(x); times.append(time.perf_counter() - t0)
bw, mb = memory_bandwidth_gb_s(), weight_bytes_per_token(sys.argv[1]) / 1e6
print(json.dumps({"memory_bandwidth_gb_s": bw, "torch_copy_all_threads_gb_s": round(2 * 2 ** 30 / min(times[1:]) / 1e9, 1),
                  "torch_threads": torch.get_num_threads(), "weight_mb_per_token": round(mb, 1),
                  "roofline_tok_s": round(bw * 1e3 / mb, 2)}))
