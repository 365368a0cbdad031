"""Embedding files: images and texts embedded in chunks that survive a kill, written as
``.safetensors``, ``.npy`` + ids, ``.parquet`` or JSONL, read back, and searched.

A run over N inputs splits them into chunks of ``chunk_size`` (images first, then texts, in
input order). Each finished chunk is written all or nothing into ``OUTPUT.parts/`` with the ids
it covers, the model's fingerprint and what was embedded; a rerun with the same inputs and
model skips those chunks, and the finished file is assembled from the chunks (then the parts
folder is removed). Batches never cross a chunk, so a resumed run computes every row exactly as
an uninterrupted one and writes the same bytes.

A file holds ``embeddings`` (N, E) (or (N, L, D) patch tokens), one id per row (an image's
path as given, ``shard.tar/member`` for a tar member, a text itself) and one kind per row
(``image``, ``text`` or ``patch``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
import torch

from detailclip_cli.core.files import atomic_write
from detailclip_cli.core.use.batching import ImageSource, iter_image_batches
from detailclip_cli.core.use.embed import ImageEncoder, encode_texts
from detailclip_cli.errors import UsageError

FORMATS = (".safetensors", ".npy", ".parquet", ".jsonl")
DEFAULT_CHUNK = 4096  # rows per chunk: a few MB of float32 at E = 512, and little work lost to a kill


@dataclass
class EmbeddingSet:
    """Rows of an embedding file.

    Attributes:
        ids: N ids. kinds: N of ``image`` / ``text`` / ``patch``.
        embeddings: (N, E) float32 (or (N, L, D) patch tokens).
        meta: what the file records besides (``model``, ``model_spec``, ``which``).
    """

    ids: list[str]
    kinds: list[str]
    embeddings: torch.Tensor
    meta: dict = field(default_factory=dict)


@dataclass
class EmbedReport:
    """What a run did: rows written, chunks computed and skipped, the inputs that failed."""

    rows: int = 0
    computed_chunks: int = 0
    skipped_chunks: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def check_output(path: Path | None) -> None:
    """Refuse an output suffix no writer knows, and ``.parquet`` without pyarrow (a usage error)."""
    if path is None:
        return
    if path.suffix.lower() not in FORMATS:
        raise UsageError(f"--output {path}: write .safetensors, .npy (+ .ids.txt), .parquet or .jsonl, or - for "
                         "JSONL on stdout")
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow  # noqa: F401  (an optional dependency, only for this format)
        except ImportError:
            raise UsageError("--output .parquet needs pyarrow (pip install pyarrow); .safetensors and .npy need "
                             "nothing extra") from None


def model_fingerprint(model) -> str:
    """A short hash of the model's config and output projections: a chunk made by another model
    is recomputed, never mixed in."""
    h = hashlib.sha256(repr(model.cfg).encode())
    for t in (model.image_proj.weight, model.text.text_projection):
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def embed_to_file(model, *, images: Sequence[ImageSource] = (), texts: Sequence[str] = (),
                  which: str = "image", output: Path | None, stdout: TextIO | None = None,
                  batch_size: int = 64, workers: int = 0, chunk_size: int = DEFAULT_CHUNK,
                  model_spec: str | None = None, on_rows: Callable[[int], None] | None = None,
                  on_error: Callable[[str, str], None] | None = None,
                  on_chunk: Callable[[int], None] | None = None) -> EmbedReport:
    """Embed images and texts into ``output`` in resumable chunks (JSONL on ``stdout`` when None).

    Args:
        model: a :class:`DetailCLIP`.
        images: files or tar members, embedded with the image tower (``which`` image or patch).
        texts: embedded with the text tower.
        which: ``image`` or ``patch`` for the images (texts are always ``text`` rows).
        output: the file; its suffix picks the format (:data:`FORMATS`). None: JSONL rows to
            ``stdout`` as each chunk finishes (nothing to resume).
        batch_size: images per forward pass; workers: ``DataLoader`` processes that decode.
        chunk_size: rows per chunk (rounded up to whole batches).
        model_spec: the ``--model`` value, recorded so ``search`` can load the same model.
        on_rows: called with the number of inputs done after each batch (progress).
        on_error: called with (id, message) for each input that cannot be read.
        on_chunk: called with a chunk's number after it is written (tests stop a run here).

    Returns:
        The report; its ``failed`` inputs were left out (rows for the rest are written).
    """
    check_output(output)
    chunk_size = max(batch_size, -(-chunk_size // batch_size) * batch_size)
    items: list[tuple[str, ImageSource | str]] = [("image", s) for s in images] + [("text", t) for t in texts]
    ids = [str(x) for _, x in items]
    meta = {"model": model_fingerprint(model), "model_spec": model_spec or "", "which": which}
    parts = None if output is None else output.with_name(output.name + ".parts")
    report = EmbedReport()
    chunk_rows: list[tuple[list[str], list[str], torch.Tensor | None]] = []
    for c, start in enumerate(range(0, len(items), chunk_size)):
        chunk = items[start:start + chunk_size]
        chunk_ids = ids[start:start + chunk_size]
        path = None if parts is None else parts / f"{c:06d}.safetensors"
        done = _read_chunk(path, chunk_ids, meta) if path is not None else None
        if done is not None:
            report.skipped_chunks += 1
            rows_ids, rows_kinds, emb, failed = done
            for name, message in failed:
                report.failed.append((name, message))
                if on_error:
                    on_error(name, message)
            if on_rows:
                on_rows(len(chunk))
        else:
            rows_ids, rows_kinds, emb, failed = _embed_chunk(model, chunk, chunk_ids, which, batch_size, workers,
                                                             on_rows, on_error)
            report.failed += failed
            report.computed_chunks += 1
            if path is not None:
                _write_chunk(path, chunk_ids, rows_ids, rows_kinds, emb, failed, meta)
            else:
                _write_jsonl_rows(stdout or sys.stdout, rows_ids, rows_kinds, emb)
        if output is not None:
            chunk_rows.append((rows_ids, rows_kinds, emb))
        report.rows += len(rows_ids)
        if on_chunk:
            on_chunk(c)
    if output is not None:
        all_ids = [i for r in chunk_rows for i in r[0]]
        all_kinds = [k for r in chunk_rows for k in r[1]]
        tensors = [r[2] for r in chunk_rows if r[2] is not None and len(r[2])]
        emb = torch.cat(tensors) if tensors else torch.zeros(0, model.cfg.embed_dim)
        write_embeddings(output, EmbeddingSet(all_ids, all_kinds, emb, meta))
        if parts is not None and parts.exists():
            shutil.rmtree(parts)
    return report


def _embed_chunk(model, chunk, chunk_ids, which, batch_size, workers, on_rows, on_error):
    """One chunk's rows, images in fixed batches (so a rerun batches them identically), then texts."""
    image_idx = [i for i, (kind, _) in enumerate(chunk) if kind == "image"]
    text_idx = [i for i, (kind, _) in enumerate(chunk) if kind == "text"]
    rows: dict[int, torch.Tensor] = {}
    failed: list[tuple[str, str]] = []
    if image_idx:
        sources = [chunk[i][1] for i in image_idx]
        v = model.cfg.vision
        for batch in iter_image_batches(sources, image_size=v.image_size, mean=v.mean, std=v.std,
                                        batch_size=batch_size, workers=workers, encode=ImageEncoder(model, which)):
            for source, message in batch.errors:
                name = str(source)
                failed.append((name, message))
                if on_error:
                    on_error(name, message)
            if batch.outputs is not None:  # (b, E) or (b, L, D), float32 on the CPU
                for k, row in zip(batch.indices, batch.outputs):
                    rows[image_idx[k]] = row
            if on_rows:
                on_rows(len(batch.paths) + len(batch.errors))
    if text_idx:
        with torch.no_grad():
            emb = encode_texts(model, [chunk[i][1] for i in text_idx], batch_size=batch_size).cpu()
        for i, row in zip(text_idx, emb):
            rows[i] = row
        if on_rows:
            on_rows(len(text_idx))
    order = sorted(rows)
    kinds = [which if chunk[i][0] == "image" else "text" for i in order]
    emb = torch.stack([rows[i] for i in order]) if order else None
    return [chunk_ids[i] for i in order], kinds, emb, failed


def _write_chunk(path: Path, inputs, ids, kinds, emb, failed, meta) -> None:
    from safetensors.torch import save_file

    doc = {**meta, "inputs": list(inputs), "ids": ids, "kinds": kinds, "failed": failed}
    tensors = {"embeddings": emb.contiguous()} if emb is not None else {}
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=_pack(doc)))


def _read_chunk(path: Path, inputs, meta):
    """A finished chunk's rows when it covers exactly ``inputs`` with this model; else None."""
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            doc = _unpack(f.metadata())
            if doc.get("inputs") != list(inputs) or any(doc.get(k) != v for k, v in meta.items()):
                return None
            emb = f.get_tensor("embeddings") if "embeddings" in f.keys() else None
        failed = [tuple(x) for x in doc["failed"]]
        return doc["ids"], doc["kinds"], emb, failed
    except (OSError, ValueError, KeyError, RuntimeError):
        return None  # a damaged chunk is recomputed


# -- the formats -------------------------------------------------------------------------------------


def write_embeddings(path: Path, rows: EmbeddingSet) -> None:
    """Write an embedding set all or nothing; the suffix picks the format (:data:`FORMATS`)."""
    suffix = path.suffix.lower()
    emb = rows.embeddings.float().contiguous()
    meta = {k: str(v) for k, v in rows.meta.items()}
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        doc = {**meta, "ids": rows.ids, "kinds": rows.kinds}
        atomic_write(path, lambda p: save_file({"embeddings": emb}, str(p), metadata=_pack(doc)))
    elif suffix == ".npy":
        atomic_write(path, lambda p: _save_npy(p, emb.numpy()))
        lines = "".join(" ".join(i.splitlines()) + "\n" for i in rows.ids)  # one id a line
        atomic_write(ids_path(path), lambda p: p.write_text(lines, encoding="utf-8"))
        atomic_write(path.with_name(path.stem + ".meta.json"),
                     lambda p: p.write_text(json.dumps({**meta, "kinds": rows.kinds}) + "\n", encoding="utf-8"))
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        flat = emb.reshape(len(emb), -1).numpy()
        table = pa.table({"id": rows.ids, "kind": rows.kinds,
                          "embedding": pa.FixedSizeListArray.from_arrays(flat.reshape(-1), flat.shape[1])})
        table = table.replace_schema_metadata({**meta, "shape": json.dumps(list(emb.shape[1:]))})
        atomic_write(path, lambda p: pq.write_table(table, str(p)))
    elif suffix == ".jsonl":
        def write(p: Path) -> None:
            with open(p, "w", encoding="utf-8") as f:
                _write_jsonl_rows(f, rows.ids, rows.kinds, emb)
        atomic_write(path, write)
    else:
        check_output(path)


# safetensors keeps its metadata in a hash map whose order changes from run to run: one key holding
# a sorted JSON document makes the same rows give the same bytes.
META_KEY = "detailclip.embed"


def _pack(doc: dict) -> dict[str, str]:
    return {META_KEY: json.dumps(doc, sort_keys=True, ensure_ascii=False)}


def _unpack(metadata: dict[str, str] | None) -> dict:
    return json.loads((metadata or {})[META_KEY])


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append .npy to a temporary name
        np.save(f, array)


def ids_path(npy: Path) -> Path:
    """The ids file beside a ``.npy``: ``emb.npy`` -> ``emb.ids.txt``."""
    return npy.with_name(npy.stem + ".ids.txt")


def _write_jsonl_rows(f: TextIO, ids, kinds, emb: torch.Tensor | None) -> None:
    """One JSON object a row: ``{"id", "kind", "embedding"}`` (nested lists for patch tokens)."""
    if emb is None:
        return
    for name, kind, row in zip(ids, kinds, emb.tolist()):
        f.write(json.dumps({"id": name, "kind": kind, "embedding": row}) + "\n")
    f.flush()


def read_embeddings(path: Path) -> EmbeddingSet:
    """Read a file :func:`write_embeddings` (or ``embed``) wrote.

    Raises:
        UsageError: a missing file or one in no known format (one line).
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--index {path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                doc = _unpack(f.metadata())
                emb = f.get_tensor("embeddings")
            ids, kinds = doc.pop("ids"), doc.pop("kinds")
            return EmbeddingSet(ids, kinds, emb, doc)
        if suffix == ".npy":
            emb = torch.from_numpy(np.load(path, allow_pickle=False))
            ids = ids_path(path).read_text(encoding="utf-8").splitlines()
            meta_file = path.with_name(path.stem + ".meta.json")
            doc = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
            kinds = doc.pop("kinds", ["image"] * len(ids))
            return EmbeddingSet(ids, kinds, emb, doc)
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(str(path))
            doc = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
            shape = json.loads(doc.pop("shape", "[]"))
            flat = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)) if len(table) else np.zeros((0, 1))
            emb = torch.from_numpy(flat.astype(np.float32)).reshape(len(table), *shape)
            return EmbeddingSet(table.column("id").to_pylist(), table.column("kind").to_pylist(), emb, doc)
        if suffix == ".jsonl":
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            emb = torch.tensor([r["embedding"] for r in rows], dtype=torch.float32)
            return EmbeddingSet([r["id"] for r in rows], [r.get("kind", "image") for r in rows], emb, {})
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"--index {path}: cannot read it as embeddings ({' '.join(str(exc).split())})") from None
    raise UsageError(f"--index {path}: not an embedding file ({', '.join(FORMATS)})")


def search(index: EmbeddingSet, query: torch.Tensor, *, top_k: int = 10) -> list[tuple[str, float]]:
    """The ``top_k`` rows most similar to ``query``: (id, cosine similarity), best first.

    Args:
        index: (N, E) L2-normalised rows (patch-token files cannot be searched).
        query: (E,) an L2-normalised embedding from the same model.
    """
    if index.embeddings.dim() != 2:
        raise UsageError("this index holds patch tokens (--which patch); search needs image or text embeddings")
    if index.embeddings.shape[1] != query.shape[-1]:
        raise UsageError(f"the index holds {index.embeddings.shape[1]}-d embeddings but the model makes "
                         f"{query.shape[-1]}-d ones: search with the model that built it (--model)")
    scores = index.embeddings.float() @ query.float().reshape(-1)  # (N,)
    top = scores.topk(min(top_k, len(scores)))
    return [(index.ids[i], float(s)) for s, i in zip(top.values.tolist(), top.indices.tolist())]
