"""The image-only self-supervised objectives DetailCLIP builds on: DINO, BYOL and SimCLR.

``distill --method`` trains one of them without a teacher model (iBOT, DetailCLIP's own image
half and the default, is :class:`~detailclip_cli.core.method.distill.SelfDistillObjective`).
Each learns from two augmented global views of every image, DINO also from local crops, and
each keeps the encoder's [CLS] token, the token CLIP uses, as the image's representation. They
share the stages of :mod:`detailclip_cli.core.method.stages` (teacher pass, token removal and
student encoder, local crops, reconstruction); token removal and reconstruction run only when
the run asks for them. What keeps each from mapping every image to one point:

- :class:`DinoObjective`: the teacher's [CLS] distribution is centred (a running mean of its
  logits is subtracted, so no prototype can win for every image) and sharpened (a low
  temperature, so it cannot flatten to uniform either); the teacher is an EMA of the student.
- :class:`ByolObjective`: an online network (encoder, projector, predictor) predicts an EMA
  target network's projection of the other view. The target gets no gradient (stop-gradient)
  and trails the online weights, and the predictor must bridge the two; together they keep
  the constant solution from being reached, without negatives.
- :class:`SimCLRObjective`: NT-Xent pushes each view towards its partner and away from every
  other view in the (global) batch: the negatives alone hold the embeddings apart.

Shape letters: B batch, V global views (2), N local crops, L patch tokens, K kept tokens,
D width, E projection width, C prototypes.
"""

from __future__ import annotations

import torch
from torch import nn

from detailclip_cli.core.choices import Removal
from detailclip_cli.core.config import ConfigError, TrainConfig
from detailclip_cli.core.distributed import BatchShard
from detailclip_cli.core.method import stages
from detailclip_cli.core.method.collapse import NEGATIVES_REMEDIES, CollapseMonitor, teacher_entropy
from detailclip_cli.core.method.distill import _DistillObjective, cls_spread, teacher_cls_logits
from detailclip_cli.core.method.losses import ClsDistillLoss, byol_loss, nt_xent_loss, pooled_mean, weighted_total
from detailclip_cli.core.method.objective import SSLProjection
from detailclip_cli.core.method.stages import NUM_VIEWS, stage
from detailclip_cli.core.method.teacher import make_teacher
from detailclip_cli.core.model.detailclip import DetailCLIP
from detailclip_cli.core.model.removal import Removal as TokenRemoval


class ByolMLP(nn.Module):
    """BYOL's projector and predictor: Linear -> LayerNorm -> ReLU -> Linear, (..., in_dim) -> (..., out_dim).

    LayerNorm where BYOL uses BatchNorm, as in SLIP's SimCLR MLP (:class:`SSLProjection`): it
    normalises each sample on its own, so the loss stays a mean over samples (a step split into
    micro-batches or processes computes what one batch would), and the EMA target, which runs
    in eval mode, normalises exactly as the online network does.

    Args:
        in_dim: input width.
        hidden_dim: hidden width (``ssl_mlp_dim``, BYOL's 4096).
        out_dim: output width (``ssl_emb_dim``, BYOL's 256).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.ReLU(),
                                 nn.Linear(hidden_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) -> (..., out_dim)."""
        return self.net(x)


def _image_tower_only(model: DetailCLIP, *unused: nn.Module | None) -> None:
    """Freeze what an image-only objective does not train: the text tower, the image projection,
    the logit scale, and ``unused`` parts of the model (None entries skipped)."""
    for part in (model.text, model.image_proj, model.logit_scale, *unused):
        if part is not None:
            part.requires_grad_(False)


def multi_crop_cls_loss(cls_loss: ClsDistillLoss, *, teacher_out: torch.Tensor, student_out: torch.Tensor,
                        local_out: torch.Tensor | None, teacher_temp: float, student_temp: float) -> torch.Tensor:
    """DINO's loss: the teacher's centred, sharpened [CLS] distribution of each global view is
    the target of the student's [CLS] of every other global view and of every local crop.

    Args:
        cls_loss: holds the centre; the local term reads it, then the global term moves it
            once, by the global views' teacher logits.
        teacher_out: (V, B, C) the teacher's [CLS] logits of the global views.
        student_out: (V, B, C) the student's [CLS] logits of the same views.
        local_out: (N, B, C) the student's [CLS] logits of N local crops, or None.
        teacher_temp: the teacher's sharpening temperature.
        student_temp: the student's temperature.

    Returns:
        Scalar: the mean cross-entropy H(teacher_v, student_s) over the V (V - 1) pairs of
        different global views and the V N (global, local) pairs.
    """
    local = None
    if local_out is not None:
        local = cls_loss.local_to_global(teacher_out=teacher_out, student_out=local_out,
                                         teacher_temp=teacher_temp, student_temp=student_temp)
    glob = cls_loss(teacher_out=teacher_out, student_out=student_out, teacher_temp=teacher_temp,
                    student_temp=student_temp)
    if local is None:
        return glob
    v, n = teacher_out.shape[0], local_out.shape[0]
    return pooled_mean((glob, v * (v - 1)), (local, v * n))


class DinoObjective(_DistillObjective):
    """DINO: [CLS] self-distillation from an EMA teacher, multi-crop; no patch loss.

    The teacher (an EMA of the student's ViT and distillation head) sees the two global views
    whole; its centred, sharpened [CLS] distribution of each is the target of the student's
    [CLS] of the other global view and of every local crop. The student sees the global views
    through the configured token removal (``none`` unless the run asks) and reconstructs
    pixels when the model has a decoder.

    Args:
        model: the student; needs the distillation head (the DINO head).
        cfg: training settings: ``teacher_temp_cls``, ``student_temp``, ``center_momentum``,
            the EMA schedule, ``w_cls`` (weighs the ``dino`` term) and ``w_rec``.
    """

    summary = "dino: [CLS] self-distillation, EMA teacher, multi-crop"

    def __init__(self, model: DetailCLIP, cfg: TrainConfig):
        if model.head is None:
            raise ConfigError("dino needs the distillation head (the model config has head: null)")
        super().__init__(model, cfg)
        self.teacher = make_teacher(model.image_tower())
        self.cls_loss = ClsDistillLoss(model.cfg.head.out_dim, cfg.center_momentum)
        _image_tower_only(model)
        self.monitor = CollapseMonitor(dim=model.visual.width, classes=model.cfg.head.out_dim)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor, text: torch.Tensor | None = None, *,
                step: int, local_views: torch.Tensor | None = None,
                shard: BatchShard | None = None) -> dict[str, torch.Tensor]:
        """One step's losses (arguments: :meth:`_DistillObjective.forward`): ``{"rec", "dino",
        "loss"}``, ``rec`` only with a decoder."""
        model, c = self.model, self.cfg
        images = torch.cat([view1, view2])  # (VB, 3, H, W)
        teacher_tokens, scores = stages.teacher_pass(self.teacher, c, images)  # (VB, 1 + L, D), (VB, L) or None
        latent, removal = stages.encode_student(model, c, images, scores, step, shard)  # (VB, 1 + K, D)
        losses, _ = stages.reconstruct(model, c, images, latent, removal)
        local_cls = None
        if local_views is not None:
            local_cls = stages.encode_locals(model, local_views)[:, :, 0]  # (N, B, 1 + L', D) -> (N, B, D)
        with stage("heads_losses"):
            teacher_out = teacher_cls_logits(self.teacher.head, teacher_tokens)  # (V, B, C)
            # Statistics read the centre before the loss moves it.
            self.stats = {
                "spread": cls_spread(latent),
                "teacher_entropy": teacher_entropy(teacher_out, center=self.cls_loss.center,
                                                   teacher_temp=c.teacher_temp_cls),
            }
            student_out = model.head(latent[:, 0]).reshape(teacher_out.shape)  # (VB, C) -> (V, B, C)
            losses["dino"] = multi_crop_cls_loss(
                self.cls_loss, teacher_out=teacher_out, student_out=student_out,
                local_out=model.head(local_cls) if local_cls is not None else None,
                teacher_temp=c.teacher_temp_cls, student_temp=c.student_temp)
            return weighted_total(losses, c)


class ByolObjective(_DistillObjective):
    """BYOL: an online network predicts an EMA target network's projection of the other view.

    Online: the student's ViT, its [CLS] through ``projector`` and ``predictor``. Target: an
    EMA copy of the ViT and the projector (``teacher``), which sees the global views whole and
    gets no gradient. Loss: :func:`byol_loss` (normalised MSE, both directions), no negatives.
    The projector and predictor are training-only (saved in the training state, not the model).

    Args:
        model: the student (its distillation head, if any, is not used).
        cfg: training settings: ``ssl_mlp_dim`` (hidden width of projector and predictor),
            ``ssl_emb_dim`` (projection width), the EMA schedule, ``w_rec``.
    """

    summary = "byol: online predictor against an EMA target, no negatives"

    def __init__(self, model: DetailCLIP, cfg: TrainConfig):
        super().__init__(model, cfg)
        d = model.visual.width
        self.projector = ByolMLP(d, cfg.ssl_mlp_dim, cfg.ssl_emb_dim)
        self.predictor = ByolMLP(cfg.ssl_emb_dim, cfg.ssl_mlp_dim, cfg.ssl_emb_dim)
        self.teacher = make_teacher(self.online_tower())  # the target network: ViT + projector
        _image_tower_only(model, model.head)
        self.monitor = CollapseMonitor(dim=d)

    def online_tower(self) -> nn.ModuleDict:
        """The online modules the target mirrors, ViT and projector (the predictor has no target
        counterpart)."""
        return nn.ModuleDict({"visual": self.model.visual, "projector": self.projector})

    def forward(self, view1: torch.Tensor, view2: torch.Tensor, text: torch.Tensor | None = None, *,
                step: int, local_views: torch.Tensor | None = None,
                shard: BatchShard | None = None) -> dict[str, torch.Tensor]:
        """One step's losses (arguments: :meth:`_DistillObjective.forward`; BYOL here takes two
        views, no local crops): ``{"rec", "byol", "loss"}``, ``rec`` only with a decoder."""
        if local_views is not None:
            raise ConfigError("byol takes no local crops")
        model, c = self.model, self.cfg
        images = torch.cat([view1, view2])  # (VB, 3, H, W)
        target_tokens, scores = stages.teacher_pass(self.teacher, c, images)  # (VB, 1 + L, D), no gradient
        latent, removal = stages.encode_student(model, c, images, scores, step, shard)  # (VB, 1 + K, D)
        losses, _ = stages.reconstruct(model, c, images, latent, removal)
        with stage("heads_losses"):
            shape = (NUM_VIEWS, -1, c.ssl_emb_dim)
            pred = self.predictor(self.projector(latent[:, 0])).reshape(shape)  # (VB, D) -> (V, B, E)
            with torch.no_grad():
                target = self.teacher.projector(target_tokens[:, 0]).reshape(shape)  # (V, B, E)
            losses["byol"] = byol_loss(online_pred=pred, target_proj=target)
            self.stats = {"spread": cls_spread(latent)}
            return weighted_total(losses, c)


class SimCLRObjective(_DistillObjective):
    """SimCLR: NT-Xent between the two views' projections, the batch's other views as negatives.

    No teacher: token removal can be random or none, not attention-guided. The projection of
    the [CLS] through ``projector`` (training-only; the MLP of the slip recipe's SimCLR term) feeds :func:`nt_xent_loss` at temperature
    ``ssl_temp``. Under gradient accumulation or several processes the projections of the whole
    step are gathered (``contrastive_features``, as for the CLIP loss), so the negatives are
    those of the global batch.

    Args:
        model: the student (its distillation head, if any, is not used).
        cfg: training settings: ``ssl_mlp_dim``, ``ssl_emb_dim``, ``ssl_temp``, ``w_rec``.
    """

    summary = "simclr: NT-Xent, negatives from the batch"

    def __init__(self, model: DetailCLIP, cfg: TrainConfig):
        super().__init__(model, cfg)
        if cfg.removal == Removal.attention:
            raise ConfigError("simclr has no teacher whose attention could choose the kept tokens: "
                              "use removal random or none")
        self.teacher = None
        self.projector = SSLProjection(model.visual.width, cfg.ssl_mlp_dim, cfg.ssl_emb_dim)  # SLIP's SimCLR MLP
        _image_tower_only(model, model.head)
        self.monitor = CollapseMonitor(dim=model.visual.width, remedies=NEGATIVES_REMEDIES)

    def update_teacher(self, step: int) -> float:
        """No teacher: nothing moves (reported as momentum 1, as for a frozen teacher)."""
        return 1.0

    def project(self, images: torch.Tensor, *, step: int,
                shard: BatchShard | None) -> tuple[torch.Tensor, TokenRemoval, dict[str, torch.Tensor]]:
        """Removal, the student encoder and the projector.

        Args:
            images: (VB, 3, H, W) the two views stacked.

        Returns:
            latent (VB, 1 + K, D), the removal, and ``{"z0", "z1"}`` the views' projections (B, E).
        """
        latent, removal = stages.encode_student(self.model, self.cfg, images, None, step, shard)
        with stage("heads_losses"):
            z = self.projector(latent[:, 0]).chunk(NUM_VIEWS)  # (VB, E) -> V x (B, E)
        return latent, removal, {f"z{v}": zv for v, zv in enumerate(z)}

    @torch.no_grad()
    def contrastive_features(self, view1: torch.Tensor, view2: torch.Tensor, text: torch.Tensor | None = None, *,
                             step: int, shard: BatchShard | None = None) -> dict[str, torch.Tensor]:
        """The projections of a batch without gradient: the negatives gradient accumulation caches."""
        return self.project(torch.cat([view1, view2]), step=step, shard=shard)[2]

    def forward(self, view1: torch.Tensor, view2: torch.Tensor, text: torch.Tensor | None = None, *,
                step: int, local_views: torch.Tensor | None = None,
                shard: BatchShard | None = None) -> dict[str, torch.Tensor]:
        """One step's losses (arguments: :meth:`_DistillObjective.forward`; SimCLR here takes two
        views, no local crops, and the rows ``shard`` places in the step, of every process and
        micro-batch, are the negatives): ``{"rec", "simclr", "loss"}``, ``rec`` only with a decoder."""
        if local_views is not None:
            raise ConfigError("simclr takes no local crops")
        model, c = self.model, self.cfg
        images = torch.cat([view1, view2])  # (VB, 3, H, W)
        latent, removal, z = self.project(images, step=step, shard=shard)
        losses, _ = stages.reconstruct(model, c, images, latent, removal)
        with stage("heads_losses"):
            if shard is not None:
                z = {k: shard.global_features(k, f) for k, f in z.items()}  # (B, E) -> (G, E)
            losses["simclr"] = nt_xent_loss(z["z0"], z["z1"], c.ssl_temp)
            self.stats = {"spread": cls_spread(latent)}
            return weighted_total(losses, c)
