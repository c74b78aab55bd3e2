"""The KFP stand-in's rules (tests/kfp_local.py), each on its own, fast.

Each test names the KFP source it follows; the whole pipeline through the
stand-in is tests/test_kubeflow_local_run.py.
"""

import json
import os

import pytest

import kfp_local

GOLDEN = os.path.join(
  os.path.dirname(os.path.abspath(__file__)), 'golden', 'kubeflow_pipeline.json'
)


@pytest.fixture
def spec():
  with open(GOLDEN) as f:
    return json.load(f)


def test_the_pipeline_root_is_the_runs_then_the_configmaps_then_minio(
  tmp_path, spec
):
  """driver/root_dag.go RootDAG; config/env.go DefaultPipelineRoot."""
  kfp = kfp_local.Kfp(str(tmp_path))
  assert spec['defaultPipelineRoot'].startswith('gs://')  # Never read.
  assert kfp.pipeline_root(None) == 'minio://mlpipeline/v2/artifacts'
  assert kfp.pipeline_root('s3://b/root') == 's3://b/root'
  configured = kfp_local.Kfp(
    str(tmp_path), launcher_config={'defaultPipelineRoot': 'gs://b/r'}
  )
  assert configured.pipeline_root(None) == 'gs://b/r'
  assert configured.pipeline_root('s3://b/root') == 's3://b/root'


@pytest.mark.parametrize(
  'root', ['gs://bucket', 's3://bucket/a/b', 'minio://mlpipeline/v2/artifacts']
)
def test_object_store_roots_are_accepted(root):
  """objectstore/config.go ParseBucketPathToConfig."""
  kfp_local.parse_bucket(root)


@pytest.mark.parametrize(
  'root, message',
  [
    ('/mnt/tfx/pipeline_root', 'unrecognized pipeline root format'),
    ('file:///mnt/tfx', 'unsupported Cloud bucket'),
    ('hdfs://cluster/root', 'unsupported Cloud bucket'),
  ],
)
def test_other_roots_fail_the_run_before_any_task(
  tmp_path, spec, root, message
):
  kfp = kfp_local.Kfp(str(tmp_path))
  with pytest.raises(kfp_local.KfpError, match=message):
    kfp.run(spec, pipeline_root=root)
  assert not os.path.exists(tmp_path / 'pods')


def test_metadata_goes_through_mlmd_value_types():
  """converter.go StructValueToMLMDValue, toRuntimeArtifact."""
  values = {'s': 'x', 'i': 3, 'f': 0.5, 'b': True, 'l': ['a'], 'd': {'k': 1}}
  round_trip = {
    k: kfp_local.from_mlmd_value(kfp_local.to_mlmd_value(v))
    for k, v in values.items()
  }
  assert round_trip == {
    's': 'x',
    'i': 3.0,
    'f': 0.5,
    'b': 1.0,
    'l': {'list': ['a']},
    'd': {'struct': {'k': 1}},
  }
  assert isinstance(round_trip['i'], float)
  with pytest.raises(kfp_local.KfpError, match='unsupported value type'):
    kfp_local.to_mlmd_value(None)


def test_run_parameters_are_checked_and_defaulted(spec):
  """apiserver/template/v2_template.go validatePipelineJobInputs;
  compiler/argocompiler/argo.go Compile."""
  values = kfp_local.check_run_parameters(spec, {'data_root': 'gs://b/i'})
  assert values['data_root'] == 'gs://b/i'
  assert (
    values['trainer_config']
    == spec['root']['inputDefinitions']['parameters']['trainer_config'][
      'defaultValue'
    ]
  )
  with pytest.raises(kfp_local.KfpError, match='requires type STRING'):
    kfp_local.check_run_parameters(spec, {'data_root': 3})
  with pytest.raises(kfp_local.KfpError, match='not required by pipeline'):
    kfp_local.check_run_parameters(spec, {'epochs': '3'})


def test_task_parameters_are_checked_as_the_driver_checks_them(tmp_path, spec):
  """driver/resolve.go resolveInputs: STRING takes any value as text; other
  types must match; null is refused."""
  kfp = kfp_local.Kfp(str(tmp_path))
  task = {
    'inputs': {
      'parameters': {
        'n': {'runtimeValue': {'constant': 2.0}},
        's': {'runtimeValue': {'constant': ['a', 1]}},
      }
    }
  }
  component = {
    'inputDefinitions': {
      'parameters': {
        'n': {'parameterType': 'NUMBER_INTEGER'},
        's': {'parameterType': 'STRING'},
      }
    }
  }
  assert kfp._parameters('T', task, component, {}) == {'n': 2.0, 's': '["a",1]'}
  component['inputDefinitions']['parameters']['n']['parameterType'] = 'BOOLEAN'
  with pytest.raises(kfp_local.KfpError, match='type mismatch'):
    kfp._parameters('T', task, component, {})
  task['inputs']['parameters']['n'] = {'componentInputParameter': 'p'}
  with pytest.raises(kfp_local.KfpError, match='got null'):
    kfp._parameters('T', task, component, {'p': None})


def test_cache_key_holds_input_artifact_ids(tmp_path, spec):
  """cacheutils/cache.go GenerateCacheKey: the same data in a new artifact
  is a new key."""
  kfp = kfp_local.Kfp(str(tmp_path))
  container = spec['deploymentSpec']['executors']['StatisticsGen_executor'][
    'container'
  ]
  component = spec['components']['StatisticsGen']

  def executor_input(artifact_id):
    return {
      'inputs': {
        'parameterValues': {'exclude_splits': '[]'},
        'artifacts': {
          'examples': {
            'artifacts': [
              {
                'name': artifact_id,
                'uri': 'gs://b/examples',
                'type': {'instanceSchema': ''},
              }
            ]
          }
        },
      },
      'outputs': {'artifacts': {}},
    }

  first = kfp._fingerprint(executor_input('1'), container, component, [])
  assert first == kfp._fingerprint(
    executor_input('1'), container, component, []
  )
  assert first != kfp._fingerprint(
    executor_input('8'), container, component, []
  )


def test_local_paths_of_object_store_uris():
  """component/launcher_v2.go LocalPathForURI."""
  assert kfp_local.local_path_for_uri('s3://b/r/T/u/x') == '/s3/b/r/T/u/x'
  assert kfp_local.local_path_for_uri('gs://b/x') == '/gcs/b/x'
  assert kfp_local.local_path_for_uri('minio://b/x') == '/minio/b/x'
  assert kfp_local.local_path_for_uri('/mnt/x') is None
