"""The compiled Kubeflow pipeline, run as KFP 2.x's backend runs it.

tests/kfp_local.py is KFP's driver and launcher derived from their source
(see its docstring): each task's container command (the image's entrypoint,
the project's executors, `modules.*` by import path) in a process of its
own, input artifacts as the driver hands them on (`instanceSchema: ""`,
MLMD ids as names, metadata through MLMD's value types), parameters
type-checked, KFP's cache key. The image pipeline takes its data from a
PersistentVolumeClaim (the PlatformSpec's `pvcMount`); both modalities push
a model that is then called on raw bytes or raw strings.

The pipeline root is a folder on this disk, the one rule of KFP's not
applied here (KFP wants gs://, s3:// or minio://; `allow_local_root`).
"""

import json
import os

import pytest
import yaml

import helpers
import kfp_local
from components import atomic_pusher
from kubeflow import runner
from pipeline import settings as settings_lib
from pipeline import pipeline as pipeline_lib
from tfx.utils import proto_utils

DATA = os.path.join(settings_lib.PROJECT_ROOT, 'data')
DEMO_DATA = os.path.join(DATA, 'fashion_demo')
IMAGE = 'registry.example.com/tfx-transfer:test'
TASKS = (
  'FileBasedExampleGen',
  'StatisticsGen',
  'SchemaGen',
  'ExampleValidator',
  'Transform',
  'Trainer',
  'Evaluator',
  'Pusher',
)
TEXT_TRAINER = {'phase1_epochs': 10, 'phase2_epochs': 0}


def _gate(accuracy_threshold, max_accuracy_drop=0.0) -> str:
  return json.dumps(
    proto_utils.proto_to_dict(
      pipeline_lib.eval_config(accuracy_threshold, max_accuracy_drop)
    )
  )


def _compile(config: settings_lib.PipelineConfig, path: str, **kwargs):
  runner.compile_pipeline(config, IMAGE, path, **kwargs)
  with open(path) as f:
    documents = list(yaml.safe_load_all(f))
  return documents[0], (documents[1] if len(documents) > 1 else None)


def _states(results):
  return {name: result.state for name, result in results.items()}


@pytest.fixture(scope='module')
def image_run(tmp_path_factory):
  """The image pipeline on KFP, data on a claim mounted at /…/mnt/images."""
  work = tmp_path_factory.mktemp('kfp_image')
  mount = str(work / 'mnt' / 'images')
  config = settings_lib.PipelineConfig(
    data_root=mount, output_dir=str(work / 'store')
  )
  spec, platform = _compile(
    config,
    str(work / 'pipeline.yaml'),
    volumes=[runner.VolumeMount('images', mount)],
  )
  kfp = kfp_local.Kfp(str(work / 'kfp'), claims={'images': DEMO_DATA})
  first = kfp.run(
    spec,
    pipeline_root=config.pipeline_root,
    parameters={'trainer_config': json.dumps(helpers.E2E_TRAINER)},
    platform_spec=platform,
    allow_local_root=True,
  )
  return config, spec, platform, kfp, first


def test_image_pipeline_runs_on_kfp_and_pushes_a_model(image_run):
  config, _, _, _, first = image_run
  assert _states(first) == {name: 'succeeded' for name in TASKS}
  # What the driver handed StatisticsGen: no type, an MLMD id, display_name.
  (examples,) = first['StatisticsGen'].executor_input['inputs']['artifacts'][
    'examples'
  ]['artifacts']
  assert examples['type'] == {'instanceSchema': ''}
  assert examples['name'].isdigit()
  assert examples['metadata']['display_name'] == 'examples'
  blessing = first['Evaluator'].outputs['blessing']
  assert blessing['metadata']['blessed'] == 1.0
  assert 'baseline_model' not in blessing['metadata']  # Nothing served.
  serving = os.path.join(config.output_dir, 'serving')
  (version,) = atomic_pusher.pushed_versions(serving)
  eval_examples = helpers.artifact_examples(
    first['FileBasedExampleGen'].outputs['examples']['uri'], 'eval'
  )
  accuracy = helpers.accuracy(
    os.path.join(serving, version), DEMO_DATA, eval_examples
  )
  print(
    f'KFP run: pushed {version}, accuracy on raw bytes {accuracy:.3f} '
    f'({len(eval_examples)} images)'
  )
  assert accuracy >= 0.85


def test_a_regressed_model_is_not_pushed_and_nothing_is_cached(image_run):
  """A scheduled run whose training went wrong, on the same data.

  ExampleGen (cache off) makes a new Examples artifact, so every task after
  it has a new cache key (its input's MLMD id): KFP's cache serves nothing.
  """
  config, spec, platform, kfp, first = image_run
  serving = os.path.join(config.output_dir, 'serving')
  pushed = atomic_pusher.pushed_versions(serving)
  second = kfp.run(
    spec,
    pipeline_root=config.pipeline_root,
    parameters={
      'trainer_config': json.dumps({'phase1_epochs': 0, 'phase2_epochs': 0}),
      'eval_config': _gate(0.0),
    },
    platform_spec=platform,
    allow_local_root=True,
  )
  assert _states(second) == {
    **{name: 'succeeded' for name in TASKS},
    'Pusher': 'skipped',
  }
  for name in ('StatisticsGen', 'SchemaGen', 'Transform'):
    assert second[name].fingerprint != first[name].fingerprint, name
  blessing = second['Evaluator'].outputs['blessing']
  assert blessing['metadata']['blessed'] == 0.0
  assert blessing['metadata']['baseline_model'] == os.path.join(
    serving, pushed[0]
  )
  assert atomic_pusher.pushed_versions(serving) == pushed


def test_text_pipeline_runs_on_kfp_and_pushes_a_model(tmp_path):
  config = settings_lib.PipelineConfig(
    modality='text',
    data_root=os.path.join(DATA, 'movie_sentiment'),
    manifest='reviews.csv',
    id_column='id',
    trainer=TEXT_TRAINER,
    output_dir=str(tmp_path / 'store'),
  )
  spec, _ = _compile(config, str(tmp_path / 'pipeline.json'))
  results = kfp_local.Kfp(str(tmp_path / 'kfp')).run(
    spec, pipeline_root=config.pipeline_root, allow_local_root=True
  )
  assert _states(results) == {name: 'succeeded' for name in TASKS}
  serving = os.path.join(config.output_dir, 'serving')
  (version,) = atomic_pusher.pushed_versions(serving)
  held_out = helpers.artifact_rows(
    results['FileBasedExampleGen'].outputs['examples']['uri'], 'eval'
  )
  outputs = helpers.serve(
    os.path.join(serving, version), text=[r['text'] for r in held_out]
  )
  predicted = [label.decode() for label in outputs['label'].numpy()]
  accuracy = sum(p == r['label'] for p, r in zip(predicted, held_out)) / len(
    held_out
  )
  chance = 1 / len({r['label'] for r in held_out})
  print(
    f'KFP text run: pushed {version}, accuracy on {len(held_out)} raw '
    f'held-out strings {accuracy:.3f}, chance {chance:.3f}'
  )
  assert accuracy >= chance + 0.15
