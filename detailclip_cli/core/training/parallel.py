"""How the trained modules are spread over the processes: PyTorch's DDP, or FSDP2 with ``--shard``.

Under ``torchrun`` the loop runs every forward pass through :attr:`Parallel.module`:

- **replicated** (the default): ``DistributedDataParallel`` over the objective. Its autograd
  hooks all-reduce (average) each bucket of gradients as soon as the backward has produced
  it, overlapping communication with the rest of the backward; with ``--accum-steps K`` the
  first K - 1 micro-batches run under ``no_sync`` and only the last one's backward reduces.
  The frozen EMA teacher has no gradient and is left alone by DDP; it, and the iBOT centres
  (averaged by the loss over the processes), stay identical everywhere because every process
  applies the same update to the same values.
- **sharded** (``--shard``): FSDP2 (``torch.distributed.fsdp.fully_shard``) on each
  transformer block (image, text and decoder towers, student and teacher alike), then on the
  objective for everything else. Parameters, gradients and AdamW moments live as dim-0
  shards (DTensors); a block's full weights exist only while it runs, and gradients are
  reduce-scattered (averaged) by its backward. The teacher's shards meet the student's
  shards of the same shape, so the EMA update needs no communication. FSDP2 cannot shard a
  0-dim parameter (the logit scale): it stays replicated and its gradient is the one
  averaged here (:meth:`Parallel.reduce_replicated`), one number per step.

A checkpoint is the same files in every mode (the parameter names of the plain objective), so
a run can be resumed replicated, sharded, or on one process: a sharded run gathers the full
state dict to rank 0's CPU to save (``torch.distributed.checkpoint.state_dict``), and each
process reads the checkpoint whole and keeps its shards on resume.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
import torch
from torch import nn

from detailclip_cli.core.distributed import is_distributed, is_main_process, mean_across
from detailclip_cli.core.model.vit import Block
from detailclip_cli.core.store.run import RunFolder


def transformer_blocks(module: nn.Module) -> list[nn.Module]:
    """Every transformer block under ``module``: ours (:class:`Block`) and open_clip's text tower's."""
    from open_clip.transformer import ResidualAttentionBlock  # heavy import, only when sharding

    return [m for m in module.modules() if isinstance(m, (Block, ResidualAttentionBlock))]


class Parallel:
    """The objective as the loop trains it: alone, replicated (DDP) or sharded (FSDP2).

    Build it with :func:`parallelize`. ``module`` is what the loop calls for a forward pass;
    ``objective`` is always the plain objective (its methods, its parameter names).

    Attributes:
        objective: the objective (for a sharded run, its parameters are DTensors).
        module: the objective, or its ``DistributedDataParallel`` wrapper.
        mode: ``"single"``, ``"replicated"`` or ``"sharded"``.
    """

    def __init__(self, objective: nn.Module, module: nn.Module, mode: str, *,
                 template: nn.Module | None = None, replicated: list[nn.Parameter] | None = None):
        self.objective = objective
        self.module = module
        self.mode = mode
        # A sharded run's objective without storage (meta tensors): what a checkpoint is read into
        # and written from, with the plain objective's parameter names and optimiser order.
        self._template = template
        # Parameters FSDP2 leaves whole (0-dim): their gradients are averaged by reduce_replicated.
        self._replicated = replicated or []

    @contextlib.contextmanager
    def micro_batch(self, last: bool) -> Iterator[None]:
        """Run one micro-batch's forward and backward; gradients are reduced only on the ``last``.

        Earlier micro-batches only accumulate locally (DDP's ``no_sync``; FSDP2's
        ``set_requires_gradient_sync(False)``), so a step communicates its gradients once.
        """
        if self.mode == "replicated" and not last:
            with self.module.no_sync():
                yield
            return
        if self.mode == "sharded":
            self.objective.set_requires_gradient_sync(last)
        yield

    def reduce_replicated(self) -> None:
        """Average the gradients FSDP2 left alone (0-dim parameters) over the processes; a no-op
        for the other modes, whose gradients DDP (or nothing, on one process) reduced."""
        grads = [p.grad for p in self._replicated if p.grad is not None]
        if not grads:
            return
        mean = mean_across(torch.stack([g.reshape(()) for g in grads]))
        for g, value in zip(grads, mean):
            g.copy_(value)

    def clip_grad_norm_(self, params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
        """``clip_grad_norm_`` over all ``params``, sharded (DTensor) and whole ones together."""
        if self.mode != "sharded":
            return torch.nn.utils.clip_grad_norm_(params, max_norm)
        from torch.distributed.tensor import DTensor

        grads = [p.grad for p in params if p.grad is not None]
        sharded = [g for g in grads if isinstance(g, DTensor)]
        whole = [g for g in grads if not isinstance(g, DTensor)]
        norms = []
        if sharded:
            norms.append(torch.nn.utils.get_total_norm(sharded).full_tensor())  # the norm over every shard
        if whole:
            norms.append(torch.nn.utils.get_total_norm(whole))
        total = torch.linalg.vector_norm(torch.stack(norms))
        torch.nn.utils.clip_grads_with_norm_(sharded, max_norm, total)
        torch.nn.utils.clip_grads_with_norm_(whole, max_norm, total)
        return total

    # -- checkpoints ---------------------------------------------------------------------------

    def save(self, run: RunFolder, optimizer: torch.optim.Optimizer, step: int,
             scaler: torch.amp.GradScaler | None) -> None:
        """Write a checkpoint from rank 0 (every process must call it: a sharded run gathers first)."""
        if self.mode != "sharded":
            if is_main_process():
                run.save_checkpoint(self.objective, optimizer, step, scaler)
            return
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)

        # Full tensors on rank 0's CPU only (the other ranks get empty dicts).
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(self.objective, options=options)
        optim_state = get_optimizer_state_dict(self.objective, optimizer, options=options)
        if not is_main_process():
            return
        whole = copy.deepcopy(self._template)
        whole.load_state_dict(model_state, assign=True)
        names = self._group_names(optimizer)
        whole_optimizer = _optimizer_like(whole, names, optimizer)
        flat = [n for group in names for n in group]
        index = {name: i for i, name in enumerate(flat)}
        whole_optimizer.load_state_dict({
            "state": {index[name]: value for name, value in optim_state["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in optim_state["param_groups"]],
        })
        run.save_checkpoint(whole, whole_optimizer, step, scaler)

    def load(self, run: RunFolder, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> int:
        """Restore the run's last checkpoint (every process reads it whole); returns its step."""
        if self.mode != "sharded":
            return run.load_checkpoint(self.objective, optimizer, scaler)
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)

        whole = copy.deepcopy(self._template).to_empty(device="cpu")
        names = self._group_names(optimizer)
        whole_optimizer = _optimizer_like(whole, names, optimizer)
        step = run.load_checkpoint(whole, whole_optimizer, scaler)
        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(self.objective, whole.state_dict(), options=options)
        flat = [n for group in names for n in group]
        state = whole_optimizer.state_dict()
        set_optimizer_state_dict(self.objective, optimizer, {
            "state": {flat[i]: value for i, value in state["state"].items()},
            "param_groups": [{**g, "params": [flat[i] for i in g["params"]]} for g in state["param_groups"]],
        }, options=options)
        return step

    def _group_names(self, optimizer: torch.optim.Optimizer) -> list[list[str]]:
        """The parameter names of each of ``optimizer``'s groups, in its order (its state's indices)."""
        name_of = {id(p): name for name, p in self.objective.named_parameters()}
        return [[name_of[id(p)] for p in group["params"]] for group in optimizer.param_groups]


def _optimizer_like(module: nn.Module, names: list[list[str]], optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """An optimiser of ``optimizer``'s class and settings over ``module``'s parameters named ``names``
    (one list per group): the same indices, so its state dict is the one a plain run saves."""
    params = dict(module.named_parameters())
    groups = [{**{k: v for k, v in group.items() if k != "params"}, "params": [params[n] for n in group_names]}
              for group, group_names in zip(optimizer.param_groups, names)]
    return type(optimizer)(groups, **{k: v for k, v in optimizer.defaults.items() if k in ("fused", "foreach")})


def parallelize(objective: nn.Module, *, shard: bool, device: torch.device) -> Parallel:
    """Wrap ``objective`` for this process group (call it before building the optimiser).

    Args:
        objective: the objective, on ``device``, identical on every process.
        shard: FSDP2 instead of DDP (``--shard``).
        device: this process's device.

    Returns:
        A single-process :class:`Parallel` when not distributed.
    """
    if not is_distributed():
        return Parallel(objective, objective, "single")
    if not shard:
        from torch.nn.parallel import DistributedDataParallel

        # find_unused_parameters: an objective may leave trained parameters out of its loss (a
        # term switched off); DDP's static_graph would learn them once but does not support
        # no_sync (accumulation). broadcast_buffers off: the centres are already averaged, and
        # every other buffer is constant.
        ddp = DistributedDataParallel(objective, device_ids=[device] if device.type == "cuda" else None,
                                      broadcast_buffers=False, find_unused_parameters=True,
                                      gradient_as_bucket_view=True)
        return Parallel(objective, ddp, "replicated")
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    template = copy.deepcopy(objective).to("meta")
    scalars = [p for p in objective.parameters() if p.dim() == 0]
    for block in transformer_blocks(objective):
        fully_shard(block)
    fully_shard(objective, ignored_params=set(scalars))
    # The accumulation pass calls this method, not forward: it must gather the root's shards too.
    register_fsdp_forward_method(objective, "contrastive_features")
    return Parallel(objective, objective, "sharded", template=template, replicated=scalars)
