"""detailclip: DetailCLIP pretraining, inspection and zero-shot tools.

Importing this package is cheap on purpose (no torch): the CLI's ``--help`` must stay fast.
"""

__version__ = "0.2.0"

from detailclip_cli import allocator as _allocator

_allocator.follow_parent()  # in a process a detailclip command started: its allocator settings
