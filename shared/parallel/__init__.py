"""Chapter 4's parallelism family: one vocabulary (rank, world size, process group, shard) shared by its modules.

    runtime    starting and stopping torch.distributed under torchrun (hand-written plumbing)
    (the strategies, e.g. data parallelism from scratch, are exported from chapter 4's notebooks)
"""
