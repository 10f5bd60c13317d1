"""3D parallelism as a process-group grid: `init_device_mesh` over pipeline x data x tensor parallel ranks
(chapter 4, notebook 07).

    python -m torch.distributed.run --nproc-per-node 8 ch04_distributed/mesh_demo.py --shape 2 2 2

Every rank finds its coordinates in the mesh and the members of its three groups (the ranks it talks to for each
kind of parallelism), and proves each group works with an all-reduce of the members' global ranks. Rank 0 prints
(or writes with --out) the grid as JSON. On CPU it uses gloo.
"""
from __future__ import annotations

import argparse
import math
import os

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.elastic.multiprocessing.errors import record

from shared.parallel.runtime import add_out_argument, distributed, require_torchrun, write_result

DIMS = ("pp", "dp", "tp")        # outermost to innermost: tensor-parallel ranks are neighbours (one node, NVLink)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=[2, 2, 2], metavar=("PP", "DP", "TP"),
                        help="pipeline x data x tensor parallel degrees; their product is the number of ranks")
    add_out_argument(parser)
    return parser.parse_args(argv)


@record
def main(argv=None) -> None:
    args = parse_args(argv)
    require_torchrun("ch04_distributed/mesh_demo.py", nproc=8)
    world = int(os.environ["WORLD_SIZE"])
    if min(args.shape) < 1 or math.prod(args.shape) != world:
        raise SystemExit(f"mesh_demo.py: --shape {' x '.join(map(str, args.shape))} needs "
                         f"{math.prod(args.shape)} ranks, this job has {world}")
    with distributed("cpu", timeout_s=120) as ctx:
        mesh = init_device_mesh("cpu", tuple(args.shape), mesh_dim_names=DIMS)
        me = {"rank": ctx.rank, "coordinate": dict(zip(DIMS, mesh.get_coordinate())), "groups": {}, "sums": {}}
        for dim in DIMS:
            group = mesh.get_group(dim)
            me["groups"][dim] = dist.get_process_group_ranks(group)
            total = torch.tensor(float(ctx.rank))
            dist.all_reduce(total, group=group)          # a real collective over this group only
            me["sums"][dim] = int(total.item())
        everyone = [None] * ctx.world_size
        dist.all_gather_object(everyone, me, group=ctx.group)
        if ctx.is_main:
            result = {"shape": dict(zip(DIMS, args.shape)), "mesh": mesh.mesh.tolist(), "ranks": everyone}
            write_result(result, args.out)


if __name__ == "__main__":
    main()
