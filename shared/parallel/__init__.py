"""Chapter 4's parallelism family: one vocabulary (rank, world size, process group, shard) shared by its modules.

    runtime    starting and stopping torch.distributed under torchrun (hand-written plumbing)
    data       data parallelism from scratch: NaiveDataParallel (an all-reduce per parameter, through hooks) and
               BucketedDataParallel (bucketed, asynchronous, overlapping the backward pass), drop-in for torch's
               DistributedDataParallel; counting DDP's all-reduces (notebook 03)
    tensor     tensor parallelism from scratch (Megatron's f/g) and with DTensor (notebook 05)
    comm       counting the collectives a process issues, and their bytes (notebook 05)
    sharded    sharded data parallelism (ZeRO, FSDP2): its memory, communication and checkpoints (notebook 06)
    (the other strategies are exported from chapter 4's notebooks too)
"""
