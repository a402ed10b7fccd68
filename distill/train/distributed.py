"""Multi-process training through `torchrun` (DDP); a single process needs none of this.

`torchrun --nproc_per_node N wavedistill ...` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT; `setup()` reads them. A group that torchrun restarts after a worker died (`--max-restarts`)
joins through a store prefix of its attempt (`elastic_store`) and resumes from the newest checkpoint
when the command has `--resume`. NCCL is used on CUDA, gloo on the CPU (the tests run 2 CPU
processes with gloo).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DistributedDataParallel and/or torch.compile wrappers (the model itself otherwise)."""
    model = getattr(model, "_orig_mod", model)  # torch.compile
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)


def setup(device: torch.device) -> DistInfo:
    """Join the process group described by the environment (no-op for a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # Rank 0 validates (teacher sampling can take minutes) while the others wait at a barrier.
        timeout = timedelta(hours=2)
        dist.init_process_group(backend=backend, store=elastic_store(world, timeout), rank=info.rank,
                                world_size=world, timeout=timeout)
    global _HOST_GROUP
    if _HOST_GROUP is None and dist.get_backend() != "gloo":  # also when a launcher initialised the group
        _HOST_GROUP = dist.new_group(backend="gloo")
    return info


def elastic_store(world_size: int, timeout: timedelta) -> dist.Store | None:
    """Under torchrun's elastic agent, its key-value store with a prefix of this attempt; else None (the
    environment's `env://` rendezvous).

    torchrun restarts the whole group after a worker dies (`--max-restarts`), and its workers join the
    agent's store, the same store in every attempt (torch 2.11): without a prefix of their own, the restarted
    ranks read the addresses the dead attempt's ranks published and gloo fails to connect ("connectFullMesh
    failed ... Connection refused"), or they wait on its barrier keys until the timeout."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False,
                          timeout=timeout)
    return dist.PrefixStore(f"wavedistill/attempt_{attempt}", store)


def pick_device(name: str, info_local_rank: int | None = None) -> torch.device:
    """'auto' -> CUDA when available (this process's local rank under torchrun), else CPU."""
    local = int(os.environ.get("LOCAL_RANK", "0")) if info_local_rank is None else info_local_rank
    if name == "auto":
        return torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            from distill.errors import ConfigError

            raise ConfigError(f"train.device={name} but CUDA is not available here; use train.device=cpu or auto")
        if device.index is None:
            device = torch.device(f"cuda:{local}")
    return device


def all_ranks(ok: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """A 0-dim bool flag that is True only if it is True on every rank (a device-side all-reduce:
    the host does not wait). All ranks must skip or apply the same update, or the weights drift apart."""
    if not info.enabled:
        return ok
    value = ok.to(torch.int32).reshape(1)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return value[0].bool()


_HOST_GROUP = None  # a gloo group for host-side flags next to an NCCL default group


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True if `flag` (e.g. "this rank received SIGTERM") is True on any rank. Host-side: under NCCL
    it goes through a gloo group, so it never waits for the GPU."""
    return any_ranks([flag], info)[0]


def any_ranks(flags: list[bool], info: DistInfo) -> list[bool]:
    """`any_rank` of several flags in one host-side all-reduce."""
    if not info.enabled:
        return list(flags)
    value = torch.tensor([int(f) for f in flags], dtype=torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=_HOST_GROUP)
    return [bool(v) for v in value.tolist()]


def gather_objects(obj, info: DistInfo) -> list:
    """The `obj` of every rank, in rank order (a list of one without DDP)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


@contextmanager
def main_only(info: DistInfo, what: str):
    """Run a block on rank 0 only (it receives `info.is_main`); if it fails there, the other ranks
    raise too instead of waiting at the next collective until the timeout."""
    ok = True
    try:
        yield info.is_main
    except BaseException:
        ok = False
        raise
    finally:
        if not main_succeeded(ok, info) and not info.is_main:
            raise RuntimeError(f"{what} failed on rank 0; see its error")


def main_succeeded(ok: bool, info: DistInfo) -> bool:
    """Broadcast whether work done on rank 0 only (validation, checkpoint writing) succeeded, so that
    the other ranks stop too instead of waiting at the next collective until the timeout."""
    if not info.enabled:
        return ok
    flag = [ok]
    dist.broadcast_object_list(flag, src=0)
    return bool(flag[0])


def cleanup(info: DistInfo, wait: bool = True) -> None:
    """Leave the process group (its threads are joined here, not by static destructors at interpreter
    exit, which abort the process when they meet a joinable thread: "terminate called without an active
    exception"). wait: a barrier first, so that no rank tears gloo down while another still talks to it;
    False after an error, when the other ranks may never arrive."""
    global _HOST_GROUP
    if info.enabled and dist.is_initialized():
        if wait:
            dist.barrier()
        _HOST_GROUP = None
        dist.destroy_process_group()
