"""Data-parallel SVI over shards of cells with ``torch.distributed``.

Launch with ``torchrun``; every option of ``cradle-pyro train`` applies::

    torchrun --standalone --nproc_per_node=4 -m cradle_pyro.inference.distributed screen.h5ad \\
        --out runs/cradle --perturbation-key perturbation --control control --epochs 50

Each rank reads the file, builds the same PerturbationData (seeded), starts
from the same parameters and draws minibatches from its own shard of the
training cells (``PerturbationData.batches(shard=(rank, world))``). Every
rank's minibatch loss is an unbiased estimate of the same full-data objective
(the cell plate scales by the split size), so averaging the ranks' gradients
(all-reduce) is SVI with a larger effective batch. Validation loss is averaged
over ranks so all stop together; rank 0 writes checkpoints and the run folder.
Backend: NCCL with one GPU per rank when CUDA is present, else Gloo on CPU.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

from .cli import build_parser, configs_from_options, resolve_train_options, _data_args
from .run_io import save_run, train_from_file


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank()
    try:
        args = build_parser().parse_args(["train", *argv])
        opts = resolve_train_options(args)
        if use_cuda:
            local = int(os.environ.get("LOCAL_RANK", 0))
            torch.cuda.set_device(local)
            opts["device"] = f"cuda:{local}"
        mc, tc = configs_from_options(opts)
        tc.progress = tc.progress and rank == 0
        run = train_from_file(args.input, tc, mc, checkpoint_dir=f"{args.out}/checkpoints",
                              resume=args.resume,
                              **_data_args(opts, opts["perturbation_key"], opts["control"]))
        # data-parallel SVI keeps one set of global parameters: check it did
        digests = [None] * dist.get_world_size()
        dist.all_gather_object(digests, parameter_digest(run.model, run.guide))
        if rank == 0:
            if len(set(digests)) != 1:
                raise RuntimeError("the ranks' parameters differ after training; "
                                   "the run was not saved")
            save_run(run, args.out)
            seconds = float(run.history["train_seconds"].sum())
            print(f"rank 0 of {dist.get_world_size()}: trained {len(run.history)} epochs "
                  f"({seconds:.1f} s in training passes); parameters identical on all ranks "
                  f"({digests[0][:12]}); run saved in {args.out}")
    finally:
        dist.barrier()
        dist.destroy_process_group()
    return 0


def parameter_digest(*modules) -> str:
    """SHA-256 of every parameter of ``modules`` (names in order, values as bytes)."""
    import hashlib

    h = hashlib.sha256()
    for module in modules:
        for name, p in sorted(module.named_parameters()):
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


if __name__ == "__main__":
    sys.exit(main())
