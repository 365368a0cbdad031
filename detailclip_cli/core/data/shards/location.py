"""Shards read front to back: a command's output (``pipe:``), an ``http(s)://`` URL, or a
gzip-compressed tar file (``.tar.gz`` / ``.tgz``), the way webdataset users name them.

A plain ``.tar`` file is read in place (its members by offset, see :mod:`.stream`); a
:class:`StreamedShard` can only be read from its start, so each pass over it streams it whole,
reading the members of the samples it needs as they go by. Compression is recognised from the
stream's first bytes, so ``pipe:`` commands and URLs may give gzip-compressed tars too.

A stream that fails part-way (the command exits non-zero, the connection drops, the gzip data
is cut short) raises :class:`StreamFailed` naming the shard and the cause; the reader turns
what it could not read into bad samples, never a fatal error.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import subprocess
import tarfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from detailclip_cli.core.data.samples import one_line, printable

PIPE_PREFIX = "pipe:"
URL_PREFIXES = ("http://", "https://")
GZIP_SUFFIXES = (".tar.gz", ".tgz")
URL_TIMEOUT = 60.0  # seconds without a byte before a connection counts as dropped
_STDERR_TAIL = 400  # characters of a failed command's stderr kept for its message


class StreamFailed(OSError):
    """A streamed shard that could not be read to its end; the message is one line naming it."""


@dataclass(frozen=True)
class StreamedShard:
    """One shard read front to back.

    Attributes:
        kind: ``"pipe"`` (a shell command whose standard output is the tar), ``"url"`` (an
            ``http://`` or ``https://`` address), or ``"gzip"`` (a compressed tar file).
        target: the command, the URL, or the file's path.
    """

    kind: str
    target: str

    @property
    def name(self) -> str:
        """The shard's last path component (what ``shards.json`` lists), or the command."""
        if self.kind == "pipe":
            return self.target
        return self.target.rstrip("/").rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return PIPE_PREFIX + self.target if self.kind == "pipe" else self.target

    def members(self) -> Iterator[tuple[tarfile.TarInfo, Callable[[], bytes]]]:
        """The shard's tar members in order, each with a function that reads its data (call it
        before taking the next member, or the data is gone). Compression (gzip or none) is found
        from the bytes. Closing the iterator early stops the stream quietly (a command is
        killed); reading it to its end checks that the whole stream arrived.

        Raises:
            StreamFailed: the shard cannot be opened, or fails while it is read (a damaged tar,
                gzip data cut short, a dropped connection, a command that exits non-zero); from
                the iterator or from a member's read function.
        """
        with self._bytes() as stream, self._failures():
            tar = tarfile.open(fileobj=stream, mode="r|*")
            for info in tar:
                yield info, lambda info=info: self._read(tar, info)
            while stream.read(2**16):  # the tar's end padding, so a command can finish writing
                pass

    def _read(self, tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
        with self._failures():
            return tar.extractfile(info).read()

    @contextlib.contextmanager
    def _failures(self) -> Iterator[None]:
        """Any error of the stream, the decompression or the tar as one :class:`StreamFailed`."""
        try:
            yield
        except StreamFailed:
            raise
        except (tarfile.TarError, EOFError, zlib.error, OSError, http.client.HTTPException) as e:
            raise StreamFailed(f"shard {printable(self)} failed while streaming "
                               f"({one_line(e) or type(e).__name__})") from None

    @contextlib.contextmanager
    def _bytes(self) -> Iterator[BinaryIO]:
        """The shard's raw bytes; raises :class:`StreamFailed` when they cannot all be had."""
        if self.kind == "gzip":
            try:
                f = open(os.path.expanduser(self.target), "rb")
            except OSError as e:
                raise StreamFailed(f"cannot read shard {printable(self.target)}: {e.strerror or e}") from None
            with f:
                yield f
            return
        if self.kind == "url":
            try:
                response = urllib.request.urlopen(self.target, timeout=URL_TIMEOUT)
            except urllib.error.HTTPError as e:
                raise StreamFailed(f"shard {printable(self)}: HTTP {e.code} {one_line(e.reason)}") from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                reason = getattr(e, "reason", e)
                raise StreamFailed(f"shard {printable(self)}: {one_line(reason) or type(e).__name__}") from None
            with response:
                yield response
                # http.client ends a short body quietly; what the server announced and never sent is a drop.
                if response.length:
                    raise StreamFailed(f"shard {printable(self)} failed while streaming (the connection closed "
                                       f"{response.length} bytes before the end)")
            return
        # The command is the user's own shell line, as webdataset runs it (pipes, redirections).
        process = subprocess.Popen(self.target, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   stdin=subprocess.DEVNULL)
        error: BaseException | None = None
        try:
            yield process.stdout
        except BaseException as e:  # a failure, or the reader stopped early: nothing more is wanted
            error = e
            if process.poll() is None:
                process.kill()
        finally:
            process.stdout.close()
            stderr = process.stderr.read()[-_STDERR_TAIL:].decode("utf-8", "replace")
            process.stderr.close()
            code = process.wait()
        if isinstance(error, GeneratorExit) or (error is not None and not isinstance(error, StreamFailed)):
            raise error
        if code != 0 and (error is None or code > 0):  # a command that failed says why better than tar
            raise StreamFailed(f"shard {printable(self)} failed: {one_line(stderr) or f'exit status {code}'}")
        if error is not None:
            raise error


def is_streamed(name: str) -> bool:
    """Whether one expanded shard name is streamed: ``pipe:``, ``http(s)://``, or gzip-compressed."""
    return name.startswith(PIPE_PREFIX) or name.lower().startswith(URL_PREFIXES) or name.lower().endswith(GZIP_SUFFIXES)


def streamed_shard(name: str) -> StreamedShard:
    """The :class:`StreamedShard` of one expanded name (see :func:`is_streamed`)."""
    if name.startswith(PIPE_PREFIX):
        return StreamedShard("pipe", name[len(PIPE_PREFIX):].strip())
    if name.lower().startswith(URL_PREFIXES):
        return StreamedShard("url", name)
    return StreamedShard("gzip", name)
