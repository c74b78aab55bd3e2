"""The compiled Kubeflow pipeline, run as KFP 2.x's backend runs it.

tests/kfp_local.py is KFP's driver and launcher derived from their source
(see its docstring): each task's container command (the image's entrypoint,
the project's executors, `modules.*` by import path) in a process of its
own, input artifacts as the driver hands them on (`instanceSchema: ""`,
MLMD ids as names, metadata through MLMD's value types), parameters
type-checked, KFP's cache key. Both modalities push a model that is then
called on raw bytes or raw strings.

The image pipeline runs as on a default KFP install: its data on a
PersistentVolumeClaim (the PlatformSpec's `pvcMount`), its pipeline root and
output_dir on `s3://` served by a real moto_server on loopback (the tasks
get the server's environment, as a Secret gives pods theirs), so each task
registers tensorflow-io's S3 filesystem, gets Beam's S3 flags and must exit
0 despite tensorflow/io#2039. This process reads S3 through boto3 only
(tests/s3_server.py): the pushed model is copied down, then called on raw
image bytes. The text pipeline's root is a folder on this disk, where
`allow_local_root` skips KFP's object-store check.
"""

import json
import os
import re

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


def _pushed_versions(server, serving: str):
  """`atomic_pusher.pushed_versions` of an s3:// folder, through boto3."""
  keys = server.keys(serving)
  return sorted(
    {k.split('/')[0] for k in keys if re.fullmatch(r'\d+/saved_model.pb', k)},
    key=int,
  )


def _download(server, uri: str, local_dir: str) -> str:
  """The objects under the s3:// `uri`, copied into `local_dir`."""
  bucket, _, prefix = uri[len('s3://') :].partition('/')
  for key in server.keys(uri):
    path = os.path.join(local_dir, key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    server.client.download_file(bucket, f'{prefix.rstrip("/")}/{key}', path)
  return local_dir


@pytest.fixture(scope='module')
def s3_store(s3_server):
  """A bucket on the moto server; the tasks' environment points at it."""
  with pytest.MonkeyPatch.context() as patch:
    for name, value in s3_server.env.items():
      patch.setenv(name, value)
    yield s3_server.create_bucket()


@pytest.fixture(scope='module')
def image_run(tmp_path_factory, s3_server, s3_store):
  """The image pipeline on KFP: data on a claim mounted at /…/mnt/images,
  pipeline root and output_dir on s3://."""
  work = tmp_path_factory.mktemp('kfp_image')
  mount = str(work / 'mnt' / 'images')
  config = settings_lib.PipelineConfig(
    data_root=mount, output_dir=f'{s3_store}/store'
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
  )
  return config, spec, platform, kfp, first


def test_image_pipeline_runs_on_kfp_and_pushes_a_model(
  image_run, s3_server, tmp_path
):
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
  serving = f'{config.output_dir}/serving'
  assert serving.startswith('s3://')
  (version,) = _pushed_versions(s3_server, serving)
  examples_uri = first['FileBasedExampleGen'].outputs['examples']['uri']
  assert examples_uri.startswith(config.pipeline_root)
  eval_examples = helpers.artifact_examples(
    _download(s3_server, examples_uri, str(tmp_path / 'examples')), 'eval'
  )
  model = _download(s3_server, f'{serving}/{version}', str(tmp_path / 'model'))
  accuracy = helpers.accuracy(model, DEMO_DATA, eval_examples)
  print(
    f'KFP run: pushed {version}, accuracy on raw bytes {accuracy:.3f} '
    f'({len(eval_examples)} images)'
  )
  assert accuracy >= 0.85


def test_a_regressed_model_is_not_pushed_and_nothing_is_cached(
  image_run, s3_server
):
  """A scheduled run whose training went wrong, on the same data.

  ExampleGen (cache off) makes a new Examples artifact, so every task after
  it has a new cache key (its input's MLMD id): KFP's cache serves nothing.
  """
  config, spec, platform, kfp, first = image_run
  serving = f'{config.output_dir}/serving'
  pushed = _pushed_versions(s3_server, serving)
  second = kfp.run(
    spec,
    pipeline_root=config.pipeline_root,
    parameters={
      'trainer_config': json.dumps({'phase1_epochs': 0, 'phase2_epochs': 0}),
      'eval_config': _gate(0.0),
    },
    platform_spec=platform,
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
  assert _pushed_versions(s3_server, serving) == pushed


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
