"""CLIP's byte-level BPE tokenizer, reading open_clip's vocabulary file without importing open_clip.

The merges are the ones open_clip ships (``bpe_simple_vocab_16e6.txt.gz`` inside the installed
package), found through the import system's file lookup (``importlib.util.find_spec``, which runs
none of the package's code), so tokenising costs a file read instead of ``import open_clip``
(which loads torchvision's model zoo). The result equals open_clip's ``SimpleTokenizer`` with its
default ``clean="lower"`` (a test compares them on unicode, long and empty texts):

1. clean: ``ftfy.fix_text``, HTML entities unescaped twice, whitespace runs to one space, lower case;
2. split into words with CLIP's pattern (letters, single digits, punctuation runs, 's 't ...);
3. each word as UTF-8 bytes mapped to printable characters, then merged pair by pair in merge
   rank order (the word's last symbol carries ``</w>``);
4. ``<start_of_text>`` + ids + ``<end_of_text>``, cut to the context (the last id kept as
   ``<end_of_text>``) and zero-padded.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
# Text that ftfy.fix_text returns unchanged: printable ASCII, tabs and newlines, no "&". Every
# fix ftfy makes needs a non-ASCII character, a control character, a carriage return or an
# HTML entity; skipping it for such text skips its import, 0.14 s of a one-image zero-shot.
_FTFY_IDENTITY = frozenset(chr(c) for c in range(0x20, 0x7F) if chr(c) != "&") | {"\t", "\n"}
NUM_MERGES = 49152 - 256 - 2  # CLIP uses the file's first 48,894 merges
SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")
# CLIP's word pattern (``regex`` syntax: \p{L} letters, \p{N} digits, one digit per word).
WORD_PATTERN = r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


class TokenizerError(RuntimeError):
    """The vocabulary file cannot be found (open_clip is not installed)."""


def vocab_path() -> Path:
    """open_clip's bundled BPE merges file, located without importing open_clip.

    Raises:
        TokenizerError: open_clip is not installed, or its package lacks the file.
    """
    spec = importlib.util.find_spec("open_clip")  # a top-level name: nothing is executed
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / VOCAB_FILE
        if path.is_file():
            return path
    raise TokenizerError(f"cannot find CLIP's vocabulary {VOCAB_FILE}: is open_clip_torch installed?")


def fix_text(text: str) -> str:
    """``ftfy.fix_text(text)``, imported only for text it could change (see :data:`_FTFY_IDENTITY`)."""
    if _FTFY_IDENTITY.issuperset(text):
        return text
    import ftfy

    return ftfy.fix_text(text)


@lru_cache(maxsize=1)
def byte_symbols() -> dict[int, str]:
    """Byte value -> printable character (CLIP's reversible byte-to-unicode table).

    Printable Latin-1 bytes map to themselves; the other 68 to code points from 256 on, in order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table  # insertion order is the vocabulary's order: printable bytes first


class ClipTokenizer:
    """Texts -> ``(B, T)`` token ids, open_clip's ``SimpleTokenizer`` without open_clip.

    Args:
        context_length: T; longer texts are cut (keeping ``<end_of_text>`` last).
        path: the merges file (default: open_clip's bundled one, :func:`vocab_path`).
    """

    def __init__(self, context_length: int = 77, *, path: str | Path | None = None):
        import regex  # Unicode classes (\p{L}) that the standard re module lacks

        self.context_length = context_length
        lines = gzip.open(path or vocab_path()).read().decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1:NUM_MERGES + 1]]  # line 0 is a header
        symbols = list(byte_symbols().values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + list(SPECIAL_TOKENS)
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.ranks = {merge: i for i, merge in enumerate(merges)}
        self.sot_token_id, self.eot_token_id = (self.encoder[t] for t in SPECIAL_TOKENS)
        self.vocab_size = len(vocab)
        self._pattern = regex.compile(WORD_PATTERN, regex.IGNORECASE)
        self._cache: dict[str, list[int]] = {t: [self.encoder[t]] for t in SPECIAL_TOKENS}

    def _merge(self, word: str) -> list[int]:
        """One word (already byte-mapped) -> its BPE token ids, merging the lowest-ranked pair first."""
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = {(a, b) for a, b in zip(parts, parts[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, NUM_MERGES))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):  # every occurrence of the pair, left to right
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        ids = [self.encoder[p] for p in parts]
        self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """One text -> its BPE ids, without the start and end tokens."""
        text = html.unescape(html.unescape(fix_text(text))).strip()
        text = " ".join(text.split()).lower()
        table = byte_symbols()
        ids: list[int] = []
        for word in self._pattern.findall(text):
            ids += self._merge("".join(table[b] for b in word.encode("utf-8")))
        return ids

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Texts -> (B, T) int64 ids: start, BPE ids, end, zeros; cut to T with the end token last."""
        if isinstance(texts, str):
            texts = [texts]
        t = self.context_length
        out = torch.zeros(len(texts), t, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(ids) > t:
                ids = ids[:t]
                ids[-1] = self.eot_token_id
            out[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


@lru_cache(maxsize=4)
def clip_tokenizer(context_length: int = 77) -> ClipTokenizer:
    """The shared tokenizer for a context length (the vocabulary is read once per process)."""
    return ClipTokenizer(context_length)
