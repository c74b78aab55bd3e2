"""The Kubeflow build: compiled IR, runtime parameters, and the image.

Compiles the pipeline once through `python -m kubeflow compile` and checks the
IR: components, image, DAG, runtime parameters (down to how TFX's V2
entrypoint parses their values), that the code the IR names is in the image
kubeflow/Dockerfile builds (installed from the lock), `--volume` mounts in
every executor, output dirs the pods cannot share refused, and a golden
copy. After an intended change:

  UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_kubeflow_compile.py

then review the diff of tests/golden/kubeflow_pipeline.json.
"""

import difflib
import fnmatch
import importlib
import inspect
import json
import os
import posixpath
import re
from typing import Dict, List, Optional, Tuple

from kfp.pipeline_spec import pipeline_spec_pb2
import pytest
import tensorflow_model_analysis as tfma
import tomli
import yaml
from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_entrypoint_utils
from tfx.utils import json_utils
from tfx.utils import proto_utils

from google.protobuf import json_format
from kubeflow import cli
from kubeflow import runner
from kubeflow import schedule
from pipeline import pipeline as pipeline_lib
from pipeline import settings as settings_lib

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(PROJECT_ROOT, 'tests', 'golden', 'kubeflow_pipeline.json')
DOCKERFILE = os.path.join(PROJECT_ROOT, 'kubeflow', 'Dockerfile')
PROJECT_PACKAGES = ('components', 'modules', 'pipeline')

IMAGE = 'registry.example.com/tfx-transfer:golden'
OUTPUT_DIR = 'gs://example-bucket/tfx-transfer'
DATA_ROOT = 'gs://example-bucket/images'
SCHEMA_FILE = 'gs://example-bucket/schema.pbtxt'
BEAM_ARGS = [
  '--runner=DataflowRunner',
  '--project=example-project',
  '--region=europe-west1',
  '--temp_location=gs://example-bucket/tmp',
]
COMPILE_ARGS = [
  'compile',
  '--image',
  IMAGE,
  '--output-dir',
  OUTPUT_DIR,
  '--data-root',
  DATA_ROOT,
  '--schema-file',
  SCHEMA_FILE,
  '--phase1-epochs',
  '5',
  '--accuracy-threshold',
  '0.7',
  '--max-accuracy-drop',
  '0.01',
  '--trainer-cpu',
  '4',
  '--trainer-memory-gb',
  '16',
  '--trainer-gpus',
  '1',
] + [f'--beam-arg={arg}' for arg in BEAM_ARGS]

EXAMPLE_GEN = 'FileBasedExampleGen'
CONTAINER_TASKS = {
  EXAMPLE_GEN,
  'StatisticsGen',
  'SchemaGen',
  'ImportSchemaGen',
  'ExampleValidator',
  'Transform',
  'Trainer',
  'Evaluator',
  'Pusher',
}
BEAM_TASKS = {EXAMPLE_GEN, 'StatisticsGen', 'Transform', 'Evaluator'}


@pytest.fixture(scope='module')
def compiled(tmp_path_factory) -> Tuple[dict, str]:
  """The IR as `python -m kubeflow compile` writes it, and its text."""
  path = tmp_path_factory.mktemp('kubeflow') / 'pipeline.json'
  assert cli.main(COMPILE_ARGS + ['--output', str(path)]) == 0
  text = path.read_text()
  return json.loads(text), text


def _tasks(spec: dict) -> dict:
  return spec['root']['dag']['tasks']


def _executor(spec: dict, task: str) -> dict:
  label = spec['components'][_tasks(spec)[task]['componentRef']['name']][
    'executorLabel'
  ]
  return spec['deploymentSpec']['executors'][label]


def _arg(container: dict, flag: str) -> str:
  args = container['args']
  return args[args.index(flag) + 1]


def test_every_component_runs_in_the_image(compiled):
  spec, _ = compiled
  # The spec parses as what the KFP API server unmarshals an upload into.
  json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
  assert spec['pipelineInfo']['name'] == 'transfer-learning'
  # Only containers: open-source KFP cannot run TFX's Resolver nodes, so the
  # Evaluator takes the served model as its baseline.
  assert set(_tasks(spec)) == CONTAINER_TASKS
  for task in CONTAINER_TASKS:
    container = _executor(spec, task)['container']
    assert container['image'] == IMAGE, task
    # kubeflow/entrypoint.py: TFX's V2 entrypoint given back the input
    # types KFP's driver drops (tests/test_kubeflow_entrypoint.py).
    assert container['command'] == ['python', '-m', 'kubeflow.entrypoint']
  assert 'resolver' not in json.dumps(spec['deploymentSpec']).lower()


def test_dag_edges(compiled):
  spec, _ = compiled
  edges = {
    (source['taskOutputArtifact']['producerTask'], task)
    for task, body in _tasks(spec).items()
    for source in body.get('inputs', {}).get('artifacts', {}).values()
  }
  assert edges == {
    (EXAMPLE_GEN, 'StatisticsGen'),
    ('StatisticsGen', 'SchemaGen'),
    ('StatisticsGen', 'ExampleValidator'),
    ('SchemaGen', 'ExampleValidator'),
    ('ImportSchemaGen', 'ExampleValidator'),
    (EXAMPLE_GEN, 'Transform'),
    ('SchemaGen', 'Transform'),
    (EXAMPLE_GEN, 'Trainer'),
    ('Transform', 'Trainer'),
    ('SchemaGen', 'Trainer'),
    (EXAMPLE_GEN, 'Evaluator'),
    ('Trainer', 'Evaluator'),
    ('Trainer', 'Pusher'),
    ('Evaluator', 'Pusher'),
    ('StatisticsGen', 'Pusher'),
    ('SchemaGen', 'Pusher'),
  }
  # Transform waits for the data validation gate.
  assert 'ExampleValidator' in _tasks(spec)['Transform']['dependentTasks']
  # The no-regression baseline is the newest version the Pusher wrote.
  evaluator = _tasks(spec)['Evaluator']['inputs']
  assert 'baseline_model' not in evaluator['artifacts']
  assert (
    evaluator['parameters']['baseline_dir']['runtimeValue']['constant']
    == OUTPUT_DIR + '/serving'
  )
  # Pushes only a blessed model.
  # On the artifact the Pusher takes as `model_blessing`: a condition can read
  # only the task's own inputs.
  assert _tasks(spec)['Pusher']['triggerPolicy']['condition'] == (
    "(inputs.artifacts['model_blessing'].artifacts[0]"
    ".metadata['blessed'] == 1.0)"
  )


def test_runtime_parameters(compiled):
  spec, text = compiled
  parameters = spec['root']['inputDefinitions']['parameters']
  assert set(parameters) == {
    'data_root',
    'eval_config',
    'trainer_config',
    'schema_file',
    'data_validation',
  }
  for name, parameter in parameters.items():
    # 2.1's parameterType, not 2.0's `type` that KFP's v2 backend ignores.
    assert parameter['parameterType'] == 'STRING', name
    assert parameter['isOptional'] and parameter['description'], name
  assert parameters['data_root']['defaultValue'] == DATA_ROOT
  assert parameters['schema_file']['defaultValue'] == SCHEMA_FILE
  assert (
    json.loads(parameters['data_validation']['defaultValue'])[
      'label_drift_threshold'
    ]
    == 0.1
  )
  assert json.loads(parameters['trainer_config']['defaultValue']) == {
    'phase1_epochs': 5
  }
  gate = proto_utils.json_to_proto(
    parameters['eval_config']['defaultValue'], tfma.EvalConfig()
  )
  assert gate == pipeline_lib.eval_config(0.7, 0.01)

  wiring = {
    (task, name): source['componentInputParameter']
    for task, body in _tasks(spec).items()
    for name, source in body.get('inputs', {}).get('parameters', {}).items()
    if 'componentInputParameter' in source
  }
  assert wiring == {
    (EXAMPLE_GEN, 'input_base'): 'data_root',
    ('Evaluator', 'eval_config'): 'eval_config',
    ('Trainer', 'custom_config'): 'trainer_config',
    ('ImportSchemaGen', 'schema_file'): 'schema_file',
    ('ExampleValidator', 'validation_config'): 'data_validation',
  }
  # V2 substitutes whole values only: no parameter hidden in a JSON string.
  assert 'RuntimeParameter' not in text
  assert spec['schemaVersion'] == '2.1.0'


def _parse_as_entrypoint(spec: dict, task: str, values: Dict[str, str]) -> dict:
  """The exec properties TFX's V2 entrypoint builds from what KFP sends.

  KFP resolves constants and the run's parameter values into the executor
  input's `parameterValues` (google.protobuf.Value: integers as doubles);
  the container gets its inputs spec on the command line.

  Args:
    spec: The compiled IR.
    task: A container task.
    values: The run's runtime parameter values.
  """
  container = _executor(spec, task)['container']
  inputs_spec = json_format.Parse(
    _arg(container, '--json_serialized_inputs_spec_args'),
    pipeline_spec_pb2.ComponentInputsSpec(),
  )
  executor_input = pipeline_spec_pb2.ExecutorInput()
  for name, source in _tasks(spec)[task]['inputs']['parameters'].items():
    value = (
      values[source['componentInputParameter']]
      if 'componentInputParameter' in source
      else source['runtimeValue']['constant']
    )
    json_format.ParseDict(value, executor_input.inputs.parameter_values[name])
  return kubeflow_v2_entrypoint_utils.parse_execution_properties(
    executor_input.inputs.parameter_values,
    executor_input.inputs.parameters,
    inputs_spec,
  )


def test_runtime_parameter_values_reach_the_executors(compiled):
  spec, _ = compiled
  values = {
    'data_root': 'gs://other-bucket/images',
    'eval_config': json.dumps(
      proto_utils.proto_to_dict(pipeline_lib.eval_config(0.9, 0.0))
    ),
    'trainer_config': json.dumps({'phase1_epochs': 1, 'phase2_epochs': 0}),
  }
  example_gen = _parse_as_entrypoint(spec, EXAMPLE_GEN, values)
  assert example_gen['input_base'] == 'gs://other-bucket/images'
  # Integers come back as ints only thanks to the 2.1 inputs spec.
  assert isinstance(example_gen['output_data_format'], int)

  evaluator = _parse_as_entrypoint(spec, 'Evaluator', values)
  gate = proto_utils.json_to_proto(evaluator['eval_config'], tfma.EvalConfig())
  assert gate == pipeline_lib.eval_config(0.9, 0.0)
  assert evaluator['baseline_dir'] == OUTPUT_DIR + '/serving'

  trainer = _parse_as_entrypoint(spec, 'Trainer', values)
  settings = settings_lib.TrainerConfig.from_dict(
    json_utils.loads(trainer['custom_config'])
  )
  assert (settings.phase1_epochs, settings.phase2_epochs) == (1, 0)
  assert trainer['run_fn'] == pipeline_lib.RUN_FN


def test_cluster_settings(compiled):
  spec, text = compiled
  assert spec['defaultPipelineRoot'] == OUTPUT_DIR + '/pipeline_root'
  # Nothing of this machine, no user-module wheel under the pipeline root.
  assert PROJECT_ROOT not in text and '_wheels' not in text
  assert 'module_file' not in text
  for task in CONTAINER_TASKS:
    container = _executor(spec, task)['container']
    assert ('resources' in container) == (task == 'Trainer'), task
    if task in BEAM_TASKS:
      assert container['args'][-len(BEAM_ARGS) :] == BEAM_ARGS, task
  assert _executor(spec, 'Trainer')['container']['resources'] == {
    'accelerator': {'count': '1', 'type': 'nvidia.com/gpu'},
    'cpuLimit': 4.0,
    'cpuRequest': 4.0,
    'memoryLimit': 16.0,
    'memoryRequest': 16.0,
  }
  # Each run reads the data root and the served model again; the rest is
  # cached as usual.
  for task in CONTAINER_TASKS:
    cached = _tasks(spec)[task]['cachingOptions'].get('enableCache', False)
    assert cached == (task not in (EXAMPLE_GEN, 'Evaluator')), task
  pusher = _tasks(spec)['Pusher']['inputs']['parameters']['push_destination']
  assert OUTPUT_DIR + '/serving' in pusher['runtimeValue']['constant']


def test_volumes_are_mounted_in_every_step(tmp_path, capsys):
  """Data on a claim; artifacts in a bucket, as KFP requires."""
  path = tmp_path / 'pipeline.yaml'
  assert (
    cli.main(
      [
        'compile',
        '--image',
        IMAGE,
        '--output-dir',
        's3://bucket/transfer',
        '--volume',
        'tfx-pvc:/mnt/tfx',
        '--volume',
        'images:/data',
        '--data-root',
        '/data/fashion',
        '--output',
        str(path),
      ]
    )
    == 0
  )
  spec, platform = yaml.safe_load_all(path.read_text())
  assert spec['defaultPipelineRoot'] == 's3://bucket/transfer/pipeline_root'
  executors = platform['platforms']['kubernetes']['deploymentSpec']['executors']
  assert set(executors) == set(spec['deploymentSpec']['executors'])
  for mounts in executors.values():
    assert mounts == {
      'pvcMount': [
        {'constant': 'tfx-pvc', 'mountPath': '/mnt/tfx'},
        {'constant': 'images', 'mountPath': '/data'},
      ]
    }
  # What the upload sends: both documents.
  package = schedule.Package.load(str(path))
  assert package.platform_spec == platform
  package.write(str(tmp_path / 'upload.yaml'))
  assert list(yaml.safe_load_all((tmp_path / 'upload.yaml').read_text())) == [
    spec,
    platform,
  ]


@pytest.mark.parametrize(
  'args, message',
  [
    # KFP's launcher keeps artifacts only in object stores.
    (
      ['--output-dir', '/mnt/tfx/transfer', '--volume', 'tfx-pvc:/mnt/tfx'],
      'a mounted volume cannot hold the pipeline root',
    ),
    (['--output-dir', 'relative/dir'], 'must be gs://BUCKET/... or s3://'),
    (['--output-dir', 'minio://mlpipeline/v2'], 'TFX cannot write minio://'),
    (
      ['--output-dir', 'gs://b/a', '--data-root', 'images'],
      '--data-root must be a URI (gs://..., s3://...) or an absolute path',
    ),
    (
      ['--output-dir', 'gs://b/a', '--schema-file', 'schema.pbtxt'],
      '--schema-file must be a URI (gs://..., s3://...) or an absolute path',
    ),
    (
      [
        '--output-dir',
        'gs://b/a',
        '--volume',
        'tfx-pvc:/mnt/tfx',
        '--output',
        'pipeline.json',
      ],
      'give a .yaml output',
    ),
    (['--output-dir', 'gs://b/a', '--volume', 'tfx-pvc'], 'CLAIM:/'),
  ],
)
def test_paths_the_pods_cannot_share_are_refused(
  args, message, tmp_path, capsys
):
  assert (
    cli.main(
      ['compile', '--image', IMAGE, *args]
      + ([] if '--output' in args else ['--output', str(tmp_path / 'p.yaml')])
    )
    == 2
  )
  assert message in capsys.readouterr().err
  assert not os.listdir(tmp_path)


def _normalized(text: str) -> str:
  """The IR without what changes between machines and TFX releases.

  A PipelineSpec holds no timestamps, and user code is named by import path,
  so no wheel hashes; test_cluster_settings asserts that no path of this
  machine is left either.

  Args:
    text: The IR as JSON.
  """
  return re.sub(
    r'"sdkVersion": "tfx-[^"]*"', '"sdkVersion": "tfx-<version>"', text
  )


def test_golden(compiled):
  _, text = compiled
  actual = _normalized(text)
  if os.environ.get('UPDATE_GOLDEN'):
    os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
    with open(GOLDEN, 'w') as f:
      f.write(actual)
  with open(GOLDEN) as f:
    expected = f.read()
  if actual != expected:
    diff = ''.join(
      difflib.unified_diff(
        expected.splitlines(True),
        actual.splitlines(True),
        fromfile=os.path.relpath(GOLDEN, PROJECT_ROOT),
        tofile='compiled',
      )
    )
    pytest.fail(
      'The compiled IR differs from the golden file. If the change is '
      'intended, run with UPDATE_GOLDEN=1 and review the diff.\n' + diff,
      pytrace=False,
    )


def _dockerfile() -> List[Tuple[str, str]]:
  """(INSTRUCTION, arguments) of kubeflow/Dockerfile, continuations joined."""
  instructions, current = [], ''
  with open(DOCKERFILE) as f:
    for line in f:
      line = line.strip()
      if not line or line.startswith('#'):
        continue
      if line.endswith('\\'):
        current += line[:-1] + ' '
        continue
      instruction, arguments = (current + line).split(None, 1)
      instructions.append((instruction.upper(), arguments))
      current = ''
  return instructions


def _stages() -> List[List[Tuple[str, str]]]:
  stages = []
  for instruction, arguments in _dockerfile():
    if instruction == 'FROM':
      stages.append([])
    stages[-1].append((instruction, arguments))
  return stages


def _image_files() -> Dict[str, str]:
  """Image path -> build-context path, for what the final stage COPYs.

  A key ending in '/' is a directory copied with its contents.
  """
  stages, workdir = {}, '/'
  for stage in _stages():
    files, workdir = {}, '/'
    for instruction, arguments in stage:
      words = arguments.split()
      if instruction == 'FROM' and 'AS' in (w.upper() for w in words):
        stages[words[-1]] = files
      elif instruction == 'WORKDIR':
        workdir = posixpath.join(workdir, arguments)
      elif instruction == 'COPY':
        flags = dict(w[2:].split('=', 1) for w in words if w.startswith('--'))
        *sources, dest = [w for w in words if not w.startswith('--')]
        dest = posixpath.normpath(posixpath.join(workdir, dest))
        for source in sources:
          if 'from' in flags:
            prefix = source.rstrip('/') + '/'
            files.update(
              {
                posixpath.join(dest, path[len(prefix) :]): context
                for path, context in stages[flags['from']].items()
                if path.startswith(prefix)
              }
            )
          elif source.endswith('/'):
            files[dest + '/'] = source
          else:
            files[posixpath.join(dest, posixpath.basename(source))] = source
  return files


def _in_image(path: str) -> Optional[str]:
  """The project file that the image holds at `path`, if any."""
  for image_path, context in _image_files().items():
    if path == image_path:
      return context
    if image_path.endswith('/') and path.startswith(image_path):
      return posixpath.join(context, path[len(image_path) :])
  return None


def test_dockerfile_installs_from_the_lock():
  stages = _stages()
  for stage in stages:
    base = stage[0][1].split()
    assert [w for w in base if w.startswith('python:')] == [
      'python:3.10-slim-bookworm'
    ], stage[0]
  instructions = [step for stage in stages for step in stage]
  # The uv that `make venv` uses, so that it reads the lock the same way.
  with open(os.path.join(PROJECT_ROOT, 'Makefile')) as f:
    uv_version = re.search(r'^UV_VERSION\s*:?=\s*(\S+)', f.read(), re.M)[1]
  assert ('ARG', f'UV_VERSION={uv_version}') in instructions
  commands = [
    command.strip()
    for op, args in instructions
    if op == 'RUN'
    for command in re.split(r'&&|;', args)
  ]
  # Python packages come only from `uv sync --frozen` (the lock, unchanged):
  # no pip or `uv pip` install but the pinned uv itself.
  assert [c for c in commands if 'pip' in c] == [
    'python -m pip install --no-cache-dir "uv==${UV_VERSION}"'
  ]
  syncs = [c for c in commands if 'uv sync' in c]
  assert syncs and all(c.startswith('uv sync --frozen') for c in syncs)
  assert any('--no-install-project' not in c for c in syncs)
  # Optional extras, none by default; `gpu` adds the locked CUDA libraries.
  assert ('ARG', 'EXTRAS=') in instructions
  assert all(c.endswith('${EXTRAS:+--extra "$EXTRAS"}') for c in syncs)
  with open(os.path.join(PROJECT_ROOT, 'pyproject.toml'), 'rb') as f:
    extras = tomli.load(f)['project']['optional-dependencies']
  assert extras['gpu'] == ['tensorflow[and-cuda]==2.16.2']
  with open(os.path.join(PROJECT_ROOT, 'uv.lock'), 'rb') as f:
    locked = {p['name'] for p in tomli.load(f)['package']}
  assert {'nvidia-cudnn-cu12', 'nvidia-cublas-cu12'} <= locked
  # The lock is in the build context before the first sync.
  build = [(op, args) for op, args in stages[0]]
  first_sync = next(
    i for i, (op, args) in enumerate(build) if op == 'RUN' and 'uv sync' in args
  )
  copied = ' '.join(args for op, args in build[:first_sync] if op == 'COPY')
  assert 'uv.lock' in copied and 'pyproject.toml' in copied
  assert _in_image(runner.IMAGE_PROJECT_ROOT + '/uv.lock') == 'uv.lock'


def test_dockerfile_runtime_settings():
  final = _stages()[-1]
  env = ' '.join(args for op, args in final if op == 'ENV')
  # `python` in the components' command is the locked environment's.
  assert re.search(r'PATH=/opt/venv/bin:', env)
  assert 'TFX_TRANSFER_CACHE=' in env and 'TF_USE_LEGACY_KERAS=1' in env
  assert any(
    op == 'RUN' and 'chmod 1777 "$TFX_TRANSFER_CACHE"' in args
    for op, args in final
  )
  demo = _in_image(runner.IMAGE_DEMO_DATA + '/bag/bag_00018.png')
  assert demo and os.path.exists(os.path.join(PROJECT_ROOT, demo))


def test_code_in_the_ir_is_in_the_image(compiled):
  spec, _ = compiled
  references = {
    _arg(_executor(spec, task)['container'], '--executor_class_path')
    for task in CONTAINER_TASKS
  }
  for task in ('Transform', 'Trainer'):
    for name, source in _tasks(spec)[task]['inputs']['parameters'].items():
      if name.endswith('_fn'):
        references.add(source['runtimeValue']['constant'])
  with open(os.path.join(PROJECT_ROOT, 'pyproject.toml'), 'rb') as f:
    installed = tomli.load(f)['tool']['setuptools']['packages']['find'][
      'include'
    ]
  in_project = set()
  for reference in sorted(references):
    module, name = reference.rsplit('.', 1)
    code = getattr(importlib.import_module(module), name)  # Resolves here.
    package = module.split('.')[0]
    if package not in PROJECT_PACKAGES:
      assert package == 'tfx', reference  # A locked dependency.
      continue
    in_project.add(reference)
    source = os.path.relpath(inspect.getsourcefile(code), PROJECT_ROOT)
    image_path = posixpath.join(
      runner.IMAGE_PROJECT_ROOT, *source.split(os.sep)
    )
    assert _in_image(image_path) == source.replace(os.sep, '/'), reference
    # The project is installed (editable) from /pipeline: importable anywhere.
    assert any(fnmatch.fnmatch(package, p) for p in installed), reference
  # The command: python -m kubeflow.entrypoint.
  assert _in_image(runner.IMAGE_PROJECT_ROOT + '/kubeflow/entrypoint.py') == (
    'kubeflow/entrypoint.py'
  )
  assert in_project == {
    'components.image_example_gen.ImageExampleGenExecutor',
    'components.atomic_pusher.AtomicPusherExecutor',
    'components.data_validator.DataValidatorExecutor',
    'components.serving_baseline_evaluator.ServingBaselineEvaluatorExecutor',
    pipeline_lib.PREPROCESSING_FN,
    pipeline_lib.RUN_FN,
  }


def test_tuning_adds_a_tuner_whose_best_values_feed_the_trainer(tmp_path):
  config = settings_lib.PipelineConfig(
    data_root=DATA_ROOT,
    output_dir=OUTPUT_DIR,
    tuning={'trials': 3},
    trainer={'phase1_epochs': 50},
  )
  spec = runner.compile_pipeline(config, IMAGE, str(tmp_path / 'ir.json'))
  json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
  tasks = _tasks(spec)
  # No schema file here, so no ImportSchemaGen.
  assert set(tasks) == CONTAINER_TASKS - {'ImportSchemaGen'} | {'Tuner'}
  tuner = _executor(spec, 'Tuner')['container']
  assert tuner['image'] == IMAGE
  assert tasks['Trainer']['inputs']['artifacts']['hyperparameters'] == {
    'taskOutputArtifact': {
      'producerTask': 'Tuner',
      'outputArtifactKey': 'best_hyperparameters',
    }
  }
  parameters = tasks['Tuner']['inputs']['parameters']
  assert parameters['tuner_fn']['runtimeValue']['constant'] == (
    pipeline_lib.TUNER_FN
  )
  custom_config = parameters['custom_config']['runtimeValue']['constant']
  assert json.loads(custom_config) == {
    'trainer': {'phase1_epochs': 50},
    'tuning': {'trials': 3},
  }
