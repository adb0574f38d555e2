"""The PyTorch peer of bench/subspace.c: GaLore's reference refresh is one torch.linalg.svd
(full_matrices=False) per matrix in fp32. Times it on the same shapes and thread count; with
--device cuda, on the GPU, over one matrix of each shape of a 7b layer (the refresh of the whole
model is 32 times that layer's sum: 4 of 4096x4096, 2 of 11008x4096, 1 of 4096x11008).
usage: python3 bench/torch_svd.py [THREADS] [--device cuda]"""
import json
import sys
import time

import torch

args = [a for a in sys.argv[1:] if not a.startswith("--")]
device = "cuda" if "--device" in sys.argv and sys.argv[sys.argv.index("--device") + 1] == "cuda" else "cpu"
threads = int(args[0]) if args and args[0].isdigit() else 2
torch.set_num_threads(threads)
torch.manual_seed(0)
if device == "cuda":
    shapes = [("7b q_proj", 4096, 4096, 2048, 4), ("7b gate_proj", 11008, 4096, 2048, 2), ("7b down_proj", 4096, 11008, 2048, 1)]
else:
    shapes = [("7b down_proj", 4096, 11008, 2048, 1), ("1b q_proj", 2048, 2048, 2048, 1), ("1b gate_proj", 5461, 2048, 2048, 1)]
layer_total = 0.0
for name, m, n, k, per_layer in shapes:
    # the same kind of matrix as bench/subspace.c: a smooth decaying spectrum plus noise
    a = torch.randn(m, k, device=device) * torch.pow(2.0, -torch.arange(k, device=device) / 256.0)
    g = a @ torch.randn(k, n, device=device) / k**0.5 + 1e-3 * torch.randn(m, n, device=device)
    if device == "cuda":
        torch.linalg.svd(g[:64, :64], full_matrices=False)  # library warm-up, not timed
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    torch.linalg.svd(g, full_matrices=False)
    if device == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    layer_total += per_layer * dt
    print(json.dumps({"bench": "subspace", "impl": "pytorch", "torch": torch.__version__, "device": device, "matrix": name,
                      "m": m, "n": n, "threads": threads, "method": "torch.linalg.svd", "seconds": round(dt, 3)}))
if device == "cuda":
    print(json.dumps({"bench": "subspace", "impl": "pytorch", "device": device, "model": "7b",
                      "refresh_seconds_estimate": round(32 * layer_total, 1), "how": "32 x one layer's seven matrices"}))
