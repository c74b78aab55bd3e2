"""The compiled Kubeflow pipeline, executed task by task as KFP would.

`python -m kubeflow compile` output is run by tests/kfp_local.py: every task's
container command (TFX's V2 entrypoint with the project's executors and
`modules.*` user code by import path) in its own process, artifacts passed
as KFP passes them, runtime parameters overriding the compiled defaults. The
pipeline root and serving dir sit on a "volume" (`--volume`) that is this
machine's disk. The Pusher's trigger condition is evaluated on its own
inputs. The pushed model classifies raw held-out bytes; then an untrained
model from a scheduled run is stopped by the served model (the baseline)
alone, and the Pusher is skipped.
"""

import json
import os

import pytest
import yaml

import helpers
import kfp_local
from components import atomic_pusher
from kubeflow import cli
from pipeline import pipeline as pipeline_lib
from tfx.utils import proto_utils

DEMO_DATA = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'data', 'fashion_demo')


def _gate(accuracy_threshold, max_accuracy_drop=0.0) -> str:
  return json.dumps(proto_utils.proto_to_dict(
      pipeline_lib.eval_config(accuracy_threshold, max_accuracy_drop)))


@pytest.fixture(scope='module')
def compiled(tmp_path_factory):
  volume = str(tmp_path_factory.mktemp('volume'))
  output = os.path.join(volume, 'pipeline.yaml')
  assert cli.main([
      'compile', '--image', 'unused:latest', '--volume', f'pvc:{volume}',
      '--output-dir', os.path.join(volume, 'out'), '--data-root', DEMO_DATA,
      '--output', output]) == 0
  with open(output) as f:
    spec, _ = yaml.safe_load_all(f)
  return spec, volume


def test_compiled_pipeline_runs_task_by_task(compiled):
  spec, volume = compiled
  serving = os.path.join(volume, 'out', 'serving')
  first = kfp_local.run(
      spec, os.path.join(volume, 'run1'),
      parameters={'trainer_config': json.dumps(helpers.E2E_TRAINER)})
  assert {name: r.state for name, r in first.items()} == {
      name: 'succeeded' for name in (
          'FileBasedExampleGen', 'StatisticsGen', 'SchemaGen', 'Transform',
          'Trainer', 'Evaluator', 'Pusher')}
  blessing, = first['Evaluator'].outputs['blessing']
  assert blessing['metadata']['blessed'] == 1
  assert 'baseline_model' not in blessing['metadata']  # Nothing served.
  version, = atomic_pusher.pushed_versions(serving)
  pushed = os.path.join(serving, version)
  examples, = first['FileBasedExampleGen'].outputs['examples']
  eval_examples = helpers.artifact_examples(examples['uri'], 'eval')
  accuracy = helpers.accuracy(pushed, DEMO_DATA, eval_examples)
  print(f'KFP-style run: pushed {pushed}, accuracy on raw bytes '
        f'{accuracy:.3f} ({len(eval_examples)} images)')
  assert accuracy >= 0.85

  # A scheduled run whose training went wrong: untrained, above an absolute
  # bound of 0, so only the served model (the baseline) can stop it.
  second = kfp_local.run(
      spec, os.path.join(volume, 'run2'),
      parameters={
          'trainer_config': json.dumps({'phase1_epochs': 0,
                                        'phase2_epochs': 0}),
          'eval_config': _gate(0.0),
      },
      only=('Trainer', 'Evaluator', 'Pusher'), upstream=first)
  blessing, = second['Evaluator'].outputs['blessing']
  assert blessing['metadata']['blessed'] == 0
  assert blessing['metadata']['baseline_model'] == pushed
  assert second['Pusher'].state == 'skipped'
  assert atomic_pusher.pushed_versions(serving) == [version]
