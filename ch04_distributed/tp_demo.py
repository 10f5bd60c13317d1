"""Tensor parallelism on real ranks: our GPT split across the processes of a torchrun job, checked against the
unsharded model (chapter 4, notebook 05).

    python -m torch.distributed.run --nproc-per-node 2 ch04_distributed/tp_demo.py                # from scratch
    python -m torch.distributed.run --nproc-per-node 2 ch04_distributed/tp_demo.py --impl dtensor [--sequence-parallel]

Every rank builds the same unsharded GPT (same seed) and a copy that it splits: `--impl scratch` with
shared.parallel.tensor.apply_tensor_parallel (Megatron's f/g), `--impl dtensor` with torch's parallelize_module.
It compares the loss, every gradient and the weights with the unsharded model, counts the collectives of one block
and of one step (against the formula), trains both for --steps AdamW steps with gradient clipping, through the
training loop's pieces (shared.training: decay groups, token-weighted accumulation of 2 micro-batches), and rank 0
prints (or writes with --out) the results as JSON. On CPU it uses gloo.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
import warnings

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from shared.model import GPT
from shared.parallel import tensor as tp
from shared.parallel.comm import CollectiveCounter
from shared.parallel.runtime import (add_model_arguments, add_out_argument, distributed, model_config_from_args,
                                     require_torchrun, write_result)
from shared.training import accumulate_gradients, parameter_groups


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", choices=("scratch", "dtensor"), default="scratch")
    parser.add_argument("--sequence-parallel", action="store_true", help="dtensor only: split norms by sequence")
    parser.add_argument("--steps", type=int, default=5, help="AdamW steps compared with single-process training")
    add_model_arguments(parser, batch=4, seq_len=32, n_layer=2, n_head=4, n_embd=64, vocab=512)
    parser.add_argument("--tolerance", type=float, default=1e-5,
                        help="largest absolute difference called equal for one forward/backward")
    parser.add_argument("--train-tolerance", type=float, default=1e-4,
                        help="the same for the weights after --steps AdamW steps (Adam divides by sqrt(v), so it "
                             "amplifies rounding differences in tiny gradients)")
    add_out_argument(parser)
    args = parser.parse_args(argv)
    if args.sequence_parallel and args.impl != "dtensor":
        parser.error("--sequence-parallel needs --impl dtensor")
    if args.steps < 1:
        parser.error("--steps must be positive")
    args.config = model_config_from_args(parser, args)
    return args


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def split_model(model: GPT, args, ctx):
    if args.impl == "scratch":
        return tp.apply_tensor_parallel(model, ctx.group)
    from torch.distributed.device_mesh import init_device_mesh
    mesh = init_device_mesh("cpu", (ctx.world_size,))
    return tp.apply_dtensor_parallel(model, mesh, sequence_parallel=args.sequence_parallel)


def full_gradients(model, args, ctx) -> dict:
    if args.impl == "scratch":
        return tp.gather_full_gradients(model)
    return tp.gather_dtensor_state_dict(model, ctx.world_size, grads=True)


def full_weights(model, args, ctx) -> dict:
    if args.impl == "scratch":
        return tp.gather_full_state_dict(model)
    return tp.gather_dtensor_state_dict(model, ctx.world_size)


class Comm:
    """Our counter for our collectives; torch's CommDebugMode for DTensor's (issued inside its dispatch)."""

    def __init__(self, impl: str):
        if impl == "scratch":
            self.mode = CollectiveCounter()
        else:
            from torch.distributed.tensor.debug import CommDebugMode
            self.mode = CommDebugMode()

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)

    def calls(self) -> dict:
        if isinstance(self.mode, CollectiveCounter):
            return dict(self.mode.calls)
        return {str(op).split(".")[-1]: n for op, n in self.mode.get_comm_counts().items()}

    def bytes(self) -> int | None:
        return sum(self.mode.bytes.values()) if isinstance(self.mode, CollectiveCounter) else None


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def is_split(param: torch.Tensor, split_ids: set) -> bool:
    if hasattr(param, "placements"):
        return any(pl.is_shard() for pl in param.placements)
    return id(param) in split_ids


def replicas_identical(model, ctx) -> bool:
    """Every replicated parameter holds the same values on every rank (nothing drifted apart)."""
    split_ids = {id(getattr(m, n)) for m in tp._parallel_layers(model).values()
                 for n, d in m.shard_dims.items() if d is not None and getattr(m, n) is not None}
    same = True
    for p in model.parameters():
        if is_split(p, split_ids):
            continue
        mine = local_tensor(p).detach().contiguous()
        copies = [torch.empty_like(mine) for _ in range(ctx.world_size)]
        dist.all_gather(copies, mine, group=ctx.group)
        same &= all(torch.equal(c, mine) for c in copies)
    return bool(same)


def clip(model, args, ctx, max_norm: float):
    if args.impl == "scratch":
        return tp.clip_grad_norm_(model, max_norm, ctx.group)
    return tp.clip_grad_norm_dtensor_(model, max_norm)


@record
def main(argv=None) -> None:
    args = parse_args(argv)
    require_torchrun("ch04_distributed/tp_demo.py")
    warnings.filterwarnings("ignore", message="Full backward hook")      # from torch's PrepareModuleInput
    try:                                # an impossible split fails here, in one line, before any rank starts work
        tp.check_tensor_parallel_degree(args.config, int(os.environ["WORLD_SIZE"]))
    except ValueError as e:
        raise SystemExit(f"tp_demo.py: {e}") from None
    with distributed("cpu", timeout_s=120) as ctx:
        result = run(args, ctx)
        if ctx.is_main:
            write_result(result, args.out)


def run(args, ctx) -> dict:
    config = args.config
    torch.manual_seed(0)
    reference = GPT(config)                        # the unsharded model, on every rank
    model = split_model(copy.deepcopy(reference), args, ctx)
    # one batch of random tokens, trained on repeatedly: the loss must fall (the model memorises it)
    batch = torch.randint(args.vocab, (args.batch, args.seq_len + 1), generator=torch.Generator().manual_seed(1))
    x, y = batch[:, :-1], batch[:, 1:]

    # 1. one forward and backward, everything compared with the unsharded model
    _, ref_loss = reference(x, y)
    ref_loss.backward()
    with Comm(args.impl) as fwd:
        _, loss = model(x, y)
    with Comm(args.impl) as bwd:
        loss.backward()
    step_comm = {"forward": fwd.calls(), "backward": bwd.calls(),
                 "bytes": None if fwd.bytes() is None else fwd.bytes() + bwd.bytes()}
    ref_grads = {n: p.grad for n, p in reference.named_parameters()}
    result = {"impl": args.impl + (" + sequence parallel" if args.sequence_parallel else ""),
              "world_size": ctx.world_size, "n_layer": config.n_layer, "tolerance": args.tolerance,
              "train_tolerance": args.train_tolerance,
              "loss_diff": abs(loss.item() - ref_loss.item()),
              "grad_diff": max_diff(full_gradients(model, args, ctx), ref_grads), "grads_checked": len(ref_grads),
              "param_diff": max_diff(full_weights(model, args, ctx), reference.state_dict()),
              "step_comm": step_comm,
              "formula": tp.tensor_parallel_bytes_per_step(config, args.batch, args.seq_len),
              "local_params": sum(local_tensor(p).numel() for p in model.parameters()),
              "total_params": sum(p.numel() for p in reference.parameters())}

    # 2. the collectives of one block, forward and backward separately
    block = model.transformer.h[0]
    h = torch.randn(args.batch, args.seq_len, config.n_embd, generator=torch.Generator().manual_seed(2),
                    requires_grad=True)
    with Comm(args.impl) as fwd:
        out = block(h, None, None, 0, None)           # Block(x, angles, cache, layer, attn_mask)
    with Comm(args.impl) as bwd:
        out.full_tensor().sum().backward() if hasattr(out, "full_tensor") else out.sum().backward()
    result["block_calls"] = {"forward": fwd.calls(), "backward": bwd.calls()}

    # 3. a few optimizer steps with the book's training-loop pieces (chapter 4.1): AdamW's decay groups, and the
    #    token-weighted gradient accumulation over 2 micro-batches; every tensor-parallel rank gets the same data
    opt_ref = torch.optim.AdamW(parameter_groups(reference, 0.1), lr=3e-3)
    opt = torch.optim.AdamW(parameter_groups(model, 0.1), lr=3e-3, foreach=args.impl == "scratch")
    micro = list(zip(x.chunk(2), y.chunk(2)))
    losses, ref_losses, norms, ref_norms, seconds = [], [], [], [], []
    for _ in range(args.steps):
        for m, o, log, norm_log in ((reference, opt_ref, ref_losses, ref_norms), (model, opt, losses, norms)):
            start = time.perf_counter()
            o.zero_grad(set_to_none=True)
            loss, _ = accumulate_gradients(m, micro, group=None if m is reference else ctx.group)
            if m is reference:
                norm = torch.nn.utils.clip_grad_norm_(m.parameters(), 0.5)
            else:
                norm = clip(m, args, ctx, 0.5)
            norm_log.append(norm.item())
            o.step()
            log.append(loss)
        seconds.append(time.perf_counter() - start)
    result.update(steps=args.steps, losses=losses, reference_losses=ref_losses, grad_norms=norms,
                  reference_grad_norms=ref_norms,
                  trained_diff=max_diff(full_weights(model, args, ctx), reference.state_dict()),
                  replicas_identical=replicas_identical(model, ctx),
                  seconds_per_step=statistics.median(seconds))
    return result


if __name__ == "__main__":
    main()
