"""Data components that scale: no grouping of the data in their Beam graphs.

A GroupByKey on the Examples (TFX's `WriteSplit` Reshuffle) is held whole in
memory by the local DirectRunner, so the ExampleGen's memory would grow with
the data (benchmarks/RESULTS.md, (d) and (f)). The test runs the real image
ExampleGen executor and walks the Beam graph it ran, from the validated
Examples to the files: it may group only counts (combiners) and file names
(the sink's finalization), never the Examples.

StatisticsGen's exact top-k (TFDV's top_k_uniques_stats_generator.py,
`TopKUniquesStatsGenerator.expand`: `ToTopKTuples` then a CombinePerKey keyed
by (slice, feature, value)) holds one key per distinct value: every image's
bytes, every text. The pipeline's StatisticsGen must use the sketch instead.
Transform's own pre- and post-transform statistics (TFDV again, on the raw
bytes and on the decoded pixels) grew its peak from 1.1 to 1.8 GiB at 10,000
images: the pipeline's Transform computes none (StatisticsGen has them).
"""

import io
import pathlib

import apache_beam as beam
from PIL import Image
from tfx.types import standard_artifacts

from tfx.components.schema_gen import executor as schema_gen_executor
from tfx.components.statistics_gen import executor as statistics_gen_executor
from tfx.components.transform import executor as transform_executor

from components import image_example_gen as ieg
from pipeline import pipeline as pipeline_lib
from pipeline import settings as settings_lib

_GROUP_BY_KEY = 'beam:transform:group_by_key:v1'
_COMBINES = (
  'beam:transform:combine_per_key:v1',
  'beam:transform:combine_globally:v1',
)


class _RecordingPipeline(beam.Pipeline):
  """A Beam pipeline that keeps its graph (runner API proto) when run."""

  graphs = []

  def run(self, test_runner_api='AUTO'):
    _RecordingPipeline.graphs.append(self.to_runner_api())
    return super().run(test_runner_api)


class _Recording:
  """Mixed into a TFX Beam executor: its pipelines keep their graphs."""

  def _make_beam_pipeline(self):
    return _RecordingPipeline(argv=self._beam_pipeline_args)


class _RecordingExecutor(_Recording, ieg.ImageExampleGenExecutor):
  pass


class _RecordingStatisticsGen(_Recording, statistics_gen_executor.Executor):
  pass


class _RecordingTransform(_Recording, transform_executor.Executor):
  pass


def _groups_of_examples(graph) -> list:
  """GroupByKeys that the validated Examples reach, except in a combiner
  or after a sink's WriteBundles (which emits file names)."""
  transforms = graph.components.transforms
  parents = {
    child: name for name, t in transforms.items() for child in t.subtransforms
  }

  def stops(name):
    if transforms[name].unique_name.endswith('WriteBundles'):
      return True
    while name in parents:
      name = parents[name]
      if transforms[name].spec.urn in _COMBINES:
        return True
    return False

  consumers = {}
  for name, t in transforms.items():
    if not t.subtransforms:
      for pcoll in t.inputs.values():
        consumers.setdefault(pcoll, []).append(name)
  validate = next(
    name
    for name, t in transforms.items()
    if t.unique_name.endswith('/Validate/ParDo(_ValidateImage)')
  )
  pending, seen, groups = [transforms[validate].outputs['None']], set(), []
  while pending:
    for name in consumers.get(pending.pop(), []):
      if name in seen or stops(name):
        continue
      seen.add(name)
      if transforms[name].spec.urn == _GROUP_BY_KEY:
        groups.append(transforms[name].unique_name)
      pending.extend(transforms[name].outputs.values())
  return groups


def _image_folder(data: pathlib.Path) -> None:
  for green, label in ((90, 'cat'), (160, 'dog')):
    for i in range(16):
      path = data / label / f'{i}.jpg'
      path.parent.mkdir(parents=True, exist_ok=True)
      buf = io.BytesIO()
      Image.new('RGB', (8, 8), (i * 16, green, 7)).save(buf, 'JPEG')
      path.write_bytes(buf.getvalue())


def _ingest(tmp_path, data) -> standard_artifacts.Examples:
  gen = ieg.image_example_gen(str(data))
  examples = standard_artifacts.Examples()
  examples.uri = str(tmp_path / 'out')
  examples.split_names = '["train", "eval"]'
  _RecordingPipeline.graphs.clear()
  _RecordingExecutor().Do(
    {}, {'examples': [examples]}, dict(gen.exec_properties)
  )
  return examples


def test_examples_are_written_without_a_shuffle(tmp_path):
  data = tmp_path / 'data'
  _image_folder(data)
  examples = _ingest(tmp_path, data)
  assert len(_RecordingPipeline.graphs) == 1
  assert _groups_of_examples(_RecordingPipeline.graphs[0]) == []
  written = sorted(pathlib.Path(examples.uri).glob('Split-*/*.gz'))
  assert {p.parent.name for p in written} == {'Split-train', 'Split-eval'}


def _pipeline_node(data, tmp_path, node_id):
  config = settings_lib.PipelineConfig(
    data_root=str(data), output_dir=str(tmp_path / 'run')
  )
  return next(
    node
    for node in pipeline_lib.create_pipeline(config).components
    if node.id == node_id
  )


def _statistics(tmp_path, data, examples):
  statistics = standard_artifacts.ExampleStatistics()
  statistics.uri = str(tmp_path / 'statistics')
  statistics.split_names = examples.split_names
  _RecordingPipeline.graphs.clear()
  _RecordingStatisticsGen().Do(
    {'examples': [examples]},
    {'statistics': [statistics]},
    dict(_pipeline_node(data, tmp_path, 'StatisticsGen').exec_properties),
  )
  return statistics


def _names(graphs, suffix: str) -> list:
  return [
    t.unique_name
    for graph in graphs
    for t in graph.components.transforms.values()
    if t.unique_name.endswith(suffix)
  ]


def test_statistics_group_no_feature_values(tmp_path):
  data = tmp_path / 'data'
  _image_folder(data)
  statistics = _statistics(tmp_path, data, _ingest(tmp_path, data))
  assert _RecordingPipeline.graphs
  assert _names(_RecordingPipeline.graphs, 'ToTopKTuples') == []
  assert {p.name for p in pathlib.Path(statistics.uri).iterdir()} == {
    'Split-train',
    'Split-eval',
  }


def test_transform_computes_no_statistics(tmp_path):
  data = tmp_path / 'data'
  _image_folder(data)
  examples = _ingest(tmp_path, data)
  schema = standard_artifacts.Schema()
  schema.uri = str(tmp_path / 'schema')
  schema_gen_executor.Executor().Do(
    {'statistics': [_statistics(tmp_path, data, examples)]},
    {'schema': [schema]},
    dict(_pipeline_node(data, tmp_path, 'SchemaGen').exec_properties),
  )
  transform = _pipeline_node(data, tmp_path, 'Transform')
  outputs = {}
  for key, channel in transform.outputs.items():
    artifact = channel.type()
    artifact.uri = str(tmp_path / 'transform' / key)
    outputs[key] = [artifact]
  _RecordingPipeline.graphs.clear()
  _RecordingTransform().Do(
    {'examples': [examples], 'schema': [schema]},
    outputs,
    dict(transform.exec_properties),
  )
  assert _RecordingPipeline.graphs
  assert _names(_RecordingPipeline.graphs, 'GenerateStatistics') == []
  graph = pathlib.Path(outputs['transform_graph'][0].uri)
  assert (graph / 'transform_fn' / 'saved_model.pb').exists()
