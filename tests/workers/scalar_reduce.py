"""Worker for tests/test_parallelize.py: the scalar all-reduce helper and the fault guard's
collective decision across real ranks (gloo); prints one line per check on rank 0."""

import torch
import torch.distributed as dist

from titanwarm.checkpoint.config import Fault
from titanwarm.checkpoint.fault import FaultGuard
from titanwarm.cli import exit_after_run
from titanwarm.distributed.utils import all_reduce_max, all_reduce_mean

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
results = {
    "mean_float": all_reduce_mean(float(rank + 1)),
    "max_float": all_reduce_max(float(10 * rank)),
    "mean_tensor": all_reduce_mean(torch.tensor([rank, 2.0 * rank])).tolist(),
}
guard = FaultGuard(Fault())
guard.signal_name = "SIGTERM" if rank == world - 1 else None
results["fault"] = list(guard.global_values(float(rank)))
if rank == 0:
    for key, value in results.items():
        print(f"{key}={value}", flush=True)
dist.destroy_process_group()
exit_after_run(0)  # no interpreter teardown: see titanwarm.cli.exit_after_run
