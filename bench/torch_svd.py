"""The PyTorch peer of bench/subspace.c: GaLore's reference refresh is one torch.linalg.svd
(full_matrices=False) per matrix in fp32. Times it on the same shapes and thread count.
usage: python3 bench/torch_svd.py [THREADS]"""
import json
import sys
import time

import torch

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
torch.set_num_threads(threads)
torch.manual_seed(0)
for name, m, n, k in [("7b down_proj", 4096, 11008, 2048), ("1b q_proj", 2048, 2048, 2048), ("1b gate_proj", 5461, 2048, 2048)]:
    # the same kind of matrix as bench/subspace.c: a smooth decaying spectrum plus noise
    a = torch.randn(m, k) * torch.pow(2.0, -torch.arange(k) / 256.0)
    g = a @ torch.randn(k, n) / k**0.5 + 1e-3 * torch.randn(m, n)
    t0 = time.perf_counter()
    torch.linalg.svd(g, full_matrices=False)
    dt = time.perf_counter() - t0
    print(json.dumps({"bench": "subspace", "impl": "pytorch", "torch": torch.__version__, "matrix": name,
                      "m": m, "n": n, "threads": threads, "method": "torch.linalg.svd", "seconds": round(dt, 3)}))
