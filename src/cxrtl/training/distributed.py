"""DistributedDataParallel plumbing for runs started by ``torchrun``; a no-op in a single process."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler

from ..errors import CxrtlError

log = logging.getLogger(__name__)
T = TypeVar("T")
# How long a collective may wait, e.g. for another node's first process to build a cold image cache
# (hours on a network filesystem); NCCL's own default, 10 minutes, killed such runs before training.
TIMEOUT_ENV = "CXRTL_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 4 * 3600
# BatchNorm buffers are broadcast explicitly before each evaluation (broadcast_buffers below), so DDP need
# not re-send them on every forward; gradients as views of the buckets save a copy and memory.
DDP_OPTIONS: dict[str, Any] = {"broadcast_buffers": False, "gradient_as_bucket_view": True}


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
    dist.init_process_group(backend=backend, timeout=timeout())
    log.info("joined process group: rank %d of %d (%s)", info.rank, info.world_size, backend)
    return info


def timeout():
    """The process group's collective timeout: ``CXRTL_DIST_TIMEOUT_S`` seconds, default 4 hours."""
    from datetime import timedelta

    raw = os.environ.get(TIMEOUT_ENV) or str(DEFAULT_TIMEOUT_S)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise CxrtlError(f"{TIMEOUT_ENV}={raw!r} is not a positive number of seconds; unset it or fix it")
    return timedelta(seconds=seconds)


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


def all_true(flag: bool, device: torch.device | str = "cpu") -> bool:
    """Whether ``flag`` holds on every process (``flag`` itself in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


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
    """-> (module to train, module to evaluate): DDP-wrapped with several processes, compiled if asked.

    Only the training module is compiled: evaluation runs the plain model (under DDP too, as shards may
    differ in batch count and DDP forwards are collective), so ``--compile`` builds one graph, not three.
    """
    net: torch.nn.Module = model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [device.index] if device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=device_ids, **DDP_OPTIONS)
    if compile:
        net = cast(torch.nn.Module, torch.compile(net))
    return net, model


def node_first(fn: Callable[[], T], info: DistInfo, device: torch.device | str, what: str) -> T:
    """``fn()`` on each node's first process (local rank 0), then on the node's other processes.

    What ``fn`` builds on a node-local disk (the image cache) is built once per node while the other
    processes wait in a collective, which the process group's long :func:`timeout` lets last. An error on
    any first process stops every process: that one raises it, the others say ``could not {what}``.
    """
    first = info.local_rank == 0
    result, error = None, None
    if first:
        try:
            result = fn()
        except Exception as exc:  # any failure: the other processes must not wait for hours
            error = exc
    if not all_true(error is None, device):
        if error is not None:
            raise error
        raise CxrtlError(f"another process could not {what}; see the error of local rank 0")
    return result if first else fn()  # type: ignore[return-value]
