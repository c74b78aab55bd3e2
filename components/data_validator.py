"""ExampleValidator: the data validation gate, before Transform.

TFX's stock ExampleValidator checks one run's statistics against a schema and
never fails. This one (node id `ExampleValidator`) runs four checks with
TFDV and stops the run, raising `DataAnomaliesError`, when any finds an
anomaly not named in `warn_anomalies`:

  schema          each split's statistics against the reference schema
                  (tfdv.validate_statistics): unknown classes or formats,
                  values out of range, missing features, ...
  label_coverage  every class of the reference schema's label domain has
                  examples in each split (TFDV flags new values, not missing
                  ones)
  drift           this run's train split against the served run's
                  (`previous_statistics`): the label with
                  `label_drift_comparator`
                  (L-infinity or Jensen-Shannon divergence), image width and
                  height and text length with Jensen-Shannon divergence
  skew            train against eval (`serving_statistics`), the same
                  features and comparators

The reference is, in order: the curated schema (`curated_schema`, from
ImportSchemaGen and the user's `schema_file`); else the schema recorded
beside the served model (the newest version under `baseline_dir`, which
components/atomic_pusher.py writes as `<version>.data/`); else this run's
inferred schema. The previous statistics are the served model's run's, from
the same `.data/` folder: no MLMD query, so the check runs the same locally,
on Kubeflow and in CI with a durable `serving/`. A served version without
recorded data is a warning (`check: baseline`), not silence.

The output ExampleAnomalies artifact holds `SchemaDiff.pb` per split (TFDV's
anomalies, as TFX's ExampleValidator writes them) and `validation.json`, what
`validate` returns: `anomalies` and `warnings` (each `check`, `feature`,
`split`, `reason`, `expected`, `found`) and the `reference` used.
"""

import dataclasses
import json
import os
from typing import Any, Dict, List, Optional, Sequence

from absl import logging
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tensorflow_metadata.proto.v0 import schema_pb2
from tensorflow_metadata.proto.v0 import statistics_pb2
from tfx import types
from tfx.dsl.components.base import base_component
from tfx.dsl.components.base import base_executor
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.types import artifact_utils
from tfx.types import channel
from tfx.types import component_spec
from tfx.types import standard_artifacts
from tfx.utils import io_utils

from components import serving_baseline_evaluator

SPLITS = ('train', 'eval')
LABEL = 'label'
# Distributions compared for drift and skew besides the label (Jensen-Shannon
# divergence; TFDV compares numeric features only that way).
NUMERIC_DRIFT_FEATURES = ('image_width', 'image_height', 'text_length')
RESULT_FILE = 'validation.json'
SCHEMA_FILE = 'schema.pbtxt'
STATISTICS_DIR = 'statistics'
STATS_FILE = 'FeatureStats.pb'
_COMPARATOR_REASONS = (
  anomalies_pb2.AnomalyInfo.COMPARATOR_L_INFTY_HIGH,
  anomalies_pb2.AnomalyInfo.COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH,
  anomalies_pb2.AnomalyInfo.COMPARATOR_NORMALIZED_ABSOLUTE_DIFFERENCE_HIGH,
)


@dataclasses.dataclass(frozen=True)
class Settings:
  """The gate's thresholds (PipelineConfig's fields of the same names,
  checked there)."""

  label_drift_comparator: str = 'infinity_norm'
  label_drift_threshold: float = 0.1
  feature_drift_threshold: float = 0.1
  split_skew_threshold: float = 0.15
  warn_anomalies: Sequence[str] = ()

  def to_json(self) -> str:
    return json.dumps(
      {**dataclasses.asdict(self), 'warn_anomalies': list(self.warn_anomalies)},
      sort_keys=True,
    )

  @classmethod
  def of(cls, config) -> 'Settings':
    """The settings of a PipelineConfig."""
    return cls(
      **{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)}
    )

  @classmethod
  def from_json(cls, text: str) -> 'Settings':
    return cls(**json.loads(text))


class DataAnomaliesError(RuntimeError):
  """The data failed validation: the run stops before Transform.

  Attributes:
    outcome: what `validate` returned (anomalies, warnings, reference).
    run_result: set by pipeline/local_runner.py: what the run did until then.
  """

  def __init__(self, outcome: Dict[str, Any]):
    lines = [
      f'  {a["check"]} {a["feature"]} ({a["split"]}): expected '
      f'{a["expected"]}; found {a["found"]}'
      for a in outcome['anomalies']
    ]
    super().__init__(
      f'{len(lines)} data anomalies; the run stops before '
      'Transform, nothing is pushed:\n' + '\n'.join(lines)
    )
    self.outcome = outcome
    self.run_result = None


def load_statistics(
  statistics_dir: str, split: str
) -> statistics_pb2.DatasetFeatureStatisticsList:
  return tfdv.load_stats_binary(
    os.path.join(statistics_dir, f'Split-{split}', STATS_FILE)
  )


def load_schema(path: str) -> schema_pb2.Schema:
  """A schema from a .pbtxt file or a Schema artifact directory."""
  if fileio.isdir(path):
    path = os.path.join(path, SCHEMA_FILE)
  return tfdv.load_schema_text(path)


def recorded_data(version_dir: str) -> str:
  """Where the Pusher records the statistics and schema of a version."""
  return version_dir.rstrip('/') + '.data'


def _entry(
  check: str, feature: str, split: str, reason: str, expected: str, found: str
) -> Dict[str, str]:
  return {
    'check': check,
    'feature': feature,
    'split': split,
    'reason': reason,
    'expected': expected,
    'found': found,
  }


def _features(schema: schema_pb2.Schema) -> Dict[str, schema_pb2.Feature]:
  return {f.name: f for f in schema.feature}


def _expected(feature: Optional[schema_pb2.Feature]) -> str:
  """The schema's constraint on a feature, in a line."""
  if feature is None:
    return 'no such feature in the schema'
  parts = []
  if feature.HasField('string_domain') or feature.HasField('domain'):
    values = list(feature.string_domain.value)
    parts.append(f'one of {values[:20]}{" ..." if len(values) > 20 else ""}')
  if feature.HasField('int_domain'):
    domain = feature.int_domain
    low = domain.min if domain.HasField('min') else '-inf'
    high = domain.max if domain.HasField('max') else 'inf'
    parts.append(f'values in [{low}, {high}]')
  if feature.presence.min_fraction:
    parts.append(
      f'present in >= {feature.presence.min_fraction:g} of the examples'
    )
  parts.append(f'type {schema_pb2.FeatureType.Name(feature.type)}')
  return ', '.join(parts)


def _schema_entries(
  anomalies: anomalies_pb2.Anomalies, schema: schema_pb2.Schema, split: str
):
  features = _features(schema)
  for name, info in sorted(anomalies.anomaly_info.items()):
    for reason in info.reason:
      if reason.type in _COMPARATOR_REASONS:
        continue
      yield _entry(
        'schema',
        name,
        split,
        anomalies_pb2.AnomalyInfo.Type.Name(reason.type),
        _expected(features.get(name)),
        reason.description,
      )


def _label_values(
  statistics: statistics_pb2.DatasetFeatureStatisticsList,
) -> Optional[List[str]]:
  for feature in statistics.datasets[0].features:
    if feature.path.step == [LABEL] or feature.name == LABEL:
      buckets = feature.string_stats.rank_histogram.buckets
      return [b.label for b in buckets if b.sample_count > 0]
  return None


def _coverage_entries(statistics, schema: schema_pb2.Schema, split: str):
  feature = _features(schema).get(LABEL)
  seen = _label_values(statistics)
  if feature is None or seen is None:
    return
  domain = list(feature.string_domain.value)
  if not domain and feature.domain:
    domain = list(tfdv.get_domain(schema, LABEL).value)
  missing = sorted(set(domain) - set(seen))
  if missing:
    yield _entry(
      'label_coverage',
      LABEL,
      split,
      'CLASS_MISSING',
      f'examples of every class in the label domain {domain}',
      f'no examples of {missing}',
    )


def _without_comparators(schema: schema_pb2.Schema) -> schema_pb2.Schema:
  plain = schema_pb2.Schema()
  plain.CopyFrom(schema)
  for feature in plain.feature:
    feature.ClearField('drift_comparator')
    feature.ClearField('skew_comparator')
  return plain


def _with_comparators(
  schema: schema_pb2.Schema,
  kind: str,
  label_comparator: str,
  label_threshold: float,
  threshold: float,
) -> schema_pb2.Schema:
  """A copy of `schema` with only `kind` ('drift' | 'skew') comparators:
  the label's, and Jensen-Shannon on NUMERIC_DRIFT_FEATURES."""
  compared = _without_comparators(schema)
  for feature in compared.feature:
    comparator = getattr(feature, f'{kind}_comparator')
    if feature.name == LABEL:
      getattr(comparator, label_comparator).threshold = label_threshold
    elif feature.name in NUMERIC_DRIFT_FEATURES:
      comparator.jensen_shannon_divergence.threshold = threshold
  return compared


def _comparison_entries(
  anomalies: anomalies_pb2.Anomalies, kind: str, against: str, split: str
):
  measured = {tuple(info.path.step): info for info in anomalies.drift_skew_info}
  for name, info in sorted(anomalies.anomaly_info.items()):
    for reason in info.reason:
      if reason.type not in _COMPARATOR_REASONS:
        continue
      found = reason.description
      expected = f'a distribution close to {against}'
      skew_info = measured.get(tuple(info.path.step))
      for measurement in (
        list(skew_info.drift_measurements) + list(skew_info.skew_measurements)
        if skew_info
        else []
      ):
        kind_name = anomalies_pb2.DriftSkewInfo.Measurement.Type.Name(
          measurement.type
        )
        expected = f'{kind_name} to {against} <= {measurement.threshold:g}'
        found = f'{measurement.value:.4g}: {reason.description}'
      yield _entry(
        kind,
        name,
        split,
        anomalies_pb2.AnomalyInfo.Type.Name(reason.type),
        expected,
        found,
      )


def _is_warning(entry: Dict[str, str], warn: Sequence[str]) -> bool:
  return (
    entry['check'] in warn or f'{entry["check"]}:{entry["feature"]}' in warn
  )


def validate(
  statistics: str,
  schema: str,
  curated_schema: Optional[str],
  baseline_dir: str,
  settings: Settings,
  schema_diff_dir: Optional[str] = None,
) -> Dict[str, Any]:
  """Runs the four checks; returns anomalies, warnings and the reference.

  Args:
    statistics: this run's ExampleStatistics directory (Split-train/...).
    schema: this run's inferred Schema directory (the last resort).
    curated_schema: the user's schema (file or Schema directory), or None.
    baseline_dir: the push destination; its newest version is the served one.
    settings: thresholds and the anomalies that are only warnings.
    schema_diff_dir: where to write each split's TFDV anomalies, if given.
  """
  stats = {split: load_statistics(statistics, split) for split in SPLITS}
  warnings = []
  served = serving_baseline_evaluator.served_version(baseline_dir)
  recorded = recorded_data(served) if served else None
  if served and not fileio.exists(os.path.join(recorded, SCHEMA_FILE)):
    warnings.append(
      _entry(
        'baseline',
        '',
        '',
        'NO_RECORDED_DATA',
        f'statistics and schema recorded beside the served model {served}',
        f'no recorded statistics in {recorded}: drift is not checked',
      )
    )
    recorded = None
  reference = {'served_version': served, 'statistics': None}
  if curated_schema:
    reference['schema'] = curated_schema
    reference_schema = load_schema(curated_schema)
  elif recorded:
    reference['schema'] = os.path.join(recorded, SCHEMA_FILE)
    reference_schema = load_schema(reference['schema'])
  else:
    reference['schema'] = schema
    reference_schema = load_schema(schema)
  strict = _without_comparators(reference_schema)
  found = []
  for split in SPLITS:
    anomalies = tfdv.validate_statistics(stats[split], strict)
    if schema_diff_dir:
      io_utils.write_bytes_file(
        os.path.join(schema_diff_dir, f'Split-{split}', 'SchemaDiff.pb'),
        anomalies.SerializeToString(),
      )
    found.extend(_schema_entries(anomalies, reference_schema, split))
    found.extend(_coverage_entries(stats[split], reference_schema, split))
  if recorded:
    reference['statistics'] = os.path.join(recorded, STATISTICS_DIR)
    previous = load_statistics(reference['statistics'], 'train')
    drift = tfdv.validate_statistics(
      stats['train'],
      _with_comparators(
        reference_schema,
        'drift',
        settings.label_drift_comparator,
        settings.label_drift_threshold,
        settings.feature_drift_threshold,
      ),
      previous_statistics=previous,
    )
    found.extend(
      _comparison_entries(
        drift, 'drift', "the served model's train split", 'train'
      )
    )
  skew = tfdv.validate_statistics(
    stats['train'],
    _with_comparators(
      reference_schema,
      'skew',
      settings.label_drift_comparator,
      settings.split_skew_threshold,
      settings.split_skew_threshold,
    ),
    serving_statistics=stats['eval'],
  )
  found.extend(_comparison_entries(skew, 'skew', 'the eval split', 'train'))
  return {
    'anomalies': [
      e for e in found if not _is_warning(e, settings.warn_anomalies)
    ],
    'warnings': warnings
    + [e for e in found if _is_warning(e, settings.warn_anomalies)],
    'reference': reference,
    'settings': json.loads(settings.to_json()),
  }


def initial_schema(
  schema: schema_pb2.Schema,
  statistics: Sequence[statistics_pb2.DatasetFeatureStatisticsList],
) -> schema_pb2.Schema:
  """A first curated schema from a run's inferred schema and statistics.

  The label domain and the presence of every feature are the inferred ones;
  integer features (image width, height and byte size, text length) get the
  observed [min, max] as their range; free-text features (text, path, id)
  lose the value list TFDV may have inferred from a small sample.
  """
  curated = schema_pb2.Schema()
  curated.CopyFrom(schema)
  ranges = {}
  for stats in statistics:
    for feature in stats.datasets[0].features:
      name = feature.path.step[0] if feature.path.step else feature.name
      if feature.HasField('num_stats') and feature.type == (
        statistics_pb2.FeatureNameStatistics.INT
      ):
        low, high = ranges.get(
          name, (feature.num_stats.min, feature.num_stats.max)
        )
        ranges[name] = (
          min(low, feature.num_stats.min),
          max(high, feature.num_stats.max),
        )
  for feature in curated.feature:
    if feature.name in ranges:
      feature.int_domain.min = int(ranges[feature.name][0])
      feature.int_domain.max = int(ranges[feature.name][1])
    if feature.name in ('text', 'path', 'id') and feature.HasField('domain'):
      curated.string_domain[:] = [
        d for d in curated.string_domain if d.name != feature.domain
      ]
      feature.ClearField('domain')
  return curated


INITIAL_SCHEMA_HEADER = """\
# The curated schema of tfx-transfer's data validation gate
# (docs/data-validation.md), written by `tfx-transfer schema init`. Edit it and
# keep it in version control; the `schema_file` setting points at it.
#   label domain:   string_domain { name: "label" ... } lists the classes
#   required:       presence { min_fraction: 1 } on a feature
#   ranges:         int_domain { min: .. max: .. } on image_width,
#                   image_height, image_byte_size, text_length
#   image formats:  string_domain { name: "image_format" ... }
"""


class DataValidatorSpec(component_spec.ComponentSpec):
  """Statistics and schemas in; the anomalies out."""

  PARAMETERS = {
    'baseline_dir': component_spec.ExecutionParameter(type=str),
    'validation_config': component_spec.ExecutionParameter(type=str),
  }
  INPUTS = {
    'statistics': component_spec.ChannelParameter(
      type=standard_artifacts.ExampleStatistics
    ),
    'schema': component_spec.ChannelParameter(type=standard_artifacts.Schema),
    'curated_schema': component_spec.ChannelParameter(
      type=standard_artifacts.Schema, optional=True
    ),
  }
  OUTPUTS = {
    'anomalies': component_spec.ChannelParameter(
      type=standard_artifacts.ExampleAnomalies
    ),
  }


class DataValidatorExecutor(base_executor.BaseExecutor):
  """Runs `validate`; raises DataAnomaliesError on an anomaly."""

  def Do(
    self,
    input_dict: Dict[str, List[types.Artifact]],
    output_dict: Dict[str, List[types.Artifact]],
    exec_properties: Dict[str, Any],
  ) -> None:
    anomalies = artifact_utils.get_single_instance(output_dict['anomalies'])
    anomalies.split_names = artifact_utils.encode_split_names(list(SPLITS))
    curated = input_dict.get('curated_schema')
    outcome = validate(
      artifact_utils.get_single_uri(input_dict['statistics']),
      artifact_utils.get_single_uri(input_dict['schema']),
      os.path.join(curated[0].uri, SCHEMA_FILE) if curated else None,
      exec_properties['baseline_dir'],
      Settings.from_json(exec_properties['validation_config']),
      schema_diff_dir=anomalies.uri,
    )
    with fileio.open(os.path.join(anomalies.uri, RESULT_FILE), 'w') as f:
      f.write(json.dumps(outcome, indent=2))
    for warning in outcome['warnings']:
      logging.warning('Data validation warning: %s', warning)
    if outcome['anomalies']:
      raise DataAnomaliesError(outcome)


class DataValidator(base_component.BaseComponent):
  """The data validation gate (see the module docstring).

  Args:
    statistics: StatisticsGen's output (train and eval splits).
    schema: SchemaGen's inferred schema.
    curated_schema: ImportSchemaGen's output, or None.
    baseline_dir: the Pusher's filesystem base directory.
    validation_config: `Settings.to_json()` (or a RuntimeParameter of it).
  """

  SPEC_CLASS = DataValidatorSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(DataValidatorExecutor)

  def __init__(
    self,
    statistics: types.BaseChannel,
    schema: types.BaseChannel,
    baseline_dir: str,
    validation_config,
    curated_schema: Optional[types.BaseChannel] = None,
  ):
    super().__init__(
      spec=DataValidatorSpec(
        statistics=statistics,
        schema=schema,
        curated_schema=curated_schema,
        baseline_dir=baseline_dir,
        validation_config=validation_config,
        anomalies=channel.Channel(type=standard_artifacts.ExampleAnomalies),
      )
    )
