"""kubeflow/entrypoint.py: TFX's V2 entrypoint given what KFP's driver sends.

The input artifact is the one the KFP stand-in (tests/kfp_local.py) hands a
downstream task: recorded by the launcher from an ExampleGen's output, read
back by the driver with `type: {instanceSchema: ""}`. TFX 1.16's parser
fails on it; after `restore_input_types` it yields the declared type with
its properties. On `s3://`, the invocation's URIs (artifacts, and those in
string parameters) select the S3 filesystem and Beam's S3 flags.
"""

import json
import os

import pytest
from kfp.pipeline_spec import pipeline_spec_pb2
from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_entrypoint_utils
from tfx.types import standard_artifacts

from google.protobuf import json_format
import kfp_local
from kubeflow import entrypoint

GOLDEN = os.path.join(
  os.path.dirname(os.path.abspath(__file__)), 'golden', 'kubeflow_pipeline.json'
)


@pytest.fixture
def statistics_gen():
  """StatisticsGen's container args and the examples the driver sends it."""
  with open(GOLDEN) as f:
    spec = json.load(f)
  container = spec['deploymentSpec']['executors']['StatisticsGen_executor'][
    'container'
  ]
  kfp = kfp_local.Kfp('/nonexistent')
  provisioned = {
    'uri': 's3://bucket/root/FileBasedExampleGen/1234/examples',
    'name': 'examples',
    'type': spec['components']['FileBasedExampleGen']['outputDefinitions'][
      'artifacts'
    ]['examples']['artifactType'],
    # What TFX's entrypoint reported for ExampleGen's output.
    'metadata': {
      'split_names': '["train", "eval"]',
      'span': 0.0,
      'input_fingerprint': 'split:single_split,num_files:2',
    },
  }
  artifact = kfp._runtime_artifact(
    kfp._record('examples', provisioned, '{"Provider":"s3"}')
  )
  executor_input = {
    'inputs': {'artifacts': {'examples': {'artifacts': [artifact]}}}
  }
  return container, executor_input


def _parse(executor_input):
  message = json_format.ParseDict(
    executor_input, pipeline_spec_pb2.ExecutorInput()
  )
  return kubeflow_v2_entrypoint_utils.parse_raw_artifact_dict(
    message.inputs.artifacts
  )


def _inputs_spec(container):
  args = container['args']
  return json.loads(args[args.index(entrypoint.INPUTS_SPEC_FLAG) + 1])


def test_the_driver_sends_an_empty_type_which_tfx_cannot_parse(statistics_gen):
  _, executor_input = statistics_gen
  (artifact,) = executor_input['inputs']['artifacts']['examples']['artifacts']
  assert artifact['type'] == {'instanceSchema': ''}
  assert artifact['name'].isdigit()
  assert artifact['metadata']['display_name'] == 'examples'
  with pytest.raises(
    AttributeError, match="'NoneType' object has no attribute 'get'"
  ):
    _parse(executor_input)
  del artifact['type']
  with pytest.raises(UnboundLocalError):
    _parse(executor_input)


@pytest.mark.parametrize('empty_type', [{'instanceSchema': ''}, None])
def test_declared_types_are_restored(statistics_gen, empty_type):
  container, executor_input = statistics_gen
  (artifact,) = executor_input['inputs']['artifacts']['examples']['artifacts']
  if empty_type is None:
    del artifact['type']
  fixed = entrypoint.restore_input_types(
    executor_input, _inputs_spec(container)
  )
  (examples,) = _parse(fixed)['examples']
  assert isinstance(examples, standard_artifacts.Examples)
  assert examples.uri == 's3://bucket/root/FileBasedExampleGen/1234/examples'
  assert json.loads(examples.split_names) == ['train', 'eval']
  assert examples.span == 0 and isinstance(examples.span, int)
  assert (
    examples.get_string_custom_property('input_fingerprint')
    == 'split:single_split,num_files:2'
  )


def test_the_command_line_is_fixed_in_place(statistics_gen):
  container, executor_input = statistics_gen
  args = [
    json.dumps(executor_input) if a == '{{$}}' else a for a in container['args']
  ]
  fixed = entrypoint.fix_argv(['entrypoint'] + args)
  assert len(fixed) == len(args) + 1
  invocation = json.loads(fixed[fixed.index(entrypoint.INVOCATION_FLAG) + 1])
  assert _parse(invocation)['examples'][0].type_name == 'Examples'
  # Everything else, Beam flags included, is passed on unchanged.
  assert [a for a in fixed[1:] if not a.startswith('{"inputs"')] == [
    a for a in args if not a.startswith('{"inputs"')
  ]
  equals_form = entrypoint.fix_argv(
    [
      f'{entrypoint.INVOCATION_FLAG}={json.dumps(executor_input)}',
      entrypoint.INPUTS_SPEC_FLAG,
      json.dumps(_inputs_spec(container)),
    ]
  )
  assert equals_form[0].startswith(entrypoint.INVOCATION_FLAG + '={')
  assert 'tfx.Examples' in equals_form[0]


def test_untyped_input_without_a_declared_type_is_a_clear_error(statistics_gen):
  _, executor_input = statistics_gen
  with pytest.raises(ValueError, match='compile the pipeline with schema 2.1'):
    entrypoint.restore_input_types(executor_input, {'artifacts': {}})


def test_beam_gets_only_the_compiled_beam_arguments(statistics_gen):
  container, executor_input = statistics_gen
  args = [
    json.dumps(executor_input) if a == '{{$}}' else a for a in container['args']
  ]
  flags, beam_args = entrypoint.parse_flags(args)
  assert flags.executor_class_path == (
    'tfx.components.statistics_gen.executor.Executor'
  )
  # The golden pipeline's Dataflow flags, and no program path among them.
  assert beam_args == [
    a
    for a in args
    if a.startswith('--runner')
    or a.startswith(('--project', '--region', '--temp_'))
  ]


def test_s3_uris_register_the_store_and_add_beams_s3_flags(statistics_gen):
  container, executor_input = statistics_gen
  executor_input['outputs'] = {
    'artifacts': {
      'statistics': {
        'artifacts': [{'uri': 's3://bucket/root/StatisticsGen/9/statistics'}]
      }
    },
    'outputFile': '/tmp/kfp_outputs/output_metadata.json',
  }
  executor_input['inputs']['parameterValues'] = {
    'push_destination': json.dumps(
      {'filesystem': {'baseDirectory': 's3://bucket/out/serving'}}
    ),
    'exclude_splits': '[]',
  }
  argv = ['entrypoint'] + [
    json.dumps(executor_input) if a == '{{$}}' else a for a in container['args']
  ]
  uris = entrypoint.invocation_uris(argv)
  assert uris == [
    's3://bucket/root/FileBasedExampleGen/1234/examples',
    's3://bucket/root/StatisticsGen/9/statistics',
    's3://bucket/out/serving',
  ]
  environ = {'AWS_ENDPOINT_URL': 'http://minio:9000', 'AWS_REGION': 'eu-1'}
  _, beam_args = entrypoint.parse_flags(
    entrypoint.add_beam_flags(argv, uris, environ)[1:]
  )
  assert beam_args[-3:] == [
    '--beam_plugins=tensorflow_io',
    '--s3_endpoint_url=http://minio:9000',
    '--s3_region_name=eu-1',
  ]
  # A flag the compiled command sets is kept; local and gs:// add none.
  given = argv + ['--s3_region_name=eu-2']
  assert entrypoint.add_beam_flags(given, uris, environ)[-3:] == [
    '--s3_region_name=eu-2',
    '--beam_plugins=tensorflow_io',
    '--s3_endpoint_url=http://minio:9000',
  ]
  assert entrypoint.add_beam_flags(argv, ['/mnt/data', 'gs://b/x']) == argv
