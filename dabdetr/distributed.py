"""Process-group helpers for torchrun (DDP): nccl on GPUs, gloo on CPUs; no-ops in one process."""

import os

import torch
import torch.distributed as dist


def resolve_device(name):
    """torch.device of a config's device: "auto" is CUDA where torch sees it, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device")
    return device


def init_distributed(device_type):
    """Joins the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK in the environment).

    Returns (rank, world_size, local_rank); (0, 1, 0) when not launched by torchrun.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, 0
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", rank=rank, world_size=world_size)
    return rank, world_size, local_rank


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def world_size():
    return dist.get_world_size() if is_distributed() else 1


def rank():
    return dist.get_rank() if is_distributed() else 0


def is_main_process():
    return rank() == 0


def barrier():
    if is_distributed():
        dist.barrier()


def shutdown():
    """Leaves the process group, all processes together (a no-op in one process). Call it after
    the last collective, once nothing (a DDP model) holds the group any more: a group torn down
    only at interpreter exit can abort there (gloo's threads)."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_mean(values):
    """Mean over processes of a dict of float scalars (one collective)."""
    if not is_distributed() or not values:
        return dict(values)
    names = sorted(values)
    backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    stacked = torch.tensor([float(values[n]) for n in names], dtype=torch.float64, device=backend_device)
    dist.all_reduce(stacked)
    return dict(zip(names, (stacked / dist.get_world_size()).tolist()))


def all_reduce_sum(value):
    """Sum over processes of a number (one collective)."""
    return all_reduce_mean({"value": value})["value"] * world_size()


def all_gather_objects(obj):
    """List of every process's obj (picklable), in rank order."""
    if not is_distributed():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj, source=0):
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=source)
    return box[0]
