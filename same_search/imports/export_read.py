"""Reading an export ZIP back: checked whole before anything is stored, then streamed in batches.

A tampered file must not leave rows that keep a library from loading, so every size is checked
from the ZIP directory before a byte is decompressed, every line and vector is checked in a
first pass, and only a file that passed is read again, in batches, into one database
transaction (``LibraryService.import_items``). Memory stays at one batch plus 8 bytes per item.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hashlib
import itertools
import json
import zipfile
from array import array
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from numpy.lib import format as npy_format

from same_search.contsign import ContSign
from same_search.errors import ApiError, bad_request, shown
from same_search.files import is_sha256_hex
from same_search.imports.export import FORMAT, ORIGINALS, SPACE
from same_search.index.space import LearnedSpace
from same_search.index.vectors import row_problems
from same_search.records import NewItem
from same_search.rows import tags_problem
from same_search.verify.local_features import MAX_STORED_BYTES, LocalFeatures

#: Largest meta.json: a few hundred bytes in practice.
META_MAX_BYTES = 64 * 1024
#: Largest space.npz: a projection of 4,096-d vectors to 1,024 dimensions, with room to spare.
SPACE_MAX_BYTES = 20 * 1024 * 1024
#: Bytes an items.jsonl line may take besides its base64 brief (contsign, tags, keys, spaces).
LINE_OVERHEAD = 512
#: Largest vectors.npy header (numpy writes 128 bytes; it refuses more than 10,000 itself).
NPY_HEADER_MAX = 16 * 1024
#: Entries above this size must not be compressed more than the ratios below.
RATIO_FLOOR = 1 << 20
#: Deflate tops out near 1032:1, which only repeated data reaches; items.jsonl with one brief
#: repeated on every line stays near 100:1, so more than this is a ZIP bomb, not an export.
MAX_COMPRESSION_RATIO = 200
#: float32 embeddings barely compress (about 1.1:1); more than this is zeros or repeats, not
#: vectors of this daemon. It also bounds the item count by the upload size.
MAX_VECTORS_RATIO = 10
#: Items per database batch (one executemany) and per block of vectors read.
BATCH = 1000
#: An export has three entries besides its originals; a ZIP directory listing more is refused
#: before it is parsed (millions of entries would cost gigabytes of ZipInfo objects).
MAX_ENTRIES = 16
#: Each ``originals/<sha256>`` entry takes at least this many bytes of the ZIP (its name twice,
#: two headers, and a picture of a few hundred bytes at the least): more entries than the file's
#: size allows for is not an export of this daemon.
MIN_ORIGINAL_ENTRY_BYTES = 512
#: Items per batch when originals come along (their bytes are held with the batch).
ORIGINALS_BATCH = 64
_FLOAT32 = np.dtype("<f4")


@dataclass(frozen=True)
class CheckedExport:
    """An export ZIP that passed every check: its item count, dimension and meta.json."""

    path: Path
    meta: dict
    count: int
    dim: int
    brief_max_bytes: int
    #: sha256 names of the kept originals the export carries (each referenced by some line).
    originals: frozenset[str] = frozenset()
    #: The learned space the exported library ranked in (None: native cosine).
    space: LearnedSpace | None = None


def _refuse(message: str) -> ApiError:
    return bad_request(f"export refused, nothing was stored: {message}")


def check_export(
    path: Path, models: dict[str, int], brief_max_bytes: int, max_image_bytes: int
) -> CheckedExport:
    """Validate a whole export ZIP without storing anything (runs in a worker thread).

    ``models`` maps each fingerprint the import may hold to its dimension. Every size is checked
    from the ZIP directory before a byte is decompressed, items.jsonl is read line by line and
    vectors.npy row block by row block, so memory stays at one block plus 8 bytes per item (the
    contsigns, to find duplicates). Kept originals must each be named by a line, fit
    ``max_image_bytes``, and hash to their name. The first problem found is err_no 1 naming the
    file, the line or row and the field.
    """
    try:
        _refuse_large_directory(path)
        with zipfile.ZipFile(path) as archive:
            entries = _entries(archive)
            meta = _read_meta(archive, entries["meta.json"], models)
            originals = _original_entries(archive, max_image_bytes)
            dim = meta["dim"]
            space = _space(archive, entries, meta)
            checked = CheckedExport(
                path, meta, meta["count"], dim, brief_max_bytes, frozenset(originals), space
            )
            _check_sizes(entries, checked)
            keys = array("q")
            referenced: set[str] = set()
            for item, original in _items(archive, checked):
                keys.append(item.key)
                if original is not None:
                    referenced.add(original)
            _refuse_duplicates(keys)
            unused = set(originals) - referenced
            if unused:
                raise _refuse(f"{ORIGINALS}{min(unused)} is named by no line of items.jsonl")
            for sha in sorted(referenced):
                _check_original(archive, originals[sha], sha)
    except ApiError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
        raise _refuse(f"not a readable same_search export: {exc}") from exc
    return checked


def _refuse_large_directory(path: Path) -> None:
    """Read the entry count from the end-of-directory record before ``ZipFile`` parses it all."""
    with path.open("rb") as fh:
        end = zipfile._EndRecData(fh)  # type: ignore[attr-defined]  # stdlib helper, stable since 2.x
    if end is None:
        raise _refuse("not a ZIP file (no end of central directory record)")
    total = end[zipfile._ECD_ENTRIES_TOTAL]  # type: ignore[attr-defined]
    allowed = MAX_ENTRIES + path.stat().st_size // MIN_ORIGINAL_ENTRY_BYTES
    if total > allowed:
        raise _refuse(f"the ZIP lists {total} entries; an export of this size has at most {allowed}")


def _entries(archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    names = [info.filename for info in archive.infolist()]
    for name in ("meta.json", "items.jsonl", "vectors.npy"):
        if names.count(name) > 1:
            raise _refuse(f"the ZIP holds {name} {names.count(name)} times")
    entries = {info.filename: info for info in archive.infolist()}
    if "meta.json" not in entries or "items.jsonl" not in entries:
        raise _refuse("not a same_search export: meta.json and items.jsonl are required")
    if "vectors.npy" not in entries:
        raise bad_request(
            "this export has no vectors.npy; export with ?vectors=1 (same_search export --vectors) "
            "to import it elsewhere"
        )
    for name in ("meta.json", "items.jsonl", "vectors.npy"):
        info = entries[name]
        if info.flag_bits & 0x1:
            raise _refuse(f"{name} is encrypted")
        limit = MAX_VECTORS_RATIO if name == "vectors.npy" else MAX_COMPRESSION_RATIO
        if info.file_size > RATIO_FLOOR and info.file_size > limit * max(info.compress_size, 1):
            raise _refuse(
                f"{name} expands from {info.compress_size} to {info.file_size} bytes, "
                f"more than {limit}:1; not an export of this daemon"
            )
    return entries


def _space(archive: zipfile.ZipFile, entries: dict[str, zipfile.ZipInfo], meta: dict) -> LearnedSpace | None:
    """The learned space an export carries (meta.json ``space`` and ``space.npz``), or None."""
    if "space" not in meta and SPACE not in entries:
        return None
    if "space" not in meta or SPACE not in entries:
        raise _refuse(f"meta.json space and {SPACE} come together; one of them is missing")
    info = entries[SPACE]
    if info.file_size > SPACE_MAX_BYTES or info.flag_bits & 0x1:
        raise _refuse(f"{SPACE} is encrypted or larger than {SPACE_MAX_BYTES} bytes")
    try:
        return LearnedSpace.from_export(meta["space"], archive.read(info), meta["dim"])
    except (ValueError, KeyError, OSError) as exc:
        raise _refuse(f"{SPACE}: {exc}") from exc


def _original_entries(archive: zipfile.ZipFile, max_image_bytes: int) -> dict[str, zipfile.ZipInfo]:
    """The ``originals/<sha256>`` entries by sha256; any other name besides the three files is refused."""
    found: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        if info.filename in ("meta.json", "items.jsonl", "vectors.npy", SPACE):
            continue
        sha = info.filename[len(ORIGINALS) :]
        if not info.filename.startswith(ORIGINALS) or not is_sha256_hex(sha):
            raise _refuse(
                f"unexpected entry {info.filename[:100]!r}; an export holds meta.json, items.jsonl, "
                f"vectors.npy and {ORIGINALS}<sha256>"
            )
        if sha in found:
            raise _refuse(f"the ZIP holds {info.filename} twice")
        if info.flag_bits & 0x1:
            raise _refuse(f"{info.filename} is encrypted")
        if info.file_size > max_image_bytes:
            raise _refuse(
                f"{info.filename} is {info.file_size} bytes, "
                f"more than limits.max_image_bytes ({max_image_bytes})"
            )
        if info.file_size > RATIO_FLOOR and info.file_size > MAX_COMPRESSION_RATIO * max(
            info.compress_size, 1
        ):
            raise _refuse(f"{info.filename} expands more than {MAX_COMPRESSION_RATIO}:1; not a picture")
        found[sha] = info
    return found


def _check_original(archive: zipfile.ZipFile, info: zipfile.ZipInfo, sha: str) -> None:
    """A kept original must hash to its name (a corrupt or swapped file is refused)."""
    digest = hashlib.sha256()
    with archive.open(info) as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    if digest.hexdigest() != sha:
        raise _refuse(f"{info.filename} does not match its sha256 (the file is damaged or was replaced)")


def _read_meta(archive: zipfile.ZipFile, info: zipfile.ZipInfo, models: dict[str, int]) -> dict:
    if info.file_size > META_MAX_BYTES:
        raise _refuse(f"meta.json is {info.file_size} bytes, more than {META_MAX_BYTES}")
    try:
        meta = json.loads(archive.read(info))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _refuse(f"meta.json is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise _refuse("meta.json must be a JSON object")
    if meta.get("format") != FORMAT:
        raise bad_request(f"unknown export format {shown(meta.get('format'))}")
    if meta.get("fingerprint") not in models:
        raise bad_request(
            f"export made with model {meta.get('model_id')} (fingerprint {meta.get('fingerprint')}); the "
            f"library can hold fingerprint {' or '.join(models)}: vectors are not comparable, add the "
            "images instead (or configure a [models.<name>] profile with the settings it was made with)"
        )
    dim = models[meta["fingerprint"]]
    for field in ("count", "dim"):
        value = meta.get(field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _refuse(f"meta.json {field} must be a non-negative integer, got {value!r}")
    if meta["dim"] != dim:
        raise _refuse(f"meta.json dim is {meta['dim']}, the serving model's is {dim}")
    return meta


def _max_line(brief_max_bytes: int) -> int:
    """Longest items.jsonl line that can hold a valid item: base64 of the largest brief and of the
    largest local features + the rest."""
    return 4 * -(-brief_max_bytes // 3) + 4 * -(-MAX_STORED_BYTES // 3) + LINE_OVERHEAD


def _check_sizes(entries: dict[str, zipfile.ZipInfo], export: CheckedExport) -> None:
    """Declared sizes against what ``count`` items can take, before anything is decompressed."""
    items_cap = export.count * (_max_line(export.brief_max_bytes) + 1)
    if entries["items.jsonl"].file_size > items_cap:
        raise _refuse(
            f"items.jsonl declares {entries['items.jsonl'].file_size} bytes, more than {export.count} "
            f"lines can take ({items_cap} bytes)"
        )
    vectors = export.count * export.dim * 4
    size = entries["vectors.npy"].file_size
    if not vectors < size <= vectors + NPY_HEADER_MAX:
        raise _refuse(
            f"vectors.npy declares {size} bytes; {export.count} rows of {export.dim} float32 take "
            f"{vectors} bytes plus a header"
        )


def _open_vectors(archive: zipfile.ZipFile, export: CheckedExport) -> IO[bytes]:
    """vectors.npy positioned after its header, which must say (count, dim) little-endian float32."""
    handle = archive.open("vectors.npy")
    try:
        version = npy_format.read_magic(handle)
        if version not in ((1, 0), (2, 0)):
            raise _refuse(f"vectors.npy has format version {version}, expected 1.0 or 2.0")
        reader = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
        shape, fortran, dtype = reader(handle)
        if dtype != _FLOAT32 or fortran:
            raise _refuse(f"vectors.npy holds {dtype}{' (Fortran order)' if fortran else ''}, expected <f4")
        if shape != (export.count, export.dim):
            raise _refuse(
                f"vectors.npy has shape {tuple(shape)}, expected ({export.count}, {export.dim}): one row of "
                f"{export.dim} values (the serving model's dimension) per line of items.jsonl"
            )
        if archive.getinfo("vectors.npy").file_size != handle.tell() + export.count * export.dim * 4:
            raise _refuse("vectors.npy size does not match its header")
    except BaseException:
        handle.close()
        raise
    return handle


def _items(archive: zipfile.ZipFile, export: CheckedExport) -> Iterator[tuple[NewItem, str | None]]:
    """Every line's item with its vector and its original's sha256, each one checked; err_no 1
    at the first problem."""
    max_line = _max_line(export.brief_max_bytes)
    with archive.open("items.jsonl") as lines, _open_vectors(archive, export) as vectors:
        line_no = 0
        while line_no < export.count:
            block = min(BATCH, export.count - line_no)
            raw = vectors.read(block * export.dim * 4)
            if len(raw) != block * export.dim * 4:
                raise _refuse(f"vectors.npy ends before row {line_no + len(raw) // (export.dim * 4) + 1}")
            matrix = np.frombuffer(raw, dtype=_FLOAT32).reshape(block, export.dim)
            bad = row_problems(matrix, export.dim)
            if bad:
                row, problem = bad[0]
                raise _refuse(
                    f"vectors.npy row {line_no + row + 1} (items.jsonl line {line_no + row + 1}): {problem}"
                )
            for offset in range(block):
                line_no += 1
                text = lines.readline(max_line + 1)
                if not text:
                    raise _refuse(f"items.jsonl has {line_no - 1} lines, meta.json count says {export.count}")
                if len(text) > max_line:
                    raise _refuse(f"items.jsonl line {line_no} is longer than {max_line} bytes")
                yield _parse_line(text, line_no, export, matrix[offset])
        if lines.readline(max_line + 1).strip():
            raise _refuse(f"items.jsonl has more lines than meta.json count ({export.count})")


def _parse_line(
    text: bytes, line_no: int, export: CheckedExport, vector: np.ndarray
) -> tuple[NewItem, str | None]:
    where = f"items.jsonl line {line_no}"
    brief_max_bytes = export.brief_max_bytes
    try:
        line = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _refuse(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(line, dict):
        raise _refuse(f"{where} must be a JSON object {{contsign, brief, tags}}")
    unknown = set(line) - {"contsign", "brief", "tags", "original", "local_features"}
    if unknown:
        raise _refuse(f"{where} has unknown fields {sorted(unknown)}")
    try:
        contsign = ContSign.from_json(line.get("contsign"))
    except ApiError as exc:
        raise _refuse(f"{where}: {exc.err_msg}") from None
    brief_text = line.get("brief", "")
    if not isinstance(brief_text, str):
        raise _refuse(f"{where}: brief must be a base64 string")
    try:
        brief = base64.b64decode(brief_text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _refuse(f"{where}: brief is not valid base64: {exc}") from exc
    if len(brief) > brief_max_bytes:
        raise _refuse(
            f"{where}: brief is {len(brief)} bytes, more than limits.brief_max_bytes ({brief_max_bytes})"
        )
    tags = line.get("tags")
    problem = tags_problem(tags)
    if problem is not None:
        raise _refuse(f"{where}: {problem}")
    original = line.get("original")
    if original is not None and not is_sha256_hex(original):  # also keeps lists out of the set test
        raise _refuse(
            f"{where}: original must be the sha256 (64 lower-case hex digits) of a file in {ORIGINALS}"
        )
    if original is not None and original not in export.originals:
        raise _refuse(f"{where}: original {str(original)[:80]!r} is not in the ZIP's {ORIGINALS} folder")
    item = NewItem(
        contsign.key,
        brief,
        None if tags is None else (tags[0], tags[1]),
        vector,
        local_features=_local_features(line.get("local_features"), where),
    )
    return item, original


def _local_features(text: object, where: str) -> bytes | None:
    """An item's local features from its line (None when it has none: an older export, an
    item stored without them); checked as the same-picture check would read them."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise _refuse(f"{where}: local_features must be a base64 string")
    try:
        data = base64.b64decode(text, validate=True)
        LocalFeatures.from_bytes(data)
    except (binascii.Error, ValueError) as exc:
        raise _refuse(f"{where}: local_features are not readable: {exc}") from exc
    return data


def _refuse_duplicates(keys: array) -> None:
    """The same contsign on two lines would make the import depend on line order: refused."""
    if len(keys) < 2:
        return
    ordered = np.frombuffer(keys, dtype=np.int64)
    order = np.argsort(ordered, kind="stable")
    same = np.flatnonzero(ordered[order][1:] == ordered[order][:-1])
    if len(same):
        first, second = int(order[same[0]]), int(order[same[0] + 1])
        raise _refuse(
            f"items.jsonl lines {first + 1} and {second + 1} hold the same contsign "
            f"{ContSign.from_key(int(ordered[first]))} ({len(same)} duplicate lines in all)"
        )


async def export_batches(export: CheckedExport) -> AsyncIterator[list[NewItem]]:
    """The checked export's items in batches of ``BATCH``, read in a worker thread (second pass)."""
    archive = await asyncio.to_thread(zipfile.ZipFile, export.path)
    items = _items(archive, export)
    size = ORIGINALS_BATCH if export.originals else BATCH

    def next_batch() -> list[NewItem]:
        return [
            item
            if original is None
            else dataclasses.replace(item, original=archive.read(ORIGINALS + original))
            for item, original in itertools.islice(items, size)
        ]

    try:
        while batch := await asyncio.to_thread(next_batch):
            yield batch
    finally:
        items.close()
        archive.close()
