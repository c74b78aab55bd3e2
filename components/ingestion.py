"""What the image and text ExampleGen executors share: options, the report.

Each executor validates its inputs in Beam and never drops one silently. The
Beam transforms write small JSON records (what was expected, read, ingested
and rejected, and why); `ReportingExecutor.Do` aggregates them into
`ingestion_report.json` in the Examples artifact, logs it, and fails with a
ValueError naming the data root when the data is unusable for training.
"""

import collections
import dataclasses
import errno
import hashlib
import json
import os
import posixpath
import stat
import unicodedata
import uuid
from typing import (
  Any,
  Callable,
  Dict,
  Iterable,
  List,
  NamedTuple,
  Optional,
  Tuple,
  Type,
)

from absl import logging
import apache_beam as beam
from google.protobuf import json_format
from google.protobuf import struct_pb2
import tensorflow as tf
from tfx import types
from tfx.components.example_gen import base_example_gen_executor
from tfx.components.example_gen import utils as example_gen_utils
from tfx.components.example_gen import write_split
from tfx.components.util import examples_utils
from tfx.dsl.io import fileio
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils
from tfx.types import standard_component_specs
from tfx.utils import proto_utils

from pipeline import settings as settings_lib

REPORT_FILE_NAME = 'ingestion_report.json'
LABEL_FEATURE = 'label'
# exec_properties key through which Do tells the Beam transforms where to put
# their records (read back and deleted after the pipeline).
RECORDS_DIR_KEY = '_ingestion_records_dir'
REJECTED_TAG = 'rejected'
# Opt-in options, off by default; packed into custom_config (and listed in
# the report's options) only when on, so pipelines without them compile as
# before.
ALLOW_OUTSIDE_KEY = 'allow_paths_outside_data_root'
REQUIRE_EVERY_SPLIT_KEY = 'require_every_split'
_OPT_IN_KEYS = (ALLOW_OUTSIDE_KEY, REQUIRE_EVERY_SPLIT_KEY)
_ERROR_LISTING_LIMIT = 5


@dataclasses.dataclass(frozen=True)
class Items:
  """How a report and its errors name what an executor reads.

  Attributes:
    kind: 'Image' or 'Text', for the log.
    plural: what is read and rejected, e.g. 'files' ('rejected_files').
    key: the field naming one rejected item, e.g. 'path'.
    valid: what a class needs at least one of, e.g. 'image'.
    valid_plural: e.g. 'images' ('classes_without_valid_images').
    layout_hint: how to lay out the data, for the "nothing found" error;
      `{root}` is replaced by the data root.
    class_hint: how to add a class, for the "one class" error.
  """

  kind: str
  plural: str
  key: str
  valid: str
  valid_plural: str
  layout_hint: str
  class_hint: str


def packed_options(options: NamedTuple) -> Dict[str, Any]:
  """`options` as custom_config carries them (opt-ins only when on)."""
  return {
    k: list(v) if isinstance(v, tuple) else v
    for k, v in options._asdict().items()
    if k not in _OPT_IN_KEYS or v
  }


def pack_options(options: NamedTuple) -> example_gen_pb2.CustomConfig:
  """An ExampleGen custom_config packing `options` as a Struct."""
  struct = struct_pb2.Struct()
  struct.update(packed_options(options))
  config = example_gen_pb2.CustomConfig()
  config.custom_config.Pack(struct)
  return config


def unpack_options(custom_config: Any, factory: str) -> Dict[str, Any]:
  """The option values in a custom_config exec property ({} if unset).

  Args:
    custom_config: JSON of a CustomConfig (as exec_properties hold it), a
      CustomConfig, or None.
    factory: the function that builds it, named in errors.
  """
  if not custom_config:
    return {}
  if isinstance(custom_config, str):
    if 'custom_config' not in json.loads(custom_config):
      raise ValueError(
        'custom_config must be an example_gen_pb2.CustomConfig; build it '
        f'with {factory}(...), got {custom_config}.'
      )
    custom_config = proto_utils.json_to_proto(
      custom_config, example_gen_pb2.CustomConfig()
    )
  struct = struct_pb2.Struct()
  if not custom_config.custom_config.Unpack(struct):
    raise ValueError(
      f'custom_config must pack a google.protobuf.Struct (use {factory}), '
      f'got {custom_config.custom_config.type_url}.'
    )
  return json_format.MessageToDict(struct)


def check_option_names(
  values: Dict[str, Any], options: Type[NamedTuple], what: str
) -> None:
  settings_lib.check_keys(values, options._fields, f'{what} options')


def check_max_rejected_fraction(value: float) -> float:
  settings_lib.check_value(
    settings_lib.PipelineConfig, 'max_rejected_fraction', value
  )
  return float(value)


def check_opt_ins(options: NamedTuple) -> NamedTuple:
  """Checks that the opt-in options are booleans."""
  for key in _OPT_IN_KEYS:
    if not isinstance(getattr(options, key), bool):
      raise ValueError(
        f'{key} must be true or false, got {getattr(options, key)!r}.'
      )
  return options


def hash_split_config(
  train_eval_buckets: Tuple[int, int], partition_feature: str
) -> example_gen_pb2.Output:
  """The output config hashing `partition_feature` into train and eval.

  Args:
    train_eval_buckets: hash buckets of train and eval (4:1 = 80/20), two
      positive integers (checked).
    partition_feature: the feature hashed, so that a split stays put.
  """
  if len(train_eval_buckets) != 2 or any(
    not isinstance(b, int) or b < 1 for b in train_eval_buckets
  ):
    raise ValueError(
      'train_eval_buckets must be two positive integers, got '
      f'{train_eval_buckets!r}.'
    )
  return example_gen_pb2.Output(
    split_config=example_gen_pb2.SplitConfig(
      splits=[
        example_gen_pb2.SplitConfig.Split(name=name, hash_buckets=buckets)
        for name, buckets in zip(('train', 'eval'), train_eval_buckets)
      ],
      partition_feature_name=partition_feature,
    )
  )


def describe(error: Exception) -> str:
  return str(error) or type(error).__name__


def normalize_label(raw: str) -> str:
  """The class name a raw label stands for.

  Unicode NFC (a precomposed and a decomposed 'é' are one letter), every run
  of whitespace (spaces, tabs, no-break spaces, newlines) made one space, and
  stripped: 'cat', ' cat', 'cat\t' and 'cat\u00a0' are one class. Case is
  kept ('Cat' is another class). '' means no label.
  """
  return ' '.join(unicodedata.normalize('NFC', raw).split())


def printable_path(path: str) -> str:
  """`path` as valid UTF-8 text; undecodable bytes of a file name as \\xNN."""
  return path.encode('utf-8', 'surrogateescape').decode(
    'utf-8', 'backslashreplace'
  )


def full_path(input_base: str, path: str) -> str:
  """Where to read a listed path: relative to the data root unless absolute."""
  if path.startswith('/') or '://' in path:
    return path
  return os.path.join(input_base, path)


def is_local(path: str) -> bool:
  return '://' not in path


def local_file_problem(
  input_base: str, path: str, allow_outside: bool
) -> Optional[str]:
  """Returns why a local file may not be read, or None.

  Catches what reading would hang on or misreport: symlink loops, broken
  symlinks, folders, FIFOs, sockets and devices; and, unless allow_outside,
  a file whose real path (symlinks resolved) is outside the data root.
  Remote URIs (gs://...) have no symlinks and are left to `read_file`.

  Args:
    input_base: the data root.
    path: the full path, from `full_path`.
    allow_outside: whether files outside the data root may be read.
  """
  if not (is_local(path) and is_local(input_base)):
    return None
  try:
    mode = os.stat(path).st_mode
  except OSError as e:
    if e.errno == errno.ELOOP:
      return 'symlink loop (too many levels of symbolic links)'
    if e.errno == errno.ENOENT and os.path.islink(path):
      return f'broken symlink (its target {os.readlink(path)} does not exist)'
    if e.errno == errno.ENOENT:
      return 'file not found'
    return f'unreadable file: {e.strerror}'
  if stat.S_ISDIR(mode):
    return 'a folder, not a file'
  if not stat.S_ISREG(mode):
    return 'not a regular file (a FIFO, socket or device)'
  if not allow_outside:
    real, root = os.path.realpath(path), os.path.realpath(input_base)
    if os.path.commonpath([real, root]) != root:
      return (
        f'resolves outside the data root (to {real}); set '
        f'{ALLOW_OUTSIDE_KEY} to read it'
      )
  return None


def read_file(path: str) -> Tuple[bytes, Optional[str]]:
  """Reads a file; returns (bytes, None) or (b'', why it is unreadable)."""
  try:
    with fileio.open(path, 'rb') as f:
      return f.read(), None
  except (FileNotFoundError, tf.errors.NotFoundError):
    return b'', 'file not found'
  except (OSError, tf.errors.OpError) as e:
    return b'', f'unreadable file: {describe(e)}'


def relative_path_problem(path: str) -> Optional[str]:
  """Returns why a path listed in a manifest may not be read, or None."""
  if (
    path.startswith(('/', '\\')) or '://' in path or path[1:3] in (':\\', ':/')
  ):
    return 'absolute path in manifest: paths must be relative to the data root'
  normalized = posixpath.normpath(path)
  if normalized == '..' or normalized.startswith('../'):
    return "path escapes the data root via '..'"
  return None


def bytes_feature(value: bytes) -> tf.train.Feature:
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def int64_feature(value: int) -> tf.train.Feature:
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def records_prefix(exec_properties: Dict[str, Any]) -> str:
  """A fresh file prefix for one split transform's records."""
  return os.path.join(exec_properties[RECORDS_DIR_KEY], uuid.uuid4().hex)


def write_split_records(
  pipeline: beam.Pipeline,
  prefix: str,
  expected: Dict[str, str],
  candidates: beam.PCollection,
  accepted: beam.PCollection,
  rejected: beam.PCollection,
  raw_labels: Iterable[str] = (),
) -> None:
  """Writes one input split's records for the report.

  Args:
    pipeline: the Beam pipeline.
    prefix: from `records_prefix`.
    expected: class key -> how to name it if it ends up with no valid item.
    candidates: everything read (counted).
    accepted: (class key, Example) pairs.
    rejected: {key: item, 'reason': why} dicts.
    raw_labels: the labels as written in the data, before `normalize_label`.
  """
  records = (
    pipeline
    | 'ExpectedClasses'
    >> beam.Create(
      [
        {'kind': 'expected', 'class': key, 'description': description}
        for key, description in sorted(expected.items())
      ]
    ),
    pipeline
    | 'RawLabels'
    >> beam.Create(
      [
        {'kind': 'raw_label', 'raw': raw, 'label': normalize_label(raw)}
        for raw in sorted(set(raw_labels))
      ]
    ),
    candidates
    | 'CountRead' >> beam.combiners.Count.Globally()
    | 'ReadRecord' >> beam.Map(lambda n: {'kind': 'read', 'count': n}),
    accepted
    | 'ClassKeys' >> beam.Keys()
    | 'CountPerClass' >> beam.combiners.Count.PerElement()
    | 'ClassRecord'
    >> beam.MapTuple(
      lambda key, n: {'kind': 'ingested_class', 'class': key, 'count': n}
    ),
    rejected
    | 'RejectedRecord' >> beam.Map(lambda r: {'kind': 'rejected', **r}),
  )
  _ = (
    records
    | 'FlattenRecords' >> beam.Flatten()
    | 'ToJson' >> beam.Map(json.dumps)
    | 'WriteRecords' >> beam.io.WriteToText(prefix)
  )


class SplitToExamples(beam.PTransform):
  """Base of the PTransforms that turn one input split into Examples.

  Subclasses set `parse_options` (the custom_config exec property -> their
  options, a NamedTuple with `max_rejected_fraction`) and write each split
  with `write_split_records` in `expand`.
  """

  parse_options: Callable[[Any], NamedTuple]

  def __init__(self, exec_properties: Dict[str, Any], split_pattern: str):
    super().__init__()
    self._input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
    self._pattern = split_pattern
    self._options = self.parse_options(
      exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY)
    )
    self._records_prefix = records_prefix(exec_properties)


class ReportingExecutor(base_example_gen_executor.BaseExampleGenExecutor):
  """A FileBasedExampleGen executor that writes and checks the report.

  Subclasses name their items (`ITEMS`) and return a `SplitToExamples`.
  """

  ITEMS: Items

  def parse_options(self, custom_config: Any) -> NamedTuple:
    """Parses the custom_config exec property as the PTransform does."""
    return self.GetInputSourceToExamplePTransform().parse_options(custom_config)

  def GenerateExamplesByBeam(
    self, pipeline: beam.Pipeline, exec_properties: Dict[str, Any]
  ) -> Dict[str, beam.PCollection]:
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
      | 'SplitRecord'
      >> beam.MapTuple(
        lambda key, n: {
          'kind': 'ingested',
          'split': key[0],
          'label': key[1],
          'count': n,
        }
      )
      | 'SplitRecordToJson' >> beam.Map(json.dumps)
      | 'WriteSplitRecords'
      >> beam.io.WriteToText(
        os.path.join(exec_properties[RECORDS_DIR_KEY], 'splits')
      )
    )
    return splits

  def Do(
    self,
    input_dict: Dict[str, List[types.Artifact]],
    output_dict: Dict[str, List[types.Artifact]],
    exec_properties: Dict[str, Any],
  ) -> None:
    """Generates the Examples, then writes, logs and checks the report.

    Args:
      input_dict: Unused (FileBasedExampleGen has no input artifacts).
      output_dict: `examples`: the single output Examples artifact.
      exec_properties: FileBasedExampleGen's exec properties; `custom_config`
        is parsed with `parse_options`.

    Raises:
      ValueError: if nothing was found, everything was rejected, a class has
        no valid item, fewer than two classes have valid items, or the
        rejected fraction exceeds max_rejected_fraction. The report is written
        to the Examples artifact before raising.
    """
    options = self.parse_options(
      exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY)
    )
    examples = artifact_utils.get_single_instance(
      output_dict[standard_component_specs.EXAMPLES_KEY]
    )
    records_dir = os.path.join(examples.uri, '.ingestion_records')
    if fileio.exists(records_dir):
      fileio.rmtree(records_dir)
    self._write_splits(
      input_dict, output_dict, {**exec_properties, RECORDS_DIR_KEY: records_dir}
    )
    report = build_report(
      _read_records(records_dir),
      exec_properties[standard_component_specs.INPUT_BASE_KEY],
      artifact_utils.decode_split_names(examples.split_names),
      options,
      self.ITEMS,
    )
    fileio.rmtree(records_dir)
    report_path = os.path.join(examples.uri, REPORT_FILE_NAME)
    with fileio.open(report_path, 'w') as f:
      f.write(json.dumps(report, indent=2, sort_keys=True))
    _log_report(report, report_path, self.ITEMS)
    check_report(report, report_path, self.ITEMS)

  def _write_splits(
    self,
    input_dict: Dict[str, List[types.Artifact]],
    output_dict: Dict[str, List[types.Artifact]],
    exec_properties: Dict[str, Any],
  ) -> None:
    """BaseExampleGenExecutor.Do, writing each split without a shuffle.

    TFX's `write_split.WriteSplit` puts every split through a Reshuffle (a
    GroupByKey), which the local DirectRunner holds whole in memory. The
    hash split needs no shuffle, so each split's shards are written straight
    from the stage that reads and validates the files: memory stays flat in
    the data's size. Entries are read in path-hash order (`hash_order`), so
    the shards are not sorted by class; the Trainer shuffles on top.
    Examples are serialized deterministically (`_serialize`).
    """
    self._log_startup(input_dict, output_dict, exec_properties)
    input_config = example_gen_pb2.Input()
    proto_utils.json_to_proto(
      exec_properties[standard_component_specs.INPUT_CONFIG_KEY], input_config
    )
    output_config = example_gen_pb2.Output()
    proto_utils.json_to_proto(
      exec_properties[standard_component_specs.OUTPUT_CONFIG_KEY], output_config
    )
    artifacts = output_dict[standard_component_specs.EXAMPLES_KEY]
    artifact_utils.get_single_instance(
      artifacts
    ).split_names = artifact_utils.encode_split_names(
      example_gen_utils.generate_output_split_names(input_config, output_config)
    )
    with self._make_beam_pipeline() as pipeline:
      for split, examples in self.GenerateExamplesByBeam(
        pipeline, exec_properties
      ).items():
        _ = (
          examples
          | f'Serialize[{split}]' >> beam.Map(_serialize)
          | f'Write[{split}]'
          >> beam.io.WriteToTFRecord(
            os.path.join(
              artifact_utils.get_split_uri(artifacts, split),
              write_split.DEFAULT_TF_RECORD_FILE_NAME,
            ),
            file_name_suffix='.gz',
          )
        )
    payload_format = exec_properties.get(
      standard_component_specs.OUTPUT_DATA_FORMAT_KEY
    )
    file_format = exec_properties.get(
      standard_component_specs.OUTPUT_FILE_FORMAT_KEY
    )
    for artifact in artifacts:
      if payload_format:
        examples_utils.set_payload_format(artifact, payload_format)
      if file_format:
        examples_utils.set_file_format(
          artifact, write_split.to_file_format_str(file_format)
        )


def _serialize(example: tf.train.Example) -> bytes:
  """The same bytes on every run and machine, which the Trainer's
  fit/validation carve hashes (modules/trainer.py, `in_part`). TFX's
  `write_split.MaybeSerialize` calls `SerializeToString()`, whose feature map
  order changes from process to process."""
  return example.SerializeToString(deterministic=True)


def hash_order(entries: Iterable[Any], key: Callable[[Any], str]) -> List[Any]:
  """`entries` sorted by a hash of `key(entry)`: a fixed order that mixes
  classes (listings and data files are often sorted by class), so the
  Examples need no shuffle to be written unsorted."""
  return sorted(
    entries,
    key=lambda entry: hashlib.sha256(
      key(entry).encode('utf-8', 'surrogateescape')
    ).digest(),
  )


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


def build_report(
  records: Iterable[Dict[str, Any]],
  input_base: str,
  split_names: List[str],
  options: NamedTuple,
  items: Items,
) -> Dict[str, Any]:
  """Aggregates the records into the ingestion report."""
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
  rejected = sorted(
    (
      {items.key: r[items.key], 'reason': r['reason']}
      for r in by_kind['rejected']
    ),
    key=lambda r: r[items.key],
  )
  if read != ingested + len(rejected):
    raise RuntimeError(
      f'Ingestion counts do not add up for {input_base}: '
      f'read {read}, ingested {ingested}, rejected '
      f'{len(rejected)}.'
    )
  ingested_classes = {record['class'] for record in by_kind['ingested_class']}
  spellings = collections.defaultdict(set)
  for record in by_kind['raw_label']:
    spellings[record['label']].add(record['raw'])
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
    f'classes_without_valid_{items.valid_plural}': sorted(
      record['description']
      for record in by_kind['expected']
      if record['class'] not in ingested_classes
    ),
    f'rejected_{items.plural}': rejected,
    # Labels written differently in the data, merged into one class.
    'label_spellings': {
      label: sorted(raws)
      for label, raws in sorted(spellings.items())
      if label and raws != {label}
    },
    # Classes a split has no example of (e.g. a class with one example).
    'classes_missing_from_split': {
      split: sorted(set(per_class) - set(counts))
      for split, counts in per_split_and_class.items()
      if set(per_class) - set(counts)
    },
    ALLOW_OUTSIDE_KEY: getattr(options, ALLOW_OUTSIDE_KEY),
    'options': packed_options(options),
  }


def _log_report(report: Dict[str, Any], report_path: str, items: Items) -> None:
  counts = report['counts']
  logging.info(
    '%s ingestion from %s: read %d, ingested %d, rejected %d (%.1f%%); '
    'per split %s; per class %s. Report: %s',
    items.kind,
    report['data_root'],
    counts['read'],
    counts['ingested'],
    counts['rejected'],
    100 * report['rejected_fraction'],
    report['ingested_per_split'],
    report['ingested_per_class'],
    report_path,
  )
  for rejected in report[f'rejected_{items.plural}']:
    logging.warning('Rejected %s: %s', rejected[items.key], rejected['reason'])
  for label, raws in report['label_spellings'].items():
    logging.warning(
      'Labels %s are one class, %r (labels are NFC-normalized, '
      'whitespace collapsed and stripped).',
      raws,
      label,
    )
  for split, classes in report['classes_missing_from_split'].items():
    logging.warning('Split %s has no example of class(es) %s.', split, classes)


def _first_rejected(rejected: List[Dict[str, str]], key: str) -> str:
  listed = '; '.join(
    f'{r[key]} ({r["reason"]})' for r in rejected[:_ERROR_LISTING_LIMIT]
  )
  if len(rejected) > _ERROR_LISTING_LIMIT:
    listed += f'; and {len(rejected) - _ERROR_LISTING_LIMIT} more'
  return listed


def check_report(
  report: Dict[str, Any], report_path: str, items: Items
) -> None:
  """Raises ValueError when the ingested data is unusable for training."""
  root, counts = report['data_root'], report['counts']
  rejected = _first_rejected(report[f'rejected_{items.plural}'], items.key)
  empty_classes = report[f'classes_without_valid_{items.valid_plural}']
  if not counts['read']:
    raise ValueError(
      f'No {items.plural} found under data root {root}: '
      f'{items.layout_hint.format(root=root)}.'
    )
  if not counts['ingested']:
    raise ValueError(
      f'All {counts["read"]} {items.plural} under data root {root} were '
      f'rejected: {rejected}. Full list in {report_path}.'
    )
  if empty_classes:
    raise ValueError(
      f'No valid {items.valid} for {", ".join(empty_classes)} under data '
      f'root {root}: it is empty or all its {items.plural} were rejected '
      f'(see {report_path}). Add valid {items.valid_plural} or remove the '
      'class.'
    )
  if len(report['ingested_per_class']) < 2:
    raise ValueError(
      f'Only one class ({next(iter(report["ingested_per_class"]))!r}) has '
      f'valid {items.valid_plural} under data root {root}; a classifier '
      f'needs at least two. {items.class_hint}'
    )
  max_fraction = report['options']['max_rejected_fraction']
  if report['rejected_fraction'] > max_fraction:
    raise ValueError(
      f'{counts["rejected"]} of {counts["read"]} {items.plural} '
      f'({report["rejected_fraction"]:.1%}) under data root {root} were '
      f'rejected, more than max_rejected_fraction={max_fraction:g}. First '
      f'rejected: {rejected}. Fix or remove these {items.plural} or raise '
      f'max_rejected_fraction (full list in {report_path}).'
    )
  empty_splits = [
    split for split, count in report['ingested_per_split'].items() if not count
  ]
  if empty_splits and report['options'].get(REQUIRE_EVERY_SPLIT_KEY):
    raise ValueError(
      f'The {" and ".join(empty_splits)} split(s) got no {items.valid_plural}'
      f' under data root {root}: the model could not be evaluated, so it '
      f'could not be blessed. {counts["ingested"]} {items.valid_plural} '
      f'went to {report["ingested_per_split"]}; add more data (see '
      f'{report_path}).'
    )
