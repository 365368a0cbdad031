"""PyTorch datasets over :class:`Sample` lists: two augmented views for training, one for eval."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from detailclip_cli.core.data.decode import load_image, load_mask
from detailclip_cli.core.data.eval_transform import make_eval_geometry, make_normalize
from detailclip_cli.core.data.samples import DataError, ReadReport, Sample, printable
from detailclip_cli.core.data.transforms import (
    AugmentConfig,
    image_tensor,
    make_view_transform,
)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that depends only on ``(seed, epoch, index)``.

    ``SeedSequence`` mixes the three numbers so neighbouring items and epochs get unrelated
    streams (``seed + index`` would make epoch e item i+1 equal epoch e+1 item i).
    """
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def truncated_captions(
    captions: Sequence[str], tokenize: Callable[[list[str]], torch.Tensor], *, chunk: int = 256
) -> list[int]:
    """The indices of the captions whose tokens fill the whole text context.

    open_clip's tokenizers cut a longer caption to the context (keeping the end-of-text token)
    and pad shorter ones with 0, so a row with no padding left was cut, or fits exactly.
    Each distinct caption is tokenised once; captions too short to fill the context (at most
    two tokens per UTF-8 byte, plus start and end, whatever the tokenizer) are not tokenised.

    Args:
        captions: the captions, in sample order.
        tokenize: as for :class:`TwoViewDataset`: ``n`` captions -> token ids ``(n, context)``.
        chunk: captions per ``tokenize`` call.

    Returns:
        Sorted indices into ``captions``.
    """
    if not captions:
        return []
    context = tokenize([""]).shape[1]
    where: dict[str, list[int]] = {}
    for i, caption in enumerate(captions):
        where.setdefault(caption, []).append(i)
    candidates = [c for c in where if 2 * len(c.encode("utf-8", "replace")) + 2 >= context]
    found: list[int] = []
    for start in range(0, len(candidates), chunk):
        batch = candidates[start:start + chunk]
        full = tokenize(batch)[:, -1] != 0  # (n, context) -> (n,)
        for caption, is_full in zip(batch, full.tolist()):
            if is_full:
                found += where[caption]
    return sorted(found)


class TwoViewDataset(Dataset):
    """Two augmented global views and the tokenised caption of each sample.

    The random draws for item ``i`` depend only on ``(seed, epoch, i)``: each item seeds a
    forked copy of torch's generator, so a resumed run sees exactly the views the interrupted
    one would have, in the main process and in ``DataLoader`` workers alike, and the caller's
    global RNG state is left untouched. Call :meth:`set_epoch` before iterating each epoch;
    workers copy the dataset when an iterator starts, so with ``persistent_workers=True`` the
    epoch they see is frozen and the views repeat.

    Args:
        samples: the examples; None for an instance that only makes the items of images given
            to :meth:`make_item` (a stream of tar shards reads its own images).
        image_size: side of the square views.
        mean: per-channel normalisation mean.
        std: per-channel normalisation std.
        aug: augmentation strengths.
        tokenize: maps a list of ``n`` captions to token ids ``(n, context)``; when ``None``
            no ``text`` is returned.
        seed: base seed of the augmentation.
        report: what reading the samples skipped or repaired; by default the ``report`` of a
            :class:`~detailclip_cli.core.data.samples.SampleList` from ``read_samples``. See
            :meth:`data_report`.
    """

    def __init__(
        self,
        samples: Sequence[Sample] | None,
        *,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        aug: AugmentConfig,
        tokenize: Callable[[list[str]], torch.Tensor] | None,
        seed: int,
        report: ReadReport | None = None,
    ) -> None:
        if samples is not None and not samples:
            raise DataError("no samples to train on")
        samples = samples if samples is not None else []
        if report is None:
            report = getattr(samples, "report", None)
        self.samples = list(samples)
        self.read_report = report if report is not None else ReadReport(samples=len(self.samples))
        self._truncated: list[int] | None = None
        self.tokenize = tokenize
        self.seed = int(seed)
        self.epoch = 0
        self.view1 = make_view_transform(image_size=image_size, mean=mean, std=std, aug=aug, view=1)
        self.view2 = make_view_transform(image_size=image_size, mean=mean, std=std, aug=aug, view=2)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch``."""
        self.epoch = int(epoch)

    def data_report(self) -> ReadReport:
        """What reading the data skipped or repaired, with ``truncated_captions`` counted.

        The count (see :func:`truncated_captions`) is made on the first call, in the calling
        process, and remembered: counting in ``__getitem__`` would leave each ``DataLoader``
        worker with its own share. Without a tokenizer nothing is truncated.

        Returns:
            A copy of the reader's :class:`ReadReport`; ``report.counts()`` gives the figures
            by name for a metrics line, ``report.summary()`` one line for people.
        """
        if self._truncated is None:
            captions = [s.caption for s in self.samples]
            self._truncated = truncated_captions(captions, self.tokenize) if self.tokenize is not None else []
        report = dataclasses.replace(self.read_report, truncated_captions=len(self._truncated),
                                     examples=dict(self.read_report.examples))
        if self._truncated:
            report.examples["truncated_captions"] = printable(self.samples[self._truncated[0]].image)
        return report

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        """One example.

        Returns:
            ``view1`` and ``view2`` float ``(3, H, W)``; ``text`` long ``(context,)`` when a
            tokenizer was given; ``index`` long scalar. For an image that cannot be read,
            ``{"bad": message}`` instead: training skips and counts it rather than dying on
            one broken file (see :func:`collate_skipping_bad`).
        """
        sample = self.samples[i]
        try:
            image = load_image(sample.image)
        except DataError as exc:
            return {"bad": str(exc)}
        return self.make_item(image, i, sample.caption)

    def make_item(self, image: Image.Image, i: int, caption: str) -> dict[str, torch.Tensor]:
        """The item of a loaded RGB ``image`` as item ``i`` of the current epoch (see ``__getitem__``)."""
        # fork_rng restores the global CPU generator on exit; devices=[] keeps it off CUDA. Only
        # the CPU generator is seeded: torch.manual_seed would also queue seeds for every
        # accelerator backend, at a formatted stack trace each (a tenth of a view's time).
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(item_seed(self.seed, self.epoch, i))
            pixels = image_tensor(image)  # converted once for both views
            view1 = self.view1(pixels)
            view2 = self.view2(pixels)
        item = {"view1": view1, "view2": view2, "index": torch.tensor(i, dtype=torch.long)}
        if self.tokenize is not None:
            item["text"] = self.tokenize([caption])[0].long()  # (1, context) -> (context,)
        return item


class EvalDataset(Dataset):
    """One deterministic view per sample, with its mask and label when known.

    Args:
        samples: the examples.
        image_size: side of the square output (shorter side resized, then centre crop).
        mean: per-channel normalisation mean.
        std: per-channel normalisation std.
        classes: class names in label order; when given, samples with a label also return
            ``label`` (its index).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        *,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        classes: Sequence[str] | None = None,
    ) -> None:
        if not samples:
            raise DataError("no samples to evaluate")
        self.samples = list(samples)
        self.geometry = make_eval_geometry(image_size=image_size)
        self.normalize = make_normalize(mean=mean, std=std)
        self.class_index = {name: k for k, name in enumerate(classes)} if classes is not None else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        """One example.

        Returns:
            ``image`` float ``(3, H, W)``; ``index`` long scalar; ``mask`` long ``(H, W)`` (class
            ids, same resize and crop as the image, nearest-neighbour) when the sample has one;
            ``label`` long scalar when classes were given and the sample has a label.
        """
        sample = self.samples[i]
        image = load_image(sample.image)
        item: dict[str, torch.Tensor] = {"index": torch.tensor(i, dtype=torch.long)}
        if sample.mask is not None:
            mask = load_mask(sample.mask)
            if mask.shape != (image.height, image.width):
                raise DataError(
                    f"mask {sample.mask} is {mask.shape[1]}x{mask.shape[0]} but its image is "
                    f"{image.width}x{image.height}"
                )
            # Passing both through one call gives them the same geometry; the mask is resized
            # with nearest neighbour so class ids are never blended.
            image, mask = self.geometry(image, torch.from_numpy(mask))
            item["mask"] = mask  # (H, W) long
        else:
            image = self.geometry(image)
        item["image"] = self.normalize(image)
        if self.class_index is not None and sample.label is not None:
            if sample.label not in self.class_index:
                raise DataError(f"label {sample.label!r} of {sample.image} is not among the classes")
            item["label"] = torch.tensor(self.class_index[sample.label], dtype=torch.long)
        return item


def collate_skipping_bad(items: list[dict]) -> dict:
    """Collate the readable items of a batch; ``batch["bad"]`` lists the messages of the others."""
    from torch.utils.data import default_collate

    good = [item for item in items if "bad" not in item]
    batch = default_collate(good) if good else {}
    batch["bad"] = [item["bad"] for item in items if "bad" in item]
    return batch
