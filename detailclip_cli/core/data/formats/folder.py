"""A folder of images, searched recursively: with same-named ``.txt`` captions, in class
sub-folders without captions, or (for distillation) images alone.

With captions, when every image sits in a sub-folder, the first sub-folder under the root is
the label. ``<stem>.mask.png`` beside an image is its segmentation mask. A caption that cannot
be read, or is empty after cleaning, skips its image and is counted; a folder with nothing
usable left is an error.
"""

from __future__ import annotations

from pathlib import Path

from detailclip_cli.core.data.captions import read_caption
from detailclip_cli.core.data.samples import (
    DataError,
    ReadReport,
    Sample,
    SampleList,
    printable,
)
from detailclip_cli.core.data.walk import (
    IMAGE_EXTENSIONS,
    MASK_SUFFIX,
    image_files,
    is_image_file,
    walk_files,
)


def read_folder(folder: Path, *, class_template: str) -> SampleList:
    """The captioned or class-folder samples of ``folder``, sorted by path.

    Args:
        folder: the folder (its split sub-folder already chosen).
        class_template: caption for class-folder images; ``{}`` becomes the class name
            (underscores read as spaces).

    Raises:
        DataError: the folder is missing or empty, holds no images, has captions for only some
            images, or neither captions nor class sub-folders, or nothing usable is left.
    """
    if not folder.is_dir():
        raise DataError(f"data folder does not exist: {printable(folder)}")
    files = walk_files(folder)
    if not files:
        raise DataError(f"data folder is empty: {printable(folder)}")
    images = [f for f in files if is_image_file(f)]
    if not images:
        raise DataError(
            f"no images found in {printable(folder)} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    present = set(files)

    def mask_of(image: Path) -> Path | None:
        mask = image.with_name(image.stem + MASK_SUFFIX + ".png")
        return mask if mask in present else None

    captioned = [im for im in images if im.with_suffix(".txt") in present]
    if captioned:
        missing = [im for im in images if im.with_suffix(".txt") not in present]
        if missing:
            raise DataError(
                f"{len(missing)} of {len(images)} images in {printable(folder)} have no .txt caption, "
                f"e.g. {printable(missing[0])}"
            )
        # Labels only when every image sits in a sub-folder: a few loose files in the root
        # would otherwise give half the set no label.
        in_subfolders = all(im.parent != folder for im in images)
        report = ReadReport()
        samples = SampleList(report=report)
        for im in images:
            caption = read_caption(im.with_suffix(".txt"), report)
            if caption is None:
                continue
            label = im.relative_to(folder).parts[0] if in_subfolders else None
            samples.append(Sample(image=im, caption=caption, label=label, mask=mask_of(im)))
        report.samples = len(samples)
        if not samples:
            raise DataError(f"no usable samples in {printable(folder)}: {report.summary()}")
        return samples

    classes = sorted({im.relative_to(folder).parts[0] for im in images if im.parent != folder})
    if not classes:
        raise DataError(
            f"{printable(folder)} has images but neither .txt captions nor class sub-folders; "
            "add captions or sort the images into one folder per class"
        )
    loose = [im for im in images if im.parent == folder]
    if loose:
        raise DataError(
            f"{len(loose)} images in {printable(folder)} sit outside the class folders, e.g. {printable(loose[0])}"
        )
    return SampleList(
        Sample(
            image=im,
            caption=class_template.format(label.replace("_", " ")),
            label=label,
            mask=mask_of(im),
        )
        for im in images
        for label in [im.relative_to(folder).parts[0]]
    )


def read_image_folder(folder: Path) -> SampleList:
    """Every image under ``folder``, sorted, each with an empty caption (captions and labels are
    not read), so a plain folder of photos serves distillation.

    Raises:
        DataError: the folder holds no images.
    """
    images = image_files(folder)  # each real folder once: links cannot loop
    if not images:
        raise DataError(f"no images found in {folder}")
    return SampleList(Sample(image=image, caption="") for image in sorted(images))
