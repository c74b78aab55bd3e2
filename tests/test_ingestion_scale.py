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
"""

import io
import pathlib

import apache_beam as beam
from PIL import Image
from tfx.types import standard_artifacts

from tfx.components.statistics_gen import executor as statistics_gen_executor

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


class _RecordingExecutor(ieg.ImageExampleGenExecutor):
  def _make_beam_pipeline(self):
    return _RecordingPipeline(argv=self._beam_pipeline_args)


class _RecordingStatisticsGen(statistics_gen_executor.Executor):
  def _make_beam_pipeline(self):
    return _RecordingPipeline(argv=self._beam_pipeline_args)


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
  for label in ('cat', 'dog'):
    for i in range(6):
      path = data / label / f'{i}.jpg'
      path.parent.mkdir(parents=True, exist_ok=True)
      buf = io.BytesIO()
      Image.new('RGB', (8, 8), (i * 40, 90, 7)).save(buf, 'JPEG')
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


def test_statistics_group_no_feature_values(tmp_path):
  data = tmp_path / 'data'
  _image_folder(data)
  examples = _ingest(tmp_path, data)
  config = settings_lib.PipelineConfig(
    data_root=str(data), output_dir=str(tmp_path / 'run')
  )
  statistics_gen = next(
    node
    for node in pipeline_lib.create_pipeline(config).components
    if node.id == 'StatisticsGen'
  )
  statistics = standard_artifacts.ExampleStatistics()
  statistics.uri = str(tmp_path / 'statistics')
  _RecordingPipeline.graphs.clear()
  _RecordingStatisticsGen().Do(
    {'examples': [examples]},
    {'statistics': [statistics]},
    dict(statistics_gen.exec_properties),
  )
  per_value = [
    t.unique_name
    for graph in _RecordingPipeline.graphs
    for t in graph.components.transforms.values()
    if t.unique_name.endswith('ToTopKTuples')
  ]
  assert _RecordingPipeline.graphs and per_value == []
  assert {p.name for p in pathlib.Path(statistics.uri).iterdir()} == {
    'Split-train',
    'Split-eval',
  }
