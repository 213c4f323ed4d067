"""torchrun worker: every rank reads its part of one epoch of shuffled windows from an arange token
folder; rank 0 gathers the window ids and reports whether they are disjoint and cover the epoch.

    torchrun --nproc_per_node=2 tests/workers/token_windows.py FOLDER TOKENIZER SEQ_LEN
"""

import sys

import torch.distributed as dist

from titanwarm.cli import exit_after_run
from titanwarm.data.token_folder import open_tokens
from titanwarm.data.window_loader import WindowLoader
from titanwarm.tokenizers import load_tokenizer

folder, tokenizer_path, seq_len = sys.argv[1], sys.argv[2], int(sys.argv[3])
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
src = [open_tokens(folder, "train", tokenizer_path, load_tokenizer(tokenizer_path).vocab_size, 0.0)]
loader = WindowLoader(src, seq_len, 4, rank, world, shuffle=True, seed=11)
n = src[0].tokens // (seq_len + 1)
mine = [int(w) // (seq_len + 1) for _ in range(n // (4 * world)) for w in next(loader)[0][:, 0]]
gathered: list = [None] * world
dist.all_gather_object(gathered, mine)
if rank == 0:
    sets = [set(g) for g in gathered]
    disjoint = all(not (a & b) for i, a in enumerate(sets) for b in sets[i + 1:])
    covered = len(set().union(*sets))
    print(f"{'disjoint' if disjoint else 'OVERLAPPING'} windows: {covered} of {n} covered", flush=True)
dist.destroy_process_group()
exit_after_run(0)  # no interpreter teardown: see titanwarm.cli.exit_after_run
