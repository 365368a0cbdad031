"""The data formats read whole, one module each: ``demo``, ``folder`` (images with captions,
class folders, or images alone) and ``table`` (CSV/TSV). Tar shards, which stream, are the
:mod:`detailclip_cli.core.data.shards` package. Which one a ``--data`` value names is decided
in one place, :func:`detailclip_cli.core.data.sources.open_source`."""
