"""Data-parallel training under ``torchrun``: the process group, gathers with gradient, reductions.

``torchrun --nproc_per_node N -m detailclip_cli pretrain ...`` starts N processes with
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; the training
loop joins them into one process group (gloo on CPU, NCCL on CUDA, ``LOCAL_RANK`` picking the
GPU). Without those variables everything here is a no-op for a single process.

How a step is split: ``--batch-size`` is the global batch G of an optimiser step. Each of the
W processes reads its own contiguous slice of G / W samples and splits it into K micro-batches
(``--accum-steps``) of b = G / (W K). Row ``r * K * b + j * b + i`` of the global batch is
sample i of micro-batch j of process r: the data order, so results do not depend on W or K.

Why the gradient is the single-process one: per-sample losses are means over b samples, and
the loop backpropagates ``loss / K`` and PyTorch's engine (DDP, or FSDP2 with ``--shard``:
``core/training/parallel.py``) averages gradients over the W processes, which gives the mean
over G. The contrastive loss is computed over all G rows on every process (see
:class:`BatchShard`); the backward of its gather sums what every process and every
micro-batch's pass contributed, times K (the ``1 / K`` above), so after the average over W it is
exactly the gradient of the one global loss.

Shape letters: W processes, K micro-batches, b rows of a micro-batch, E embedding width.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun() -> bool:
    """Whether torchrun (or another launcher setting its variables) started this process.

    ``torchrun --nproc_per_node 1`` counts: its one process joins a group of one, so the run goes
    through the same engine (DDP, NCCL on a GPU) as a larger one.
    """
    return all(v in os.environ for v in TORCHRUN_VARS) and int(os.environ["WORLD_SIZE"]) >= 1


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    """Rank 0, the process that writes the run folder (also before the group is joined)."""
    return rank() == 0 if is_distributed() else os.environ.get("RANK", "0") == "0"


def join_process_group(device: torch.device) -> torch.device:
    """Join torchrun's process group (once) and return this process's device.

    Args:
        device: the resolved ``--device``; a CUDA device becomes ``cuda:LOCAL_RANK``.

    Returns:
        ``device`` itself when not launched by torchrun.
    """
    if not launched_by_torchrun():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    if not is_distributed():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
        atexit.register(_leave_process_group)
    return device


def _leave_process_group() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every process's ``x`` stacked in rank order, (...) -> (W, ...); no gradient."""
    if not is_distributed():
        return x.unsqueeze(0)
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.stack(parts)


def mean_across(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over the processes (``x`` itself in a single process)."""
    if not is_distributed():
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / world_size()


def broadcast_state(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every process (they then start identical)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)


def any_across(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true on any process (every process gets the same answer)."""
    if not is_distributed():
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


class _GatherMicroBatch(torch.autograd.Function):
    """This micro-batch's rows of every process, placed into the step's feature bank.

    Forward: (b, E) local rows -> (W * K * b, E) global rows (the bank, or just the gathered
    rows when there is no bank). Backward: this micro-batch's rows of the incoming gradient,
    summed over the processes (each computed the same global loss), times K (the loop scales
    each micro-batch's loss by 1 / K, but each pass is the gradient of the whole loss).
    """

    @staticmethod
    def forward(ctx, local: torch.Tensor, bank: torch.Tensor | None, micro: int, accum: int):
        gathered = all_gather_rows(local.detach())  # (W, b, E)
        ctx.micro, ctx.accum, ctx.has_bank, ctx.dtype = micro, accum, bank is not None, local.dtype
        if bank is None:
            return gathered.flatten(0, 1)  # (W * b, E)
        full = bank.clone()  # (W, K, b, E)
        full[:, micro] = gathered.to(bank.dtype)
        return full.flatten(0, 2)  # (W * K * b, E)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        w = world_size()
        if ctx.has_bank:
            grad = grad.reshape(w, ctx.accum, -1, grad.shape[-1])[:, ctx.micro]  # (W, b, E)
        else:
            grad = grad.reshape(w, -1, grad.shape[-1])
        grad = grad.contiguous()
        if is_distributed():
            dist.all_reduce(grad)
        return (grad[rank()] * ctx.accum).to(ctx.dtype), None, None, None


@dataclass
class BatchShard:
    """Where a micro-batch sits in its optimiser step's global batch, and the step's contrastive features.

    Attributes:
        offset: the micro-batch's first row in the global batch.
        global_size: G, rows of the global batch (seeds random removal per global row).
        micro: j, which micro-batch of this process's slice.
        accum: K, micro-batches per optimiser step.
        bank: per feature name, every row's features from a no-grad pass over the whole step,
            (W, K, b, E); None without accumulation (the rows are then gathered as they come).
    """

    offset: int
    global_size: int
    micro: int = 0
    accum: int = 1
    bank: dict[str, torch.Tensor] | None = None

    def global_features(self, name: str, local: torch.Tensor) -> torch.Tensor:
        """All rows of the step, with this micro-batch's (of every process) carrying gradient.

        Args:
            name: which feature (a key of :meth:`contrastive_features` of the objective).
            local: (b, E) this micro-batch's features.

        Returns:
            (N, E), N = W * K * b, in global-batch order.
        """
        bank = self.bank[name] if self.bank is not None else None
        if bank is None and self.accum > 1:
            raise ValueError("with gradient accumulation the other micro-batches' rows come from the bank")
        if bank is None and not is_distributed():
            return local
        return _GatherMicroBatch.apply(local, bank, self.micro, self.accum)

    def rows(self, per_row: torch.Tensor, size: int) -> torch.Tensor:
        """This micro-batch's ``size`` rows of each view of a per-row tensor: (V, G, ...) -> (V * size, ...)."""
        return per_row[:, self.offset:self.offset + size].flatten(0, 1)
