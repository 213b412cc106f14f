"""Reading rows from local dataset files (parquet, JSONL, JSON) as `Record`s that know where they came from.

A `Record` is one input row plus its file and position, and typed accessors (`text`,
`number`, `value`) that raise `BadInputError` naming the file, row and field when a field is
missing, has the wrong type or is not valid UTF-8. Readers of the dataset schemas only go
through these accessors, so every schema gets the same error messages for free.

Conventions:
- A missing field (the column or key does not exist) is an error; a null value counts as
  empty text, which the pipelines drop and count by reason (real dumps have nulls).
- Text given as bytes is decoded as strict UTF-8. JSON lines are decoded with
  `surrogateescape`, so a stray non-UTF-8 byte survives parsing and is reported on the field
  that holds it instead of failing the whole line.
- Parquet is read in batches and only the requested columns, so a multi-GB dump is streamed.
- JSON text is parsed by `json_text.parse_json`: too deep nesting, over-long integers and a key
  repeated in one object are errors of that row, never a traceback or a silently chosen value.
  A UTF-8 byte order mark at the start of a file is skipped; UTF-16 text, a parquet file named
  `.jsonl` and an unreadable `.gz` are errors of the whole file. `.jsonl.gz`, `.json.gz` and
  `.ndjson.gz` are read through gzip.
- Numbers: `NaN` counts as null (pandas writes it for a missing value); an infinite or
  too-large number is an error.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from verl_avsd.data_prep.errors import BadInputError
from verl_avsd.data_prep.json_text import JsonProblem, parse_json

JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
SUPPORTED_SUFFIXES = (".parquet", *JSON_SUFFIXES, *(suffix + ".gz" for suffix in JSON_SUFFIXES))
UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
PARQUET_MAGIC = b"PAR1"
_READ_FIELD = object()  # `Record.identifier`: read the value from the field
PARQUET_BATCH_ROWS = 1024


def _type_name(value: Any) -> str:
    return type(value).__name__


def _undecodable_text(text: str) -> str | None:
    """What makes `text` unwritable as UTF-8: a byte `surrogateescape` kept, or a lone surrogate
    (a JSON `\\ud800` escape); None for good text."""
    for offset, char in enumerate(text):
        if "\udc80" <= char <= "\udcff":
            return f"text is not valid UTF-8 (byte 0x{ord(char) - 0xDC00:02x} at character {offset})"
        if "\ud800" <= char <= "\udfff":
            return f"text holds a lone surrogate U+{ord(char):04X} at character {offset} (not valid Unicode)"
    return None


@dataclass
class Record:
    """One input row: `data` is the row as a dict; `row` is 0-based, `line` is 1-based (JSONL only).

    A line that is not a JSON object still becomes a Record, with `unreadable` set to the error,
    so the pipeline can count it as a bad row (`--skip-bad-rows`) and read on.
    """

    file: str
    row: int
    data: dict
    line: int | None = None
    unreadable: BadInputError | None = None

    def error(self, problem: str, field: str | None = None) -> BadInputError:
        return BadInputError(self.file, problem, row=self.row, field=field, line=self.line)

    def has(self, field: str) -> bool:
        return field in self.data

    def value(self, field: str) -> Any:
        """The raw value of a field that must exist (it may be null)."""
        if field not in self.data:
            present = ", ".join(sorted(self.data)) or "none"
            raise self.error(f"missing (the row has: {present})", field)
        return self.data[field]

    def text(self, field: str, *, required: bool = True) -> str:
        """A text field as `str`; null gives "". With required=False a missing field gives "" too."""
        if not required and field not in self.data:
            return ""
        value = self.value(field)
        return self.as_text(value, field)

    def as_text(self, value: Any, field: str) -> str:
        """Check that `value` (read from `field`) is text and valid UTF-8; null gives ""."""
        if value is None:
            return ""
        if isinstance(value, bytes):
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise self.error(
                    f"text is not valid UTF-8 (byte 0x{value[exc.start]:02x} at byte offset {exc.start})", field
                ) from None
        if not isinstance(value, str):
            raise self.error(f"expected text, got {_type_name(value)} ({str(value)[:40]!r})", field)
        bad = _undecodable_text(value)
        if bad is not None:
            raise self.error(bad, field)
        return value

    def number(self, field: str, *, required: bool = True) -> float | None:
        """A numeric field as a finite float; null, NaN (or a missing optional field) give None."""
        if not required and field not in self.data:
            return None
        return self.as_number(self.value(field), field)

    def as_number(self, value: Any, field: str) -> float | None:
        """`value` (read from `field`) as a finite float; null and NaN give None."""
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(f"expected a number, got {_type_name(value)} ({str(value)[:40]!r})", field)
        try:
            number = float(value)
        except OverflowError:
            raise self.error(f"number too large ({len(str(abs(value)))} digits)", field) from None
        if math.isnan(number):
            return None
        if math.isinf(number):
            raise self.error(f"expected a finite number, got {number}", field)
        return number

    def identifier(self, field: str, value: Any = _READ_FIELD) -> str | None:
        """A problem id as text (text, or a number: 7 and 7.0 give "7"); null, NaN and "" give None."""
        value = self.value(field) if value is _READ_FIELD else value
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = self.as_number(value, field)
            if number is None:
                return None
            return str(int(number)) if number.is_integer() and isinstance(value, float) else str(value)
        if value is not None and not isinstance(value, str | bytes):
            raise self.error(f"expected an id (text or a number), got {_type_name(value)} ({str(value)[:40]!r})", field)
        text = self.as_text(value, field).strip()
        return text or None

    def text_list(self, field: str, *, required: bool = True) -> list[str]:
        """A list of strings (e.g. tags); null or a missing optional field gives []."""
        if not required and field not in self.data:
            return []
        value = self.value(field)
        if value is None:
            return []
        if not isinstance(value, list | tuple):
            raise self.error(f"expected a list of text, got {_type_name(value)}", field)
        return [self.as_text(item, f"{field}[{i}]") for i, item in enumerate(value)]


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_path(path: str) -> None:
    if os.path.isdir(path):
        raise BadInputError(path, "is a folder, not a file")
    if not os.path.exists(path):
        raise BadInputError(path, "no such file")
    if not os.path.isfile(path):
        raise BadInputError(path, "is not a regular file (a pipe or device cannot be read twice)")
    if not path.endswith(SUPPORTED_SUFFIXES):
        raise BadInputError(path, f"unsupported file type (use one of: {', '.join(SUPPORTED_SUFFIXES)})")


class InputFile:
    """A local dataset file: its row count (for the progress bar), columns and `Record`s.

    `columns` limits what is read from parquet (others are never loaded); JSON rows keep all keys.
    """

    def __init__(self, path: str, columns: list[str] | None = None):
        _check_path(path)
        self.path = path
        self.wanted_columns = columns
        self._rows: list[Any] | None = None  # parsed JSON array, when the file is one
        if path.endswith(".parquet"):
            try:
                self._parquet = pq.ParquetFile(path)
            except Exception as exc:  # noqa: BLE001  pyarrow raises several types for a corrupt file
                raise BadInputError(path, f"cannot read as parquet: {exc}") from None
            self.num_rows = self._parquet.metadata.num_rows
            self.columns = list(self._parquet.schema_arrow.names)
            repeated = sorted({name for name in self.columns if self.columns.count(name) > 1})
            if repeated:
                problem = f"column(s) {', '.join(repeated)} appear more than once (which one is meant?)"
                raise BadInputError(path, problem)
        else:
            self._parquet = None
            self.num_rows, self.columns = self._scan_json()

    # --- JSON / JSONL -------------------------------------------------------------------------

    def _raw_lines(self) -> Iterator[bytes]:
        """The file's lines as bytes (gunzipped for .gz), without a leading UTF-8 byte order mark."""
        opener = gzip.open if self.path.endswith(".gz") else open
        try:
            with opener(self.path, "rb") as handle:
                head = handle.peek(4)[:4]
                if head.startswith(UTF16_BOMS):
                    raise BadInputError(self.path, "is UTF-16 text; data prep reads UTF-8 (convert the file)")
                if head.startswith(PARQUET_MAGIC):
                    raise BadInputError(self.path, "is a parquet file, not JSON (name it .parquet)")
                if head.startswith(UTF8_BOM):
                    handle.read(len(UTF8_BOM))
                yield from handle
        except (OSError, EOFError, zlib.error) as exc:  # truncated or corrupt gzip, unreadable file
            raise BadInputError(self.path, f"cannot read the file: {exc}") from None

    def _scan_json(self) -> tuple[int, list[str] | None]:
        """Row count of a JSON/JSONL file; a .json file holding one array is parsed once here."""
        if self.path.endswith((".json", ".json.gz")):
            text = b"".join(self._raw_lines()).decode("utf-8", errors="surrogateescape")
            try:
                parsed = parse_json(text)
            except JsonProblem as exc:
                if not exc.syntax and text.lstrip().startswith("["):  # an array: no row can be read on its own
                    raise BadInputError(self.path, exc.reason, field=exc.key) from None
                parsed = None  # many hub ".json" files are JSON lines; read them as such
            if isinstance(parsed, list):
                self._rows = parsed
                return len(parsed), None
            if isinstance(parsed, dict):
                raise BadInputError(self.path, "expected a JSON array of rows or JSON lines, got one JSON object")
        count = sum(1 for raw_line in self._raw_lines() if raw_line.strip())
        return count, None

    def _json_records(self) -> Iterator[Record]:
        if self._rows is not None:
            for index, row in enumerate(self._rows):
                if not isinstance(row, dict):
                    error = BadInputError(self.path, f"expected a JSON object, got {_type_name(row)}", row=index)
                    yield Record(self.path, index, {}, unreadable=error)
                    continue
                yield Record(self.path, index, row)
            return
        index = 0
        for line_number, raw_line in enumerate(self._raw_lines(), start=1):
            if not raw_line.strip():
                continue
            field = None
            try:
                row = parse_json(raw_line.decode("utf-8", errors="surrogateescape"))
                problem = None if isinstance(row, dict) else f"expected a JSON object, got {_type_name(row)}"
            except JsonProblem as exc:
                problem, field = exc.reason, exc.key
            if problem is None:
                yield Record(self.path, index, row, line=line_number)
            else:
                error = BadInputError(self.path, problem, row=index, line=line_number, field=field)
                yield Record(self.path, index, {}, line=line_number, unreadable=error)
            index += 1

    # --- parquet ------------------------------------------------------------------------------

    def _parquet_records(self) -> Iterator[Record]:
        columns = self.columns if self.wanted_columns is None else [c for c in self.wanted_columns if c in self.columns]
        first_row = 0
        batches = self._parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns)
        while True:
            try:
                batch = next(batches, None)
                if batch is None:
                    return
                as_lists = {name: _column_to_pylist(batch.column(name)) for name in batch.schema.names}
            except Exception as exc:  # noqa: BLE001  a corrupt page raises OSError, ArrowInvalid, ...
                raise BadInputError(self.path, f"cannot read rows from row {first_row} on (corrupt file?): {exc}") from None
            for offset in range(batch.num_rows):
                yield Record(self.path, first_row + offset, {name: values[offset] for name, values in as_lists.items()})
            first_row += batch.num_rows

    def records(self) -> Iterator[Record]:
        return self._parquet_records() if self._parquet is not None else self._json_records()


def _column_to_pylist(column: pa.Array) -> list[Any]:
    """Python values of a column; a string column with invalid UTF-8 comes back as bytes.

    pyarrow raises on the whole column for one bad string; reading it as binary instead lets
    `Record.text` report the exact row and field.
    """
    try:
        return column.to_pylist()
    except UnicodeDecodeError:
        if pa.types.is_string(column.type):
            return column.view(pa.binary()).to_pylist()
        if pa.types.is_large_string(column.type):
            return column.view(pa.large_binary()).to_pylist()
        raise


def require_columns(input_file: InputFile, required: list[str], what: str) -> None:
    """Fail before reading any row when a parquet file lacks a column the schema needs.

    JSON rows have no file-wide columns; their missing fields are reported per row.
    """
    if input_file.columns is None:
        return
    missing = [name for name in required if name not in input_file.columns]
    if missing:
        present = ", ".join(input_file.columns)
        problem = f"missing column(s) {', '.join(missing)} for the {what} format (columns present: {present})"
        raise BadInputError(input_file.path, problem)
