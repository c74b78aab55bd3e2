"""Image ExampleGen: labelled image files to validated tf.train.Examples.

A custom executor for TFX's FileBasedExampleGen. Each input split's `pattern`
(relative to `input_base`) selects its layout:

* Folder per class (the Keras `image_dataset_from_directory` convention): the
  pattern names a directory (`.` or `*` is input_base itself, `train` or
  `train/*` is input_base/train) whose sub-folders are the classes; every file
  below a class folder is an image of that class.
* CSV manifest: a pattern ending in `.csv` names a file with a header row and
  `path,label` columns; paths are relative to input_base.

Every file is read and validated in Beam. Accepted files become Examples with
the features `image` (the original encoded bytes), `label` (the class name) and
`path` (relative to input_base, POSIX separators). Rejected files are never
dropped silently: each is listed with its reason in `ingestion_report.json` in
the output Examples artifact and in the log, and the executor fails with a
ValueError when the data is unusable (see `ImageExampleGenExecutor.Do`).

Options (`max_rejected_fraction`, `max_pixels`) are passed as the component's
`custom_config`: an example_gen_pb2.CustomConfig packing a
google.protobuf.Struct, built by `make_custom_config`.
"""

import collections
import csv
import io
import json
import os
import posixpath
import uuid
from typing import (Any, Dict, Iterable, List, NamedTuple, Optional, Sequence,
                    Tuple, Union)

from absl import logging
import apache_beam as beam
from google.protobuf import json_format
from google.protobuf import struct_pb2
from PIL import Image
import tensorflow as tf
from tfx import types
from tfx.components.example_gen import base_example_gen_executor
from tfx.components.example_gen import component
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils
from tfx.types import standard_component_specs
from tfx.utils import proto_utils

IMAGE_FEATURE = 'image'
LABEL_FEATURE = 'label'
PATH_FEATURE = 'path'
REPORT_FILE_NAME = 'ingestion_report.json'
DEFAULT_MAX_REJECTED_FRACTION = 0.1
DEFAULT_MAX_PIXELS = 40_000_000

# Pillow format names that tf.io.decode_image decodes. MPO is Pillow's name
# for the multi-picture JPEGs many cameras write; TF decodes their first frame.
_DECODABLE_FORMATS = frozenset({'JPEG', 'MPO', 'PNG', 'GIF', 'BMP'})
# exec_properties key through which Do tells the Beam transforms where to put
# their per-file records (read back and deleted after the pipeline).
_RECORDS_DIR_KEY = '_image_example_gen_records_dir'
_REJECTED_TAG = 'rejected'
_ERROR_LISTING_LIMIT = 5

# One candidate file: (path relative to input_base, label, class key, reason).
# The class key names the class folder (or manifest label) the file counts
# towards; reason is set when the file is rejected before being read.
_Entry = Tuple[str, str, str, Optional[str]]


class Options(NamedTuple):
  """Validation options, parsed from the component's custom_config."""
  max_rejected_fraction: float = DEFAULT_MAX_REJECTED_FRACTION
  max_pixels: int = DEFAULT_MAX_PIXELS


def make_custom_config(
    max_rejected_fraction: float = DEFAULT_MAX_REJECTED_FRACTION,
    max_pixels: int = DEFAULT_MAX_PIXELS) -> example_gen_pb2.CustomConfig:
  """Returns the FileBasedExampleGen custom_config carrying the options."""
  options = _validate_options(
      {'max_rejected_fraction': max_rejected_fraction,
       'max_pixels': max_pixels})
  struct = struct_pb2.Struct()
  struct.update(options._asdict())
  config = example_gen_pb2.CustomConfig()
  config.custom_config.Pack(struct)
  return config


def parse_custom_config(
    custom_config: Optional[Union[str, example_gen_pb2.CustomConfig]]
) -> Options:
  """Parses the custom_config exec property (JSON of a CustomConfig)."""
  if not custom_config:
    return Options()
  if isinstance(custom_config, str):
    if 'custom_config' not in json.loads(custom_config):
      raise ValueError(
          'custom_config must be an example_gen_pb2.CustomConfig; build it '
          f'with make_custom_config(...), got {custom_config}.')
    custom_config = proto_utils.json_to_proto(
        custom_config, example_gen_pb2.CustomConfig())
  struct = struct_pb2.Struct()
  if not custom_config.custom_config.Unpack(struct):
    raise ValueError(
        'custom_config must pack a google.protobuf.Struct (use '
        f'make_custom_config), got {custom_config.custom_config.type_url}.')
  return _validate_options(json_format.MessageToDict(struct))


def _validate_options(values: Dict[str, Any]) -> Options:
  """Checks option names and ranges."""
  unknown = set(values) - set(Options._fields)
  if unknown:
    raise ValueError(f'Unknown image ExampleGen options {sorted(unknown)}; '
                     f'expected {list(Options._fields)}.')
  options = Options(**values)
  if not 0.0 <= options.max_rejected_fraction <= 1.0:
    raise ValueError('max_rejected_fraction must be in [0, 1], got '
                     f'{options.max_rejected_fraction}.')
  if options.max_pixels != int(options.max_pixels) or options.max_pixels < 1:
    raise ValueError(
        f'max_pixels must be a positive integer, got {options.max_pixels}.')
  return options._replace(
      max_rejected_fraction=float(options.max_rejected_fraction),
      max_pixels=int(options.max_pixels))


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
  except Exception as e:  # pylint: disable=broad-except
    return f'corrupt image header: {_describe(e)}'
  if image_format not in _DECODABLE_FORMATS:
    return (f'unsupported format {image_format}: tf.io.decode_image only '
            'decodes JPEG, PNG, GIF and BMP')
  if width * height > max_pixels:
    return (f'image too large (possible decompression bomb): {width}x{height} '
            f'= {width * height} pixels > max_pixels {max_pixels}')
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.verify()
    with Image.open(io.BytesIO(data)) as image:
      image.load()
  except Exception as e:  # pylint: disable=broad-except
    return f'corrupt or truncated image: {_describe(e)}'
  if image_format == 'BMP':
    return _bmp_problem(data, mode)
  return None


def _bmp_problem(data: bytes, mode: str) -> Optional[str]:
  """Returns why TF's BMP decoder would fail on or misread a valid BMP."""
  if mode == 'P':
    return ('palette BMP: tf.io.decode_image ignores the palette and would '
            'return colour indices')
  try:
    tf.io.decode_bmp(data)
  except tf.errors.OpError as e:
    detail = e.message.rsplit('}}', 1)[-1].strip()  # Drops the op prefix.
    return f'BMP variant tf.io.decode_image cannot decode: {detail}'
  return None


def _describe(error: Exception) -> str:
  return str(error) or type(error).__name__


def _read_problem(path: str) -> Tuple[bytes, Optional[str]]:
  """Reads a file; returns (bytes, None) or (b'', why it is unreadable)."""
  try:
    with fileio.open(path, 'rb') as f:
      return f.read(), None
  except (FileNotFoundError, tf.errors.NotFoundError):
    return b'', 'file not found'
  except (OSError, tf.errors.OpError) as e:
    return b'', f'unreadable file: {_describe(e)}'


def _bytes_feature(value: bytes) -> tf.train.Feature:
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


class _ValidateImage(beam.DoFn):
  """Reads and validates one file; emits (class key, Example) or a rejection."""

  def __init__(self, input_base: str, max_pixels: int):
    super().__init__()
    self._input_base = input_base
    self._max_pixels = max_pixels

  def process(self, entry: _Entry) -> Iterable[Any]:
    path, label, class_key, reason = entry
    data = b''
    if reason is None:
      data, reason = _read_problem(os.path.join(self._input_base, path))
    if reason is None:
      reason = image_problem(data, self._max_pixels)
    if reason is not None:
      yield beam.pvalue.TaggedOutput(_REJECTED_TAG, {
          'path': path,
          'reason': reason
      })
      return
    yield class_key, tf.train.Example(
        features=tf.train.Features(
            feature={
                IMAGE_FEATURE: _bytes_feature(data),
                LABEL_FEATURE: _bytes_feature(label.encode('utf-8')),
                PATH_FEATURE: _bytes_feature(path.encode('utf-8')),
            }))


def _split_folder(pattern: str, input_base: str) -> str:
  """Returns the folder (relative to input_base) a folder pattern names."""
  folder = '.' if pattern == '*' else pattern.removesuffix('/*')
  folder = posixpath.normpath(folder)
  if (any(c in folder for c in '*?[') or folder.startswith('/') or
      folder == '..' or folder.startswith('../')):
    raise ValueError(
        f'Unsupported split pattern {pattern!r} for data root {input_base}: '
        'use a folder relative to the data root (e.g. ".", "train" or '
        '"train/*") or a manifest ending in ".csv".')
  return folder


def _join(folder: str, name: str) -> str:
  return name if folder == '.' else posixpath.join(folder, name)


def _class_folders(input_base: str,
                   pattern: str) -> Tuple[List[str], List[_Entry]]:
  """Returns the class folders of a split, and its stray files as rejections."""
  folder = _split_folder(pattern, input_base)
  directory = input_base if folder == '.' else os.path.join(input_base, folder)
  if not fileio.isdir(directory):
    raise ValueError(f'Folder {directory} (split pattern {pattern!r}) does not '
                     f'exist under data root {input_base}.')
  class_folders, strays = [], []
  for name in sorted(n.rstrip('/') for n in fileio.listdir(directory)):
    if fileio.isdir(os.path.join(directory, name)):
      class_folders.append(_join(folder, name))
    else:
      strays.append((_join(folder, name), '', '',
                     'not inside a class folder (expected '
                     '<folder>/<class>/<image>)'))
  if not class_folders:
    raise ValueError(
        f'No class folders in {directory} (data root {input_base}): expected '
        f'one sub-folder per class, e.g. {os.path.join(directory, "cat")}/'
        '1.jpg.')
  return class_folders, strays


def _list_class_files(class_folder: str, input_base: str) -> Iterable[_Entry]:
  """Yields every file below a class folder."""
  top = os.path.join(input_base, class_folder)
  label = posixpath.basename(class_folder)
  for directory, _, filenames in fileio.walk(top):
    subfolder = directory[len(top):].strip('/')
    for name in filenames:
      path = posixpath.join(class_folder, subfolder, name)
      yield path, label, class_folder, None


def _manifest_path_problem(path: str) -> Optional[str]:
  """Returns why a manifest path may not be read, or None."""
  if (path.startswith(('/', '\\')) or '://' in path or
      path[1:3] in (':\\', ':/')):
    return 'absolute path in manifest: paths must be relative to the data root'
  normalized = posixpath.normpath(path)
  if normalized == '..' or normalized.startswith('../'):
    return "path escapes the data root via '..'"
  return None


def _read_manifest(input_base: str, pattern: str) -> List[_Entry]:
  """Reads a `path,label` manifest into entries (bad rows pre-rejected)."""
  manifest = os.path.join(input_base, pattern)
  if not fileio.exists(manifest):
    raise ValueError(
        f'Manifest {pattern!r} not found under data root {input_base} '
        f'(looked for {manifest}).')
  with fileio.open(manifest, 'rb') as f:
    reader = csv.DictReader(io.StringIO(f.read().decode('utf-8-sig')))
    fieldnames = [name.strip() for name in reader.fieldnames or []]
    reader.fieldnames = fieldnames
    rows = list(reader)
  if not {PATH_FEATURE, LABEL_FEATURE} <= set(fieldnames):
    raise ValueError(
        f'Manifest {manifest} (data root {input_base}) needs a header row '
        f'with "path" and "label" columns; found columns {fieldnames}.')
  entries, first_line = [], {}
  for line, row in enumerate(rows, start=2):
    raw_path = (row[PATH_FEATURE] or '').strip()
    label = (row[LABEL_FEATURE] or '').strip()
    if not raw_path or not label:
      reason = f'empty path or label in manifest line {line}'
    else:
      reason = _manifest_path_problem(raw_path)
    path = raw_path if reason else posixpath.normpath(raw_path)
    if not reason and path in first_line:
      reason = f'duplicate of manifest line {first_line[path]}'
    if not reason:
      first_line[path] = line
    entries.append((path, label, f'{pattern}:{label}', reason))
  return entries


class _ImagesToExample(beam.PTransform):
  """Reads, validates and converts the images of one input split."""

  def __init__(self, exec_properties: Dict[str, Any], split_pattern: str):
    super().__init__()
    self._input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
    self._pattern = split_pattern
    self._max_pixels = parse_custom_config(
        exec_properties.get(
            standard_component_specs.CUSTOM_CONFIG_KEY)).max_pixels
    self._records_prefix = os.path.join(exec_properties[_RECORDS_DIR_KEY],
                                        uuid.uuid4().hex)

  def expand(self, pipeline: beam.Pipeline) -> beam.PCollection:
    logging.info('Reading images under %s with pattern %r.', self._input_base,
                 self._pattern)
    if self._pattern.endswith('.csv'):
      rows = _read_manifest(self._input_base, self._pattern)
      expected = {
          key: f'label {label!r} in manifest {self._pattern!r}'
          for _, label, key, _ in rows if label
      }
      entries = pipeline | 'ManifestRows' >> beam.Create(rows)
    else:
      class_folders, strays = _class_folders(self._input_base, self._pattern)
      expected = {f: f'class folder {f!r}' for f in class_folders}
      entries = ((
          pipeline
          | 'ClassFolders' >> beam.Create(class_folders)
          | 'ListFiles' >> beam.FlatMap(_list_class_files, self._input_base),
          pipeline | 'StrayFiles' >> beam.Create(strays))
                 | 'Candidates' >> beam.Flatten())
    results = entries | 'Validate' >> beam.ParDo(
        _ValidateImage(self._input_base, self._max_pixels)).with_outputs(
            _REJECTED_TAG, main='accepted')
    records = (
        pipeline
        | 'ExpectedClasses' >> beam.Create([{
            'kind': 'expected', 'class': key, 'description': description
        } for key, description in sorted(expected.items())]),
        entries
        | 'CountRead' >> beam.combiners.Count.Globally()
        | 'ReadRecord' >> beam.Map(lambda n: {'kind': 'read', 'count': n}),
        results.accepted
        | 'ClassKeys' >> beam.Keys()
        | 'CountPerClass' >> beam.combiners.Count.PerElement()
        | 'ClassRecord' >> beam.MapTuple(lambda key, n: {
            'kind': 'ingested_class', 'class': key, 'count': n}),
        results[_REJECTED_TAG]
        | 'RejectedRecord' >> beam.Map(lambda r: {'kind': 'rejected', **r}))
    _ = (
        records
        | 'FlattenRecords' >> beam.Flatten()
        | 'ToJson' >> beam.Map(json.dumps)
        | 'WriteRecords' >> beam.io.WriteToText(self._records_prefix))
    return results.accepted | 'Examples' >> beam.Values()


class ImageExampleGenExecutor(base_example_gen_executor.BaseExampleGenExecutor):
  """FileBasedExampleGen executor for labelled images."""

  def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
    """Returns the PTransform that turns one input split into Examples."""
    return _ImagesToExample

  def GenerateExamplesByBeam(
      self, pipeline: beam.Pipeline,
      exec_properties: Dict[str, Any]) -> Dict[str, beam.PCollection]:
    """Runs the base implementation and records output counts per split."""
    splits = super().GenerateExamplesByBeam(pipeline, exec_properties)
    labels = [
        examples | f'Labels[{split}]' >> beam.Map(_split_and_label, split)
        for split, examples in splits.items()
    ]
    _ = (
        labels
        | 'FlattenLabels' >> beam.Flatten()
        | 'CountPerSplitLabel' >> beam.combiners.Count.PerElement()
        | 'SplitRecord' >> beam.MapTuple(lambda key, n: {
            'kind': 'ingested', 'split': key[0], 'label': key[1], 'count': n})
        | 'SplitRecordToJson' >> beam.Map(json.dumps)
        | 'WriteSplitRecords' >> beam.io.WriteToText(
            os.path.join(exec_properties[_RECORDS_DIR_KEY], 'splits')))
    return splits

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    """Generates the Examples, then writes, logs and checks the report.

    Args:
      input_dict: Unused (FileBasedExampleGen has no input artifacts).
      output_dict: `examples`: the single output Examples artifact.
      exec_properties: FileBasedExampleGen's exec properties; `custom_config`
        is parsed with `parse_custom_config`.

    Raises:
      ValueError: if no files were found, every file was rejected, a class has
        no valid image, fewer than two classes have valid images, or the
        rejected fraction exceeds max_rejected_fraction. The report is written
        to the Examples artifact before raising.
    """
    options = parse_custom_config(
        exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY))
    examples = artifact_utils.get_single_instance(
        output_dict[standard_component_specs.EXAMPLES_KEY])
    records_dir = os.path.join(examples.uri, '.ingestion_records')
    if fileio.exists(records_dir):
      fileio.rmtree(records_dir)
    super().Do(input_dict, output_dict,
               {**exec_properties, _RECORDS_DIR_KEY: records_dir})
    report = _build_report(
        _read_records(records_dir),
        exec_properties[standard_component_specs.INPUT_BASE_KEY],
        artifact_utils.decode_split_names(examples.split_names), options)
    fileio.rmtree(records_dir)
    report_path = os.path.join(examples.uri, REPORT_FILE_NAME)
    with fileio.open(report_path, 'w') as f:
      f.write(json.dumps(report, indent=2, sort_keys=True))
    _log_report(report, report_path)
    _check_report(report, report_path)


def _split_and_label(example: tf.train.Example, split: str) -> Tuple[str, str]:
  label = example.features.feature[LABEL_FEATURE].bytes_list.value[0]
  return split, label.decode('utf-8')


def _read_records(records_dir: str) -> List[Dict[str, Any]]:
  """Reads the JSON-lines records the Beam transforms wrote."""
  records = []
  for path in fileio.glob(os.path.join(records_dir, '*-of-*')):
    with fileio.open(path) as f:
      records.extend(json.loads(line) for line in f.read().splitlines() if line)
  return records


def _build_report(records: List[Dict[str, Any]], input_base: str,
                  split_names: List[str], options: Options) -> Dict[str, Any]:
  """Aggregates the per-file records into the ingestion report."""
  by_kind = collections.defaultdict(list)
  for record in records:
    by_kind[record['kind']].append(record)
  per_split_and_class = {split: {} for split in split_names}
  for record in by_kind['ingested']:
    per_split_and_class[record['split']][record['label']] = record['count']
  per_class = collections.Counter()
  for counts in per_split_and_class.values():
    per_class.update(counts)
  read = sum(record['count'] for record in by_kind['read'])
  ingested = sum(per_class.values())
  rejected = sorted(({
      'path': r['path'],
      'reason': r['reason']
  } for r in by_kind['rejected']), key=lambda r: r['path'])
  if read != ingested + len(rejected):
    raise RuntimeError(f'Ingestion counts do not add up for {input_base}: '
                       f'read {read}, ingested {ingested}, rejected '
                       f'{len(rejected)}.')
  ingested_classes = {record['class'] for record in by_kind['ingested_class']}
  return {
      'data_root': input_base,
      'counts': {'read': read, 'ingested': ingested, 'rejected': len(rejected)},
      'rejected_fraction': len(rejected) / read if read else 0.0,
      'ingested_per_split': {
          split: sum(counts.values())
          for split, counts in per_split_and_class.items()
      },
      'ingested_per_class': dict(sorted(per_class.items())),
      'ingested_per_split_and_class': {
          split: dict(sorted(counts.items()))
          for split, counts in per_split_and_class.items()
      },
      'classes_without_valid_images': sorted(
          record['description'] for record in by_kind['expected']
          if record['class'] not in ingested_classes),
      'rejected_files': rejected,
      'options': options._asdict(),
  }


def _log_report(report: Dict[str, Any], report_path: str) -> None:
  counts = report['counts']
  logging.info(
      'Image ingestion from %s: read %d, ingested %d, rejected %d (%.1f%%); '
      'per split %s; per class %s. Report: %s', report['data_root'],
      counts['read'], counts['ingested'], counts['rejected'],
      100 * report['rejected_fraction'], report['ingested_per_split'],
      report['ingested_per_class'], report_path)
  for rejected in report['rejected_files']:
    logging.warning('Rejected %s: %s', rejected['path'], rejected['reason'])


def _first_rejected(rejected: List[Dict[str, str]]) -> str:
  listed = '; '.join(
      f"{r['path']} ({r['reason']})" for r in rejected[:_ERROR_LISTING_LIMIT])
  if len(rejected) > _ERROR_LISTING_LIMIT:
    listed += f'; and {len(rejected) - _ERROR_LISTING_LIMIT} more'
  return listed


def _check_report(report: Dict[str, Any], report_path: str) -> None:
  """Raises ValueError when the ingested data is unusable for training."""
  root, counts = report['data_root'], report['counts']
  rejected = report['rejected_files']
  if not counts['read']:
    raise ValueError(
        f'No files found under data root {root}: put images in one sub-folder '
        f'per class (e.g. {os.path.join(root, "cat", "1.jpg")}) or list them '
        'in the manifest.')
  if not counts['ingested']:
    raise ValueError(
        f'All {counts["read"]} files under data root {root} were rejected: '
        f'{_first_rejected(rejected)}. Full list in {report_path}.')
  if report['classes_without_valid_images']:
    raise ValueError(
        'No valid image for '
        f'{", ".join(report["classes_without_valid_images"])} under data root '
        f'{root}: it is empty or all its files were rejected (see '
        f'{report_path}). Add valid images or remove the class.')
  if len(report['ingested_per_class']) < 2:
    raise ValueError(
        f'Only one class ({next(iter(report["ingested_per_class"]))!r}) has '
        f'valid images under data root {root}; a classifier needs at least '
        'two. Add one sub-folder (or manifest label) per class.')
  max_fraction = report['options']['max_rejected_fraction']
  if report['rejected_fraction'] > max_fraction:
    raise ValueError(
        f'{counts["rejected"]} of {counts["read"]} files '
        f'({report["rejected_fraction"]:.1%}) under data root {root} were '
        f'rejected, more than max_rejected_fraction={max_fraction:g}. First '
        f'rejected: {_first_rejected(rejected)}. Fix or remove these files or '
        f'raise max_rejected_fraction (full list in {report_path}).')


def image_example_gen(
    data_root: str,
    *,
    manifest: Optional[str] = None,
    split_folders: Optional[Sequence[str]] = None,
    train_eval_buckets: Tuple[int, int] = (4, 1),
    max_rejected_fraction: float = DEFAULT_MAX_REJECTED_FRACTION,
    max_pixels: int = DEFAULT_MAX_PIXELS,
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

  Returns:
    The FileBasedExampleGen component (output: `examples`).
  """
  if manifest and split_folders:
    raise ValueError('Pass either manifest or split_folders, not both.')
  if manifest and not manifest.endswith('.csv'):
    raise ValueError(f'manifest must be a .csv file, got {manifest!r}.')
  if split_folders:
    if len(split_folders) < 2 or len(set(split_folders)) != len(split_folders):
      raise ValueError('split_folders needs at least two distinct folder '
                       f'names, got {split_folders!r}.')
    # 'train/*' rather than 'train': the driver fingerprints the files the
    # pattern matches, so this way the class folders' mtimes count.
    input_config = example_gen_pb2.Input(splits=[
        example_gen_pb2.Input.Split(name=name, pattern=f'{name}/*')
        for name in split_folders
    ])
    output_config = example_gen_pb2.Output()
  else:
    if (len(train_eval_buckets) != 2 or
        any(not isinstance(b, int) or b < 1 for b in train_eval_buckets)):
      raise ValueError('train_eval_buckets must be two positive integers, got '
                       f'{train_eval_buckets!r}.')
    input_config = example_gen_pb2.Input(splits=[
        example_gen_pb2.Input.Split(
            name='single_split', pattern=manifest or '*')
    ])
    output_config = example_gen_pb2.Output(
        split_config=example_gen_pb2.SplitConfig(
            splits=[
                example_gen_pb2.SplitConfig.Split(
                    name='train', hash_buckets=train_eval_buckets[0]),
                example_gen_pb2.SplitConfig.Split(
                    name='eval', hash_buckets=train_eval_buckets[1]),
            ],
            partition_feature_name=PATH_FEATURE))
  return component.FileBasedExampleGen(
      input_base=data_root,
      input_config=input_config,
      output_config=output_config,
      custom_config=make_custom_config(max_rejected_fraction, max_pixels),
      custom_executor_spec=executor_spec.BeamExecutorSpec(
          ImageExampleGenExecutor))
