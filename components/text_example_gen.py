"""Text ExampleGen: labelled text rows (optionally with an image) to Examples.

A custom executor for TFX's FileBasedExampleGen. Each input split's `pattern`
names one data file relative to `input_base`:

* `.csv`: a header row, then one row per example (RFC 4180 quoting, so texts
  may hold commas and newlines);
* `.jsonl` / `.ndjson`: one JSON object per line.

The column (or field) names are options: one or more text columns (joined
with a newline into one text), a label column, an optional id column and,
for image+text data, an image column holding a path relative to input_base.

Every row is validated in Beam. Accepted rows become Examples with the
features `text` (UTF-8), `text_length` (characters), `label`, `id` (the id
column, or `<file>:<line>`) and, with an image column, `image` (the encoded
bytes, validated as the image ExampleGen does), `path` and the image header
features (`image_width`, ... as in components/image_example_gen.py). Rows are
never dropped silently: a row with invalid UTF-8, missing or empty label,
empty text (text data; an image+text row may have an empty text), a
duplicate id, malformed CSV or JSON, or a bad image is listed as
`<file>:<line>` with its reason in
`ingestion_report.json` and the log, with the same checks and failures as the
image ExampleGen (components/ingestion.py). Labels are
`ingestion.normalize_label`'d (the report lists the spellings merged). Image
paths with `../` or absolute ones are rejected unless
`allow_paths_outside_data_root` is set. Hash splits use the text (so
duplicate texts share a split) or, with images, the image path.
"""

import csv
import io
import json
import os
import posixpath
from typing import (
  Any,
  Dict,
  Iterable,
  List,
  NamedTuple,
  Optional,
  Sequence,
  Tuple,
)

from absl import logging
import apache_beam as beam
import tensorflow as tf
from tfx.components.example_gen import component
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.proto import example_gen_pb2

from components import image_example_gen
from components import ingestion
from pipeline import settings as settings_lib

TEXT_FEATURE = 'text'
ID_FEATURE = 'id'
LABEL_FEATURE = ingestion.LABEL_FEATURE
IMAGE_FEATURE = image_example_gen.IMAGE_FEATURE
PATH_FEATURE = image_example_gen.PATH_FEATURE
REPORT_FILE_NAME = ingestion.REPORT_FILE_NAME
CSV_EXTENSIONS = ('.csv',)
JSONL_EXTENSIONS = ('.jsonl', '.ndjson')
TEXT_SEPARATOR = '\n'  # Between the values of several text columns.
# The text's length in characters, for statistics and the schema (the model
# never reads it).
TEXT_LENGTH_FEATURE = 'text_length'

# One candidate row: (where, {column: raw UTF-8 bytes or None}, reason).
# `where` is `<file>:<line>`; reason is set when the row is rejected before
# validation. Values stay bytes until validated: Beam's coders cannot carry
# strings that are not valid Unicode.
_Row = Tuple[str, Dict[str, Optional[bytes]], Optional[str]]


class Options(NamedTuple):
  """Columns and validation options, parsed from the custom_config."""

  text_columns: Tuple[str, ...] = ('text',)
  label_column: str = 'label'
  id_column: Optional[str] = None
  image_column: Optional[str] = None
  max_rejected_fraction: float = settings_lib.DEFAULT_MAX_REJECTED_FRACTION
  max_pixels: int = settings_lib.DEFAULT_MAX_PIXELS
  allow_paths_outside_data_root: bool = False
  require_every_split: bool = False

  @property
  def columns(self) -> List[str]:
    """Every column the rows must have."""
    optional = [c for c in (self.id_column, self.image_column) if c]
    return [*self.text_columns, self.label_column, *optional]


def make_custom_config(**options) -> example_gen_pb2.CustomConfig:
  """The FileBasedExampleGen custom_config carrying `Options(**options)`."""
  return ingestion.pack_options(_validate_options(options))


def parse_custom_config(custom_config: Any) -> Options:
  """Parses the custom_config exec property (JSON of a CustomConfig)."""
  return _validate_options(
    ingestion.unpack_options(custom_config, 'make_custom_config')
  )


def _validate_options(values: Dict[str, Any]) -> Options:
  """Checks option names, column names and ranges."""
  ingestion.check_option_names(values, Options, 'text ExampleGen')
  options = ingestion.check_opt_ins(Options(**values))
  text_columns = options.text_columns
  if (
    isinstance(text_columns, str)
    or not text_columns
    or not all(isinstance(c, str) and c for c in text_columns)
  ):
    raise ValueError(
      'text_columns must be a non-empty list of column names, '
      f'got {text_columns!r}.'
    )
  options = options._replace(
    text_columns=tuple(text_columns),
    max_rejected_fraction=ingestion.check_max_rejected_fraction(
      options.max_rejected_fraction
    ),
    max_pixels=image_example_gen.check_max_pixels(options.max_pixels),
  )
  if not options.label_column:
    raise ValueError('label_column must be a column name.')
  if len(set(options.columns)) != len(options.columns):
    raise ValueError(
      f'Each column may have one role only, got text '
      f'{list(text_columns)}, label {options.label_column!r}, '
      f'id {options.id_column!r}, image '
      f'{options.image_column!r}.'
    )
  return options


def check_data_file(data_file: str) -> None:
  """Raises ValueError unless `data_file` is a relative .csv/.jsonl path."""
  if not data_file.endswith(CSV_EXTENSIONS + JSONL_EXTENSIONS):
    raise ValueError(
      f'Text data must be a .csv or .jsonl (.ndjson) file, got {data_file!r}.'
    )
  if ingestion.relative_path_problem(data_file) or any(
    c in data_file for c in '*?['
  ):
    raise ValueError(
      f'The data file must be a path relative to the data '
      f'root, without wildcards, got {data_file!r}.'
    )


def _decode(value: bytes, column: str) -> Tuple[str, Optional[str]]:
  """(text, None) or ('', why `value` is not valid UTF-8)."""
  try:
    return value.decode('utf-8'), None
  except UnicodeDecodeError as e:
    return '', (
      f'invalid UTF-8 in column {column!r} (byte '
      f'0x{value[e.start]:02x} at byte {e.start})'
    )


class _ValidateRow(beam.DoFn):
  """Validates one row; emits (class key, Example) or a rejection."""

  def __init__(self, input_base: str, pattern: str, options: Options):
    super().__init__()
    self._input_base = input_base
    self._pattern = pattern
    self._options = options

  def process(self, row: _Row) -> Iterable[Any]:
    where, raw, reason = row
    fields, example = {}, None
    if reason is None:
      fields, reason = self._decode(raw)
    if reason is None:
      example, reason = self._example(where, fields)
    if reason is not None:
      yield beam.pvalue.TaggedOutput(
        ingestion.REJECTED_TAG, {'row': where, 'reason': reason}
      )
      return
    label = ingestion.normalize_label(fields[self._options.label_column])
    yield f'{self._pattern}:{label}', example

  def _decode(
    self, raw: Dict[str, Optional[bytes]]
  ) -> Tuple[Dict[str, str], Optional[str]]:
    """The row's columns as text, or ({}, why they are not)."""
    fields = {}
    for column in self._options.columns:
      if raw.get(column) is None:
        return {}, f'missing value in column {column!r}'
      fields[column], reason = _decode(raw[column], column)
      if reason:
        return {}, reason
    return fields, None

  def _example(
    self, where: str, fields: Dict[str, str]
  ) -> Tuple[Optional[tf.train.Example], Optional[str]]:
    """The row's Example, or (None, why it is rejected)."""
    options = self._options
    texts = [fields[c].strip() for c in options.text_columns]
    # image+text: the image alone is an example; the validator watches the
    # text lengths.
    if not any(texts) and not options.image_column:
      columns = ', '.join(repr(c) for c in options.text_columns)
      return None, f'empty text in column {columns}'
    label = ingestion.normalize_label(fields[options.label_column])
    if not label:
      return None, f'empty label in column {options.label_column!r}'
    row_id = fields[options.id_column].strip() if options.id_column else where
    if not row_id:
      return None, f'empty id in column {options.id_column!r}'
    text = TEXT_SEPARATOR.join(t for t in texts if t)
    feature = {
      TEXT_FEATURE: text,
      LABEL_FEATURE: label,
      ID_FEATURE: row_id,
    }
    if options.image_column:
      path, image, reason = self._image(fields[options.image_column])
      if reason:
        return None, reason
      feature[PATH_FEATURE] = path
      feature[IMAGE_FEATURE] = image
    return tf.train.Example(
      features=tf.train.Features(
        feature={
          **{
            name: ingestion.bytes_feature(
              value if isinstance(value, bytes) else value.encode('utf-8')
            )
            for name, value in feature.items()
          },
          TEXT_LENGTH_FEATURE: ingestion.int64_feature(len(text)),
          **(
            image_example_gen.image_properties(image)
            if options.image_column
            else {}
          ),
        }
      )
    ), None

  def _image(self, raw_path: str) -> Tuple[str, bytes, Optional[str]]:
    """(normalized path, bytes, None) or (path, b'', why it is rejected)."""
    column = self._options.image_column
    if not raw_path.strip():
      return raw_path, b'', f'empty image path in column {column!r}'
    allow_outside = self._options.allow_paths_outside_data_root
    reason = (
      None
      if allow_outside
      else ingestion.relative_path_problem(raw_path.strip())
    )
    if reason:
      return raw_path, b'', f'{raw_path}: {reason}'
    path = posixpath.normpath(raw_path.strip())
    full_path = ingestion.full_path(self._input_base, path)
    data, reason = (
      b'',
      ingestion.local_file_problem(self._input_base, full_path, allow_outside),
    )
    if reason is None:
      data, reason = ingestion.read_file(full_path)
    if reason is None:
      reason = image_example_gen.image_problem(data, self._options.max_pixels)
    return path, data, reason and f'{path}: {reason}'


def _read_data_file(
  input_base: str, pattern: str, options: Options
) -> List[_Row]:
  """Reads the rows of a data file (malformed rows pre-rejected)."""
  path = os.path.join(input_base, pattern)
  if not fileio.exists(path):
    raise ValueError(
      f'Data file {pattern!r} not found under data root '
      f'{input_base} (looked for {path}).'
    )
  with fileio.open(path, 'rb') as f:
    data = f.read().removeprefix(b'\xef\xbb\xbf')  # A UTF-8 byte order mark.
  if pattern.endswith(CSV_EXTENSIONS):
    rows = _csv_rows(data, pattern, path, options)
  else:
    rows = _jsonl_rows(data, pattern, options)
  return _reject_duplicate_ids(rows, options.id_column)


def _csv_rows(
  data: bytes, pattern: str, path: str, options: Options
) -> List[_Row]:
  """Rows of a CSV file; invalid UTF-8 is kept for per-row rejection."""
  # surrogateescape round-trips invalid bytes, so each row keeps its own.
  text = data.decode('utf-8', errors='surrogateescape')
  reader = csv.reader(io.StringIO(text, newline=''))
  try:
    header = [name.strip() for name in next(reader, [])]
    missing = [c for c in options.columns if c not in header]
    if missing:
      raise ValueError(
        f'Data file {path} needs the columns {options.columns} in its '
        f'header row; {missing} missing, found {header}. Set the column '
        'names with text_columns, label_column, id_column, image_column.'
      )
    rows, line = [], reader.line_num + 1
    for values in reader:
      where = f'{pattern}:{line}'
      line = reader.line_num + 1
      if not values:  # A blank line is no row.
        continue
      reason = None
      if len(values) != len(header):
        reason = f'row has {len(values)} fields, the header has {len(header)}'
      fields = dict(zip(header, values))
      rows.append(
        (
          where,
          {
            c: fields[c].encode('utf-8', 'surrogateescape')
            if c in fields
            else None
            for c in options.columns
          },
          reason,
        )
      )
  except csv.Error as e:
    raise ValueError(
      f'Data file {path} is not valid CSV near line {reader.line_num}: {e}.'
    ) from e
  return rows


def _jsonl_rows(data: bytes, pattern: str, options: Options) -> List[_Row]:
  """Rows of a JSON Lines file; bad lines are pre-rejected."""
  rows = []
  for line, raw in enumerate(data.split(b'\n'), start=1):
    where = f'{pattern}:{line}'
    if not raw.strip():
      continue
    fields, reason = {}, None
    try:
      value = json.loads(raw.decode('utf-8'))
    except UnicodeDecodeError as e:
      reason = f'invalid UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start})'
    except json.JSONDecodeError as e:
      reason = f'not valid JSON: {e}'
    else:
      if isinstance(value, dict):
        fields, reason = _json_fields(value, options.columns)
      else:
        reason = 'not a JSON object'
    rows.append((where, fields, reason))
  return rows


def _json_fields(
  value: Dict[str, Any], columns: List[str]
) -> Tuple[Dict[str, Optional[bytes]], Optional[str]]:
  """A JSON object's columns as bytes; numbers and booleans as JSON text."""
  fields = {}
  for column in columns:
    field = value.get(column)
    if isinstance(field, (bool, int, float)):
      field = json.dumps(field)
    if isinstance(field, str):
      # surrogatepass keeps a lone-surrogate escape for _decode to reject.
      fields[column] = field.encode('utf-8', 'surrogatepass')
    elif field is None:
      fields[column] = None
    else:
      return fields, (
        f'column {column!r} holds a {type(field).__name__}, not a string'
      )
  return fields, None


def _reject_duplicate_ids(
  rows: List[_Row], id_column: Optional[str]
) -> List[_Row]:
  if not id_column:
    return rows
  first, checked = {}, []
  for where, fields, reason in rows:
    row_id = _stripped(fields, id_column)
    if reason is None and row_id:
      if row_id in first:
        reason = f'duplicate id {row_id!r} (first at {first[row_id]})'
      else:
        first[row_id] = where
    checked.append((where, fields, reason))
  return checked


def _stripped(fields: Dict[str, Optional[bytes]], column: str) -> str:
  """A column as stripped text ('' if missing or not valid UTF-8)."""
  text, _ = _decode(fields.get(column) or b'', column)
  return text.strip()


class _RowsToExample(ingestion.SplitToExamples):
  """Reads, validates and converts the rows of one data file."""

  parse_options = staticmethod(parse_custom_config)

  def expand(self, pipeline: beam.Pipeline) -> beam.PCollection:
    logging.info(
      'Reading rows of %s under %s.', self._pattern, self._input_base
    )
    rows = _read_data_file(self._input_base, self._pattern, self._options)
    # Labels of well-formed rows must end up with a valid row each.
    raw_labels = [
      _decode(fields.get(self._options.label_column) or b'', '')[0]
      for _, fields, reason in rows
      if reason is None
    ]
    labels = {ingestion.normalize_label(raw) for raw in raw_labels}
    expected = {
      f'{self._pattern}:{label}': f'label {label!r} in {self._pattern!r}'
      for label in labels
      if label
    }
    candidates = pipeline | 'Rows' >> beam.Create(
      ingestion.hash_order(rows, lambda row: row[0])
    )
    results = candidates | 'Validate' >> beam.ParDo(
      _ValidateRow(self._input_base, self._pattern, self._options)
    ).with_outputs(ingestion.REJECTED_TAG, main='accepted')
    ingestion.write_split_records(
      pipeline,
      self._records_prefix,
      expected,
      candidates,
      results.accepted,
      results[ingestion.REJECTED_TAG],
      [raw for raw in raw_labels if raw.strip()],
    )
    return results.accepted | 'Examples' >> beam.Values()


class TextExampleGenExecutor(ingestion.ReportingExecutor):
  """FileBasedExampleGen executor for labelled text and image+text rows."""

  ITEMS = ingestion.Items(
    kind='Text',
    plural='rows',
    key='row',
    valid='row',
    valid_plural='rows',
    layout_hint=(
      'the data file has a header row but no data rows; add one row per example'
    ),
    class_hint='Add rows with at least one other label.',
  )

  def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
    """Returns the PTransform that turns one data file into Examples."""
    return _RowsToExample


def text_example_gen(
  data_root: str,
  data_file: str,
  *,
  text_columns: Sequence[str] = ('text',),
  label_column: str = 'label',
  id_column: Optional[str] = None,
  image_column: Optional[str] = None,
  train_eval_buckets: Tuple[int, int] = (4, 1),
  max_rejected_fraction: float = settings_lib.DEFAULT_MAX_REJECTED_FRACTION,
  max_pixels: int = settings_lib.DEFAULT_MAX_PIXELS,
  allow_paths_outside_data_root: bool = False,
  require_every_split: bool = False,
) -> component.FileBasedExampleGen:
  """Builds a FileBasedExampleGen that ingests labelled text (+ image) rows.

  Args:
    data_root: The input_base: a local path or a URI such as gs://bucket/dir.
    data_file: A .csv or .jsonl file relative to data_root.
    text_columns: The column(s) holding the text; several are joined with a
      newline, in this order.
    label_column: The column holding the class name.
    id_column: An optional column of unique row ids (duplicates are rejected).
    image_column: For image+text data: the column holding each row's image
      path, relative to data_root.
    train_eval_buckets: Hash buckets of train and eval (4:1 = 80/20), hashed
      on the text, or on the image path with image_column.
    max_rejected_fraction: Fail if a larger fraction of rows is rejected.
    max_pixels: Reject images with more pixels (decompression bombs).
    allow_paths_outside_data_root: Read image paths with `../` or absolute
      paths, and images whose real path is outside data_root.
    require_every_split: Fail when an output split gets no row (the pipeline
      sets it: an empty eval split can never bless a model).

  Returns:
    The FileBasedExampleGen component (output: `examples`).
  """
  check_data_file(data_file)
  custom_config = make_custom_config(
    text_columns=list(text_columns),
    label_column=label_column,
    id_column=id_column,
    image_column=image_column,
    max_rejected_fraction=max_rejected_fraction,
    max_pixels=max_pixels,
    allow_paths_outside_data_root=allow_paths_outside_data_root,
    require_every_split=require_every_split,
  )
  output_config = ingestion.hash_split_config(
    train_eval_buckets, PATH_FEATURE if image_column else TEXT_FEATURE
  )
  return component.FileBasedExampleGen(
    input_base=data_root,
    input_config=example_gen_pb2.Input(
      splits=[
        example_gen_pb2.Input.Split(name='single_split', pattern=data_file)
      ]
    ),
    output_config=output_config,
    custom_config=custom_config,
    custom_executor_spec=executor_spec.BeamExecutorSpec(TextExampleGenExecutor),
  )
