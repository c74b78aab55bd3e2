"""Ingestion that scales: no shuffle of the data in the ExampleGens' Beam graph.

A GroupByKey on the Examples (TFX's `WriteSplit` Reshuffle) is held whole in
memory by the local DirectRunner, so the ExampleGen's memory would grow with
the data (benchmarks/RESULTS.md, (d) and (f)). The test runs the real image
ExampleGen executor and walks the Beam graph it ran, from the validated
Examples to the files: it may group only counts (combiners) and file names
(the sink's finalization), never the Examples.
"""

import io
import pathlib

import apache_beam as beam
from PIL import Image
from tfx.types import standard_artifacts

from components import image_example_gen as ieg

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


def test_examples_are_written_without_a_shuffle(tmp_path):
  data = tmp_path / 'data'
  for label in ('cat', 'dog'):
    for i in range(6):
      path = data / label / f'{i}.jpg'
      path.parent.mkdir(parents=True, exist_ok=True)
      buf = io.BytesIO()
      Image.new('RGB', (8, 8), (i * 40, 90, 7)).save(buf, 'JPEG')
      path.write_bytes(buf.getvalue())
  gen = ieg.image_example_gen(str(data))
  examples = standard_artifacts.Examples()
  examples.uri = str(tmp_path / 'out')
  _RecordingPipeline.graphs.clear()
  _RecordingExecutor().Do(
    {}, {'examples': [examples]}, dict(gen.exec_properties)
  )
  assert len(_RecordingPipeline.graphs) == 1
  assert _groups_of_examples(_RecordingPipeline.graphs[0]) == []
  written = sorted(pathlib.Path(examples.uri).glob('Split-*/*.gz'))
  assert {p.parent.name for p in written} == {'Split-train', 'Split-eval'}
