"""Time one forward+backward step of a small model with fused SDPA vs the eager scored attention path.

``OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/attention_cost.py [FLAVOR B T]`` (default debugmodel 4 256).
Paths are timed in interleaved rounds and the fastest round is reported (robust to a shared machine).
"""

import dataclasses
import sys
import time

import torch
import torch.nn.functional as F

from titanwarm.models.llama3 import FLAVORS, Transformer

PATHS = {"sdpa": {}, "eager": dict(attn_impl="eager"),
         "eager+softcap+qk_clip_recording": dict(attn_softcap=50.0, record_max_logit=True)}


def main(flavor: str = "debugmodel", batch: int = 4, seq: int = 256, rounds: int = 3) -> None:
    torch.set_num_threads(1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = torch.randint(0, 512, (batch, seq + 1), generator=torch.Generator().manual_seed(0)).to(device)
    models = {}
    for name, extra in PATHS.items():
        m = Transformer(dataclasses.replace(FLAVORS[flavor], vocab_size=512, max_seq_len=seq, **extra))
        m.init_weights(0)
        models[name] = m.to(device)
    best = {name: float("inf") for name in PATHS}
    for _ in range(rounds + 1):  # the first round warms up
        for name, m in models.items():
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            F.cross_entropy(m(tok[:, :-1]).flatten(0, 1), tok[:, 1:].flatten()).backward()
            if device == "cuda":
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - t) if _ else best[name]
    for name, value in best.items():
        print(f"{flavor} B={batch} T={seq} {device} {name}: {value * 1e3:.0f} ms/step "
              f"({value / best['sdpa']:.2f}x sdpa)")


if __name__ == "__main__":
    main(*[int(a) if a.isdigit() else a for a in sys.argv[1:]])
