"""DistributedDataParallel plumbing for runs started by ``torchrun``; a no-op in a single process."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar, cast

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler

from ..errors import CxrtlError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: rank 0 of world size 1 when not launched by torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_info() -> DistInfo:
    """Read torchrun's environment variables (RANK, WORLD_SIZE, LOCAL_RANK)."""
    try:
        return DistInfo(
            int(os.environ.get("RANK", "0")),
            int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")),
        )
    except ValueError:
        raise CxrtlError("RANK/WORLD_SIZE/LOCAL_RANK are not integers; launch with torchrun") from None


def setup(device_type: str) -> DistInfo:
    """Join the process group when torchrun started several processes (nccl on CUDA, gloo on CPU)."""
    info = env_info()
    if not info.enabled or (dist.is_available() and dist.is_initialized()):
        return info
    if not dist.is_available():
        raise CxrtlError("this PyTorch build has no torch.distributed; run a single process")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend=backend)
    log.info("joined process group: rank %d of %d (%s)", info.rank, info.world_size, backend)
    return info


def start(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the job (see :func:`setup`) -> (this process's place, its device: its own GPU under torchrun)."""
    info = setup(device.type)
    if not info.is_main:  # rank 0 reports; the others only warn
        logging.getLogger("cxrtl").setLevel(logging.WARNING)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    return info, device


def teardown() -> None:
    """Leave the process group if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device | str = "cpu") -> list[float]:
    """Sum a few scalars over all processes (identity in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_flag(flag: bool, device: torch.device | str = "cpu") -> bool:
    """Rank 0's boolean, on every rank (used to stop all ranks when rank 0 hits an error)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics), so evaluation shards see one model."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    with torch.no_grad():
        for buf in module.buffers():
            dist.broadcast(buf, src=0)


class ShardSampler(Sampler[int]):
    """Indices rank, rank+W, ... without padding, for evaluation: metrics are exact sums over shards."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


def train_sampler(dataset, info: DistInfo, seed: int) -> DistributedSampler:
    """This rank's part of a seeded shuffle, reshuffled by ``set_epoch`` (also the sampler of one process)."""
    return DistributedSampler(
        dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed, drop_last=False
    )


def eval_sampler(dataset, info: DistInfo) -> ShardSampler:
    """This rank's in-order shard of an evaluation set."""
    return ShardSampler(len(dataset), info.rank, info.world_size)


def wrap_model(
    model: torch.nn.Module, info: DistInfo, device: torch.device, compile: bool = False
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """-> (module to train, module to evaluate): DDP-wrapped with several processes, compiled if asked."""
    net: torch.nn.Module = model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    # Evaluation bypasses DDP (shards may differ in batch count, and DDP forwards are collective).
    eval_net: torch.nn.Module = model
    if compile:
        net = torch.compile(net)  # type: ignore[assignment]  # compile(Module) returns a Module
        eval_net = torch.compile(model) if info.enabled else net  # type: ignore[assignment]  # as above
    return net, eval_net


def main_first(fn: Callable[[], T], info: DistInfo, device: torch.device | str, what: str) -> T:
    """``fn()`` on rank 0, then on the other ranks (rank 0 may build what they share, e.g. a cache).

    A CxrtlError on rank 0 stops every rank: rank 0 raises it, the others say ``rank 0 could not {what}``.
    """
    result, error = None, None
    if info.is_main:
        try:
            result = fn()
        except CxrtlError as exc:
            error = exc
    if not broadcast_flag(error is None, device):
        if error is not None:
            raise error
        raise CxrtlError(f"rank 0 could not {what}; see its error")
    return cast(T, result) if info.is_main else fn()  # on rank 0, fn() returned (no error raised)
