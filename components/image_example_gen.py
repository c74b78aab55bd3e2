"""Image ExampleGen: labelled image files to validated tf.train.Examples.

A custom executor for TFX's FileBasedExampleGen. Each input split's `pattern`
(relative to `input_base`) selects its layout:

* Folder per class (the Keras `image_dataset_from_directory` convention): the
  pattern names a directory (`.` or `*` is input_base itself, `train` or
  `train/*` is input_base/train) whose sub-folders are the classes; every file
  below a class folder is an image of that class.
* CSV manifest: a pattern ending in `.csv` names a file with a header row and
  `path,label` columns (RFC 4180 quoting); paths are relative to input_base.
  `../` and absolute paths are rejected unless
  `allow_paths_outside_data_root` is set.

Labels are `ingestion.normalize_label`'d: 'cat', 'cat ' and 'cat\u00a0' are
one class, and the report lists the spellings it merged. On a local disk the
files are listed with os.scandir: a symlinked folder is followed once, and
only inside its class folder (or outside the data root when allowed); symlink
loops, FIFOs, devices, names that are not UTF-8 and files whose real path is
outside the data root are rejected with the reason.

Every file is read and validated in Beam. Accepted files become Examples with
the features `image` (the original encoded bytes), `label` (the class name),
`path` (relative to input_base, POSIX separators) and, from the header read
while validating, `image_width`, `image_height` (pixels), `image_format`
(Pillow's name: JPEG, PNG, GIF, BMP, MPO) and `image_byte_size`, for the
statistics and the schema (the model never reads them). Rejected files are never
dropped silently: each is listed with its reason in `ingestion_report.json` in
the output Examples artifact and in the log, and the executor fails with a
ValueError when the data is unusable (see components/ingestion.py).

Options (`max_rejected_fraction`, `max_pixels`,
`allow_paths_outside_data_root`, `require_every_split`) are passed as the
component's `custom_config`: an example_gen_pb2.CustomConfig packing a
google.protobuf.Struct, built by `make_custom_config`.
"""

import csv
import io
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
  Union,
)

from absl import logging
import apache_beam as beam
from PIL import Image
import tensorflow as tf
from tfx.components.example_gen import component
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.proto import example_gen_pb2

from components import ingestion
from pipeline import settings as settings_lib

IMAGE_FEATURE = 'image'
LABEL_FEATURE = ingestion.LABEL_FEATURE
PATH_FEATURE = 'path'
# What the header says, for statistics and the schema (the model never reads
# them): pixels, Pillow's format name (JPEG, PNG, GIF, BMP, MPO), file size.
WIDTH_FEATURE = 'image_width'
HEIGHT_FEATURE = 'image_height'
FORMAT_FEATURE = 'image_format'
BYTE_SIZE_FEATURE = 'image_byte_size'
REPORT_FILE_NAME = ingestion.REPORT_FILE_NAME

# Pillow format names that tf.io.decode_image decodes. MPO is Pillow's name
# for the multi-picture JPEGs many cameras write; TF decodes their first frame.
_DECODABLE_FORMATS = frozenset({'JPEG', 'MPO', 'PNG', 'GIF', 'BMP'})

# One candidate file: (path relative to input_base, label, class key, reason).
# The class key names the class folder (or manifest label) the file counts
# towards; reason is set when the file is rejected before being read.
_Entry = Tuple[str, str, str, Optional[str]]


class Options(NamedTuple):
  """Validation options, parsed from the component's custom_config."""

  max_rejected_fraction: float = settings_lib.DEFAULT_MAX_REJECTED_FRACTION
  max_pixels: int = settings_lib.DEFAULT_MAX_PIXELS
  allow_paths_outside_data_root: bool = False
  require_every_split: bool = False


def make_custom_config(
  max_rejected_fraction: float = settings_lib.DEFAULT_MAX_REJECTED_FRACTION,
  max_pixels: int = settings_lib.DEFAULT_MAX_PIXELS,
  allow_paths_outside_data_root: bool = False,
  require_every_split: bool = False,
) -> example_gen_pb2.CustomConfig:
  """Returns the FileBasedExampleGen custom_config carrying the options."""
  return ingestion.pack_options(
    _validate_options(
      {
        'max_rejected_fraction': max_rejected_fraction,
        'max_pixels': max_pixels,
        ingestion.ALLOW_OUTSIDE_KEY: allow_paths_outside_data_root,
        ingestion.REQUIRE_EVERY_SPLIT_KEY: require_every_split,
      }
    )
  )


def parse_custom_config(
  custom_config: Optional[Union[str, example_gen_pb2.CustomConfig]],
) -> Options:
  """Parses the custom_config exec property (JSON of a CustomConfig)."""
  return _validate_options(
    ingestion.unpack_options(custom_config, 'make_custom_config')
  )


def _validate_options(values: Dict[str, Any]) -> Options:
  """Checks option names and ranges."""
  ingestion.check_option_names(values, Options, 'image ExampleGen')
  options = ingestion.check_opt_ins(Options(**values))
  return options._replace(
    max_rejected_fraction=ingestion.check_max_rejected_fraction(
      options.max_rejected_fraction
    ),
    max_pixels=check_max_pixels(options.max_pixels),
  )


def check_max_pixels(value: float) -> int:
  if value != int(value) or value < 1:
    raise ValueError(f'max_pixels must be a positive integer, got {value}.')
  return int(value)


def image_problem(data: bytes, max_pixels: int) -> Optional[str]:
  """Returns why `data` is not an image the serving decoder takes, or None."""
  if not data:
    return 'zero-byte file'
  try:
    with Image.open(io.BytesIO(data)) as image:
      image_format, (width, height), mode = image.format, image.size, image.mode
  except Image.UnidentifiedImageError:
    return 'not an image (unrecognised file format)'
  except Image.DecompressionBombError as e:
    return f'image too large (possible decompression bomb): {e}'
  except Exception as e:
    return f'corrupt image header: {ingestion.describe(e)}'
  if image_format not in _DECODABLE_FORMATS:
    return (
      f'unsupported format {image_format}: tf.io.decode_image only '
      'decodes JPEG, PNG, GIF and BMP'
    )
  if width * height > max_pixels:
    return (
      f'image too large (possible decompression bomb): {width}x{height} '
      f'= {width * height} pixels > max_pixels {max_pixels}'
    )
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.verify()
    with Image.open(io.BytesIO(data)) as image:
      image.load()
  except Exception as e:
    return f'corrupt or truncated image: {ingestion.describe(e)}'
  if image_format == 'BMP':
    return _bmp_problem(data, mode)
  return None


def image_properties(data: bytes) -> Dict[str, tf.train.Feature]:
  """The header features of a valid image (see WIDTH_FEATURE and below)."""
  with Image.open(io.BytesIO(data)) as image:  # Reads the header only.
    image_format, (width, height) = image.format, image.size
  return {
    WIDTH_FEATURE: ingestion.int64_feature(width),
    HEIGHT_FEATURE: ingestion.int64_feature(height),
    FORMAT_FEATURE: ingestion.bytes_feature(image_format.encode('ascii')),
    BYTE_SIZE_FEATURE: ingestion.int64_feature(len(data)),
  }


def _bmp_problem(data: bytes, mode: str) -> Optional[str]:
  """Returns why TF's BMP decoder would fail on or misread a valid BMP."""
  if mode == 'P':
    return (
      'palette BMP: tf.io.decode_image ignores the palette and would '
      'return colour indices'
    )
  try:
    tf.io.decode_bmp(data)
  except tf.errors.OpError as e:
    detail = e.message.rsplit('}}', 1)[-1].strip()  # Drops the op prefix.
    return f'BMP variant tf.io.decode_image cannot decode: {detail}'
  return None


class _ValidateImage(beam.DoFn):
  """Reads and validates one file; emits (class key, Example) or a rejection."""

  def __init__(self, input_base: str, options: Options):
    super().__init__()
    self._input_base = input_base
    self._options = options

  def process(self, entry: _Entry) -> Iterable[Any]:
    path, label, class_key, reason = entry
    data = b''
    if reason is None:
      full_path = ingestion.full_path(self._input_base, path)
      reason = ingestion.local_file_problem(
        self._input_base, full_path, self._options.allow_paths_outside_data_root
      )
    if reason is None:
      data, reason = ingestion.read_file(full_path)
    if reason is None:
      reason = image_problem(data, self._options.max_pixels)
    if reason is not None:
      yield beam.pvalue.TaggedOutput(
        ingestion.REJECTED_TAG, {'path': path, 'reason': reason}
      )
      return
    yield (
      class_key,
      tf.train.Example(
        features=tf.train.Features(
          feature={
            IMAGE_FEATURE: ingestion.bytes_feature(data),
            LABEL_FEATURE: ingestion.bytes_feature(label.encode('utf-8')),
            PATH_FEATURE: ingestion.bytes_feature(path.encode('utf-8')),
            **image_properties(data),
          }
        )
      ),
    )


def _split_folder(pattern: str, input_base: str) -> str:
  """Returns the folder (relative to input_base) a folder pattern names."""
  folder = '.' if pattern == '*' else pattern.removesuffix('/*')
  folder = posixpath.normpath(folder)
  if (
    any(c in folder for c in '*?[')
    or folder.startswith('/')
    or folder == '..'
    or folder.startswith('../')
  ):
    raise ValueError(
      f'Unsupported split pattern {pattern!r} for data root {input_base}: '
      'use a folder relative to the data root (e.g. ".", "train" or '
      '"train/*") or a manifest ending in ".csv".'
    )
  return folder


def _join(folder: str, name: str) -> str:
  return name if folder == '.' else posixpath.join(folder, name)


def _list_folder(directory: str) -> List[Tuple[str, bool]]:
  """(name, whether it is a folder) of each entry, sorted; symlinks followed.

  Local names that are not valid UTF-8 come back surrogate-escaped
  (os.scandir) instead of failing the listing (tf.io.gfile).
  """
  if ingestion.is_local(directory):
    with os.scandir(directory) as entries:
      return sorted((e.name, _is_folder(e)) for e in entries)
  return sorted(
    (n.rstrip('/'), fileio.isdir(os.path.join(directory, n)))
    for n in fileio.listdir(directory)
  )


def _is_folder(entry: os.DirEntry) -> bool:
  try:
    return entry.is_dir()
  except OSError:  # A symlink loop: a file to reject when read.
    return False


def _utf8_problem(path: str) -> Optional[str]:
  try:
    path.encode('utf-8')
  except UnicodeEncodeError:
    return 'name is not valid UTF-8 (shown with \\x escapes): not read'
  return None


def _class_folders(
  input_base: str, pattern: str
) -> Tuple[List[str], List[_Entry]]:
  """Returns the class folders of a split, and its stray files as rejections."""
  folder = _split_folder(pattern, input_base)
  directory = input_base if folder == '.' else os.path.join(input_base, folder)
  if not fileio.isdir(directory):
    raise ValueError(
      f'Folder {directory} (split pattern {pattern!r}) does not '
      f'exist under data root {input_base}.'
    )
  class_folders, strays = [], []
  for name, is_folder in _list_folder(directory):
    path = _join(folder, name)
    reason = _utf8_problem(path)
    if not reason and not is_folder:
      reason = 'not inside a class folder (expected <folder>/<class>/<image>)'
    if not reason and not ingestion.normalize_label(name):
      reason = 'class folder name is blank: its files are not read'
    if reason:
      strays.append((ingestion.printable_path(path), '', '', reason))
    else:
      class_folders.append(path)
  if not class_folders:
    raise ValueError(
      f'No class folders in {directory} (data root {input_base}): expected '
      f'one sub-folder per class, e.g. {os.path.join(directory, "cat")}/'
      '1.jpg.'
    )
  return class_folders, strays


def _list_class_files(
  class_folder: str, input_base: str, allow_outside: bool
) -> Iterable[_Entry]:
  """Yields every file below a class folder."""
  top = os.path.join(input_base, class_folder)
  label = ingestion.normalize_label(posixpath.basename(class_folder))
  if not ingestion.is_local(top):
    for directory, _, filenames in fileio.walk(top):
      subfolder = directory[len(top) :].strip('/')
      for name in filenames:
        path = posixpath.join(class_folder, subfolder, name)
        yield path, label, class_folder, None
    return
  for path, reason in _walk_local(input_base, class_folder, allow_outside):
    yield ingestion.printable_path(path), label, class_folder, reason


def _inside(path: str, folder: str) -> bool:
  return os.path.commonpath([path, folder]) == folder


def _walk_local(
  input_base: str, class_folder: str, allow_outside: bool
) -> Iterable[Tuple[str, Optional[str]]]:
  """(path, reason or None) of each entry below a local class folder.

  A symlinked folder is followed once, and only when it resolves inside the
  class folder (or, if allow_outside, outside the data root): a loop, a
  second link to a folder or a link into another class is one rejected
  entry, so no file is read twice or under two labels.
  """
  root = os.path.realpath(input_base)
  top = os.path.realpath(os.path.join(input_base, class_folder))
  visited, pending = {top}, [class_folder]
  while pending:
    folder = pending.pop()
    for name, is_folder in _list_folder(os.path.join(input_base, folder)):
      path = posixpath.join(folder, name)
      reason = _utf8_problem(path)
      if reason or not is_folder:
        yield path, reason
        continue
      real = os.path.realpath(os.path.join(input_base, path))
      if real in visited:
        reason = (
          f'symlinked folder already read (a symlink loop or a second '
          f'link to {real}): not read again'
        )
      elif not _inside(real, top) and _inside(real, root):
        reason = (
          f'symlinked folder points to {real}, elsewhere in the data '
          'root: not read, its files would count twice'
        )
      elif not _inside(real, top) and not allow_outside:
        reason = (
          f'symlinked folder resolves outside the data root (to '
          f'{real}); set {ingestion.ALLOW_OUTSIDE_KEY} to read it'
        )
      if reason:
        yield path, reason
      else:
        visited.add(real)
        pending.append(path)


def _read_manifest(
  input_base: str, pattern: str, allow_outside: bool
) -> Tuple[List[_Entry], List[str]]:
  """Reads a `path,label` manifest.

  Returns:
    The entries (bad rows pre-rejected) and the labels as written.
  """
  manifest = os.path.join(input_base, pattern)
  if not fileio.exists(manifest):
    raise ValueError(
      f'Manifest {pattern!r} not found under data root {input_base} '
      f'(looked for {manifest}).'
    )
  with fileio.open(manifest, 'rb') as f:
    # surrogateescape keeps each row's invalid UTF-8 for its own rejection.
    text = (
      f.read().removeprefix(b'\xef\xbb\xbf').decode('utf-8', 'surrogateescape')
    )
  reader = csv.reader(io.StringIO(text, newline=''))
  try:
    header = [name.strip() for name in next(reader, [])]
    if not {PATH_FEATURE, LABEL_FEATURE} <= set(header):
      raise ValueError(
        f'Manifest {manifest} (data root {input_base}) needs a header row '
        f'with "path" and "label" columns; found columns {header}.'
      )
    entries, raw_labels, first_line = [], [], {}
    line = reader.line_num + 1
    for values in reader:
      where, line = line, reader.line_num + 1  # Quoted newlines span lines.
      if not values:
        continue
      row = dict(zip(header, values))
      entries.append(
        _manifest_entry(
          row,
          len(values),
          len(header),
          where,
          pattern,
          first_line,
          allow_outside,
        )
      )
      if entries[-1][1]:
        raw_labels.append(row[LABEL_FEATURE])
  except csv.Error as e:
    raise ValueError(
      f'Manifest {manifest} (data root {input_base}) is not '
      f'valid CSV near line {reader.line_num}: {e}.'
    ) from e
  return entries, raw_labels


def _manifest_entry(
  row: Dict[str, str],
  fields: int,
  header_fields: int,
  line: int,
  pattern: str,
  first_line: Dict[str, int],
  allow_outside: bool,
) -> _Entry:
  """One manifest row as an entry; records its path in first_line."""
  raw_path = row.get(PATH_FEATURE, '').strip()
  raw_label = row.get(LABEL_FEATURE, '')
  label = ingestion.normalize_label(raw_label)
  reason = None
  if fields != header_fields:
    reason = (
      f'manifest line {line} has {fields} fields, the header has '
      f'{header_fields}'
    )
  elif _utf8_problem(raw_path + raw_label):
    reason, label = f'invalid UTF-8 in manifest line {line}', ''
  elif not raw_path or not label:
    reason = f'empty path or label in manifest line {line}'
  elif not allow_outside:
    reason = ingestion.relative_path_problem(raw_path)
  path = (
    ingestion.printable_path(raw_path)
    if reason
    else posixpath.normpath(raw_path)
  )
  if not reason and path in first_line:
    reason = f'duplicate of manifest line {first_line[path]}'
  if not reason:
    first_line[path] = line
  return path, label, f'{pattern}:{label}', reason


class _ImagesToExample(ingestion.SplitToExamples):
  """Reads, validates and converts the images of one input split."""

  parse_options = staticmethod(parse_custom_config)

  def expand(self, pipeline: beam.Pipeline) -> beam.PCollection:
    logging.info(
      'Reading images under %s with pattern %r.',
      self._input_base,
      self._pattern,
    )
    allow_outside = self._options.allow_paths_outside_data_root
    if self._pattern.endswith('.csv'):
      rows, raw_labels = _read_manifest(
        self._input_base, self._pattern, allow_outside
      )
      expected = {
        key: f'label {label!r} in manifest {self._pattern!r}'
        for _, label, key, _ in rows
        if label
      }
    else:
      class_folders, rows = _class_folders(self._input_base, self._pattern)
      expected = {f: f'class folder {f!r}' for f in class_folders}
      raw_labels = [posixpath.basename(f) for f in class_folders]
      for folder in class_folders:
        rows.extend(_list_class_files(folder, self._input_base, allow_outside))
    # Paths only (the files are read in Beam), in hash order: Beam spreads
    # them over its workers and the shards come out unsorted by class.
    entries = pipeline | 'Candidates' >> beam.Create(
      ingestion.hash_order(rows, lambda entry: entry[0])
    )
    results = entries | 'Validate' >> beam.ParDo(
      _ValidateImage(self._input_base, self._options)
    ).with_outputs(ingestion.REJECTED_TAG, main='accepted')
    ingestion.write_split_records(
      pipeline,
      self._records_prefix,
      expected,
      entries,
      results.accepted,
      results[ingestion.REJECTED_TAG],
      raw_labels,
    )
    return results.accepted | 'Examples' >> beam.Values()


class ImageExampleGenExecutor(ingestion.ReportingExecutor):
  """FileBasedExampleGen executor for labelled images."""

  ITEMS = ingestion.Items(
    kind='Image',
    plural='files',
    key='path',
    valid='image',
    valid_plural='images',
    layout_hint=(
      'put images in one sub-folder per class (e.g. '
      '{root}/cat/1.jpg) or list them in the manifest'
    ),
    class_hint='Add one sub-folder (or manifest label) per class.',
  )

  def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
    """Returns the PTransform that turns one input split into Examples."""
    return _ImagesToExample


def image_example_gen(
  data_root: str,
  *,
  manifest: Optional[str] = None,
  split_folders: Optional[Sequence[str]] = None,
  train_eval_buckets: Tuple[int, int] = (4, 1),
  max_rejected_fraction: float = settings_lib.DEFAULT_MAX_REJECTED_FRACTION,
  max_pixels: int = settings_lib.DEFAULT_MAX_PIXELS,
  allow_paths_outside_data_root: bool = False,
  require_every_split: bool = False,
) -> component.FileBasedExampleGen:
  """Builds a FileBasedExampleGen that ingests labelled images.

  Args:
    data_root: The input_base: a local path or a URI such as gs://bucket/dir.
    manifest: A `path,label` CSV relative to data_root. If unset, data_root
      holds one sub-folder per class.
    split_folders: Names of predefined split folders under data_root (e.g.
      ('train', 'eval')), each holding one sub-folder per class; they become
      the output splits. If unset, the files are hashed into `train` and
      `eval` by their relative path, so splits are deterministic and stay put
      when files are re-encoded.
    train_eval_buckets: Hash buckets of train and eval (4:1 = 80/20).
    max_rejected_fraction: Fail if a larger fraction of files is rejected.
    max_pixels: Reject images with more pixels (decompression bombs).
    allow_paths_outside_data_root: Read manifest paths with `../` or
      absolute paths, and files or symlinked folders whose real path is
      outside data_root (rejected by default).
    require_every_split: Fail when an output split gets no image (the
      pipeline sets it: an empty eval split can never bless a model).

  Returns:
    The FileBasedExampleGen component (output: `examples`).
  """
  if manifest and split_folders:
    raise ValueError('Pass either manifest or split_folders, not both.')
  if manifest and not manifest.endswith('.csv'):
    raise ValueError(f'manifest must be a .csv file, got {manifest!r}.')
  if split_folders:
    if len(split_folders) < 2 or len(set(split_folders)) != len(split_folders):
      raise ValueError(
        'split_folders needs at least two distinct folder '
        f'names, got {split_folders!r}.'
      )
    # 'train/*' rather than 'train': the driver fingerprints the files the
    # pattern matches, so this way the class folders' mtimes count.
    input_config = example_gen_pb2.Input(
      splits=[
        example_gen_pb2.Input.Split(name=name, pattern=f'{name}/*')
        for name in split_folders
      ]
    )
    output_config = example_gen_pb2.Output()
  else:
    output_config = ingestion.hash_split_config(
      train_eval_buckets, PATH_FEATURE
    )
    input_config = example_gen_pb2.Input(
      splits=[
        example_gen_pb2.Input.Split(
          name='single_split', pattern=manifest or '*'
        )
      ]
    )
  return component.FileBasedExampleGen(
    input_base=data_root,
    input_config=input_config,
    output_config=output_config,
    custom_config=make_custom_config(
      max_rejected_fraction,
      max_pixels,
      allow_paths_outside_data_root,
      require_every_split,
    ),
    custom_executor_spec=executor_spec.BeamExecutorSpec(
      ImageExampleGenExecutor
    ),
  )
