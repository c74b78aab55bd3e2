"""Runs a compiled PipelineSpec as KFP 2.x's backend runs it, on this machine.

A stand-in for KFP's API server, driver and launcher, derived rule by rule
from kubeflow/pipelines `backend/src/` at tag 2.0.5 and at master (commit
7b70c7b95f); `MASTER` and `V2_0_5` select where the two differ.

Run creation
- Parameters of the wrong kind, or not declared, are refused
  (`apiserver/template/v2_template.go` `validatePipelineJobInputs`); the
  others take the root's `defaultValue` (`v2/compiler/argocompiler/argo.go`
  `Compile`).
- Pipeline root: the run's `pipeline_root` (RuntimeConfig
  `gcsOutputDirectory`), else the `kfp-launcher` ConfigMap's
  `defaultPipelineRoot`, else `minio://mlpipeline/v2/artifacts`
  (`v2/driver/root_dag.go` `RootDAG`, in 2.0.5 `v2/driver/driver.go`;
  `v2/config/env.go` `DefaultPipelineRoot`). The spec's own
  `defaultPipelineRoot` is never read. The root must be a bucket URI with
  scheme gs://, s3:// or minio:// (`v2/objectstore/config.go`
  `ParseBucketPathToConfig`, called by `config/env.go` `GetStoreSessionInfo`
  and `component/launcher_v2.go` `Execute`), else every task fails.

Driver, each task in DAG order (`v2/driver/container.go` `Container`)
- Parameters (`driver/resolve.go` `resolveInputs`, `resolveInputParameter`):
  a `componentInputParameter` is the run's value, a `runtimeValue.constant`
  itself. Then checked against the component's `inputDefinitions`: a STRING
  input takes any value as text (`metadata/converter.go` `PbValueToText`);
  any other type must match the value's kind; null is refused.
- Input artifacts (`resolve.go` `resolveUpstreamArtifacts`;
  `metadata/client.go` `GetOutputArtifactsByExecutionId`,
  `OutputArtifact.ToRuntimeArtifact`; `converter.go` `toRuntimeArtifact`):
  the producer's MLMD artifact, with `name` its numeric MLMD id, its `uri`,
  `metadata` from its custom properties (every number a double), which hold
  `display_name` (and on master `store_session_info`), and
  `type: {instanceSchema: ""}` ("TODO(Bobgy): figure out how to get schema").
- Condition (`container.go` `Container`, `expression.Condition`): evaluated
  on the resolved inputs; false: the task is skipped. Here only the form the
  compiled pipeline uses, `inputs.artifacts[K].artifacts[0].metadata[F] == N`.
- Outputs (`driver/driver.go` `provisionOutputs`): `<root>/<task>/<uuid>/<key>`
  (2.0.5: `<root>/<task>/<key>`), with the `outputDefinitions` type; the
  executor output file at `LocalPathForURI(<root>/<task>/<uuid>)/
  output_metadata.json` (2.0.5, and master for an unrecognised root:
  `/tmp/kfp_outputs/output_metadata.json`, `launcher_v2.go`
  `OutputMetadataFilepath`).
- Cache (`container.go`; `driver/cache.go` `getFingerPrint`,
  `reuseCachedOutputs`; `cacheutils/cache.go` `GenerateCacheKey`,
  `GenerateFingerPrint`): for a task with `enableCache`, the sha256 of the
  JSON of: input artifact names (MLMD ids), parameter values, output
  artifacts' name/type/metadata (URIs wiped), output parameter types,
  command + args, image, PVC names. A hit reuses that execution's output
  artifacts (same ids) without running anything.
- PlatformSpec (`driver/k8s.go` `extendPodSpecPatch`, `makeVolumeMountPatch`):
  each `pvcMount` of the executor puts its claim at `mountPath` in that
  task's pod only.

Launcher (`v2/component/launcher_v2.go` `Execute`, `executeV2`, `execute`)
- Placeholders (`getPlaceholders`): `{{$}}` is the ExecutorInput as protojson,
  `{{$.inputs.parameters['N']}}` its text, artifact `.uri`/`.path`.
- Before the command: each input artifact with a gs://, minio:// or s3:// URI
  is downloaded to `LocalPathForURI` (`/gcs/`, `/minio/`, `/s3/` + bucket
  path; `downloadArtifacts`); others are skipped. The parent folders of the
  outputs' local paths are made (`prepareOutputFolders`).
- A non-zero exit fails the task. A missing executor output file is an
  empty ExecutorOutput (`getExecutorOutputFile`); its artifacts' uri and
  metadata keys are merged into the provisioned ones
  (`mergeRuntimeArtifacts`).
- After it: each output's local path is uploaded to its URI if it exists,
  else skipped with a warning (`uploadOutputArtifacts`). TFX writes to the
  URIs itself, so for TFX nothing is uploaded.
- Recording (`metadata/client.go` `RecordArtifact`; `converter.go`
  `toMLMDArtifact`, `StructValueToMLMDValue`): every metadata value becomes
  a custom property: string as string, number as double, bool as int, list
  and struct wrapped in a struct under "list" / "struct"; null fails the task
  ("unknown/unsupported value type"). `display_name` is the output key
  unless given; on master `store_session_info` is added.

Where this machine differs: a task's pod is a folder of its own
(`<work_dir>/pods/<run>/<task>/`) under which the pod's absolute paths
(`/s3/...`, `/tmp/kfp_outputs/...`) lie, and a claim is a host folder
linked at its mount path while its task runs; the command runs with this
virtualenv's `python`, not in the image; objects are listed and copied
with boto3 (S3, MinIO: $AWS_ENDPOINT_URL) or google-cloud-storage, not Go's
gocloud; Argo's retries and KFP's UI are not emulated.
`allow_local_root=True` skips the object-store check only, for runs on this
disk where no object store serves on loopback.
"""

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import uuid
from typing import Any, Dict, Iterator, List, Mapping, Optional

MASTER = 'master'
V2_0_5 = '2.0.5'
DEFAULT_PIPELINE_ROOT = 'minio://mlpipeline/v2/artifacts'
OUTPUT_METADATA_FILEPATH = '/tmp/kfp_outputs/output_metadata.json'
_BUCKET = re.compile(r'(^[a-z][a-z0-9]+:///?)([^/?]+)(/[^?]*)?(\?.+)?$')
_BUCKET_SCHEMES = ('gs://', 's3://', 'minio://')
_LOCAL_PREFIXES = {'gs://': '/gcs/', 'minio://': '/minio/', 's3://': '/s3/'}
_CONDITION = re.compile(
  r"^\(inputs\.artifacts\['([^']+)'\]\.artifacts\[0\]\.metadata\['([^']+)'\]"
  r' == ([0-9.]+)\)$'
)
_KINDS = {
  str: 'STRING',
  bool: 'BOOLEAN',
  int: 'NUMBER',
  float: 'NUMBER',
  list: 'LIST',
  dict: 'STRUCT',
  type(None): 'NULL',
}


class KfpError(Exception):
  """What KFP reports as the run (or the run's creation) failing."""


@dataclasses.dataclass
class TaskResult:
  """A task's state ('succeeded', 'cached' or 'skipped'), the artifacts
  downstream tasks get for its outputs (RuntimeArtifact dicts), its executor
  input and its cache fingerprint."""

  state: str
  outputs: Dict[str, Dict[str, Any]]
  executor_input: Optional[Dict[str, Any]] = None
  fingerprint: str = ''


def parse_bucket(root: str) -> re.Match:
  """`objectstore/config.go` `ParseBucketPathToConfig`, or KfpError."""
  match = _BUCKET.match(root)
  if not match:
    raise KfpError(
      f'parse bucket config failed: unrecognized pipeline root format: "{root}"'
    )
  if match.group(1) not in _BUCKET_SCHEMES:
    raise KfpError(
      f'parse bucket config failed: unsupported Cloud bucket: "{root}"'
    )
  return match


def local_path_for_uri(uri: str) -> Optional[str]:
  """`launcher_v2.go` `LocalPathForURI`; None for an unsupported scheme."""
  for scheme, prefix in _LOCAL_PREFIXES.items():
    if uri.startswith(scheme):
      return prefix + uri[len(scheme) :]
  return None


def _kind(value: Any) -> str:
  return _KINDS[type(value)]


def to_mlmd_value(value: Any) -> Dict[str, Any]:
  """`converter.go` `StructValueToMLMDValue`: a JSON value as an MLMD Value."""
  kind = _kind(value)
  if kind == 'STRING':
    return {'string_value': value}
  if kind == 'NUMBER':
    return {'double_value': float(value)}
  if kind == 'BOOLEAN':
    return {'int_value': int(value)}
  if kind == 'LIST':
    return {'struct_value': {'list': value}}
  if kind == 'STRUCT':
    return {'struct_value': {'struct': value}}
  raise KfpError(
    f'failed to convert RuntimeArtifact to MLMD artifact: '
    f'unknown/unsupported value type {kind}'
  )


def from_mlmd_value(value: Dict[str, Any]) -> Any:
  """`converter.go` `toRuntimeArtifact`: an MLMD Value as a JSON value."""
  ((kind, content),) = value.items()
  return float(content) if kind in ('int_value', 'double_value') else content


def _text(value: Any) -> str:
  """`converter.go` `PbValueToText` (Go's encoding/json for lists, structs)."""
  if isinstance(value, bool):
    return 'true' if value else 'false'
  if isinstance(value, (int, float)):
    return str(int(value)) if float(value).is_integer() else repr(value)
  if isinstance(value, (list, dict)):
    return json.dumps(value, separators=(',', ':'), sort_keys=True)
  return '' if value is None else value


def _cache_json(value: Any) -> str:
  """Go's encoding/json as `GenerateFingerPrint` uses it (sorted keys)."""
  return json.dumps(value, separators=(',', ':'), sort_keys=True)


def check_run_parameters(
  spec: Dict[str, Any], values: Mapping[str, Any]
) -> Dict[str, Any]:
  """The run's parameter values, defaults filled in, as KFP accepts them."""
  definitions = spec['root'].get('inputDefinitions', {}).get('parameters', {})
  extra = sorted(set(values) - set(definitions))
  if extra:
    raise KfpError(
      'parameter(s) provided are not required by pipeline: ' + ', '.join(extra)
    )
  result = {}
  for name, definition in definitions.items():
    expected = definition.get('parameterType', 'UNSPECIFIED')
    if name in values:
      kind = _kind(values[name])
      wanted = 'NUMBER' if expected.startswith('NUMBER_') else expected
      if kind != wanted:
        raise KfpError(
          f'input parameter {name} requires type {expected}, but '
          f'the parameter value is not of {wanted.lower()} value '
          'type'
        )
      result[name] = values[name]
    elif 'defaultValue' in definition:
      result[name] = definition['defaultValue']
    elif definition.get('isOptional'):
      result[name] = None
    else:
      raise KfpError(
        f'parameter {name} is not optional, yet has neither '
        'default value nor user provided value'
      )
  return result


def _order(tasks: Dict[str, Any]) -> List[str]:
  """Task names, each after the tasks it depends on."""
  done, order = set(), []
  while len(order) < len(tasks):
    ready = sorted(
      name
      for name, task in tasks.items()
      if name not in done and set(task.get('dependentTasks', [])) <= done
    )
    if not ready:
      raise ValueError(f'Cycle among {sorted(set(tasks) - done)}')
    done.update(ready)
    order.extend(ready)
  return order


@dataclasses.dataclass
class _MlmdArtifact:
  id: int
  uri: str
  schema: str
  custom_properties: Dict[str, Dict[str, Any]]


class Kfp:
  """One KFP installation: its MLMD store and cache, kept across runs.

  Attributes:
    work_dir: Holds each task's pod folder and log.
    version: MASTER or V2_0_5.
    launcher_config: The `kfp-launcher` ConfigMap's data, if there is one.
    claims: PersistentVolumeClaim name -> the host folder holding its files.
  """

  def __init__(
    self,
    work_dir: str,
    version: str = MASTER,
    launcher_config: Optional[Dict[str, str]] = None,
    claims: Optional[Dict[str, str]] = None,
  ):
    if version not in (MASTER, V2_0_5):
      raise ValueError(f'Unknown KFP version {version}')
    self.work_dir = work_dir
    self.version = version
    self.launcher_config = launcher_config or {}
    self.claims = dict(claims or {})
    self._artifacts: Dict[int, _MlmdArtifact] = {}
    self._cache: Dict[str, Dict[str, int]] = {}  # fingerprint -> key -> id
    self._runs = 0
    self._local_root = False

  def pipeline_root(self, run_pipeline_root: Optional[str]) -> str:
    """The root `RootDAG` resolves (module docstring)."""
    return (
      run_pipeline_root
      or self.launcher_config.get('defaultPipelineRoot')
      or DEFAULT_PIPELINE_ROOT
    )

  def run(
    self,
    spec: Dict[str, Any],
    pipeline_root: Optional[str] = None,
    parameters: Optional[Mapping[str, Any]] = None,
    platform_spec: Optional[Dict[str, Any]] = None,
    enable_caching: bool = True,
    allow_local_root: bool = False,
  ) -> Dict[str, TaskResult]:
    """Creates and runs one run of `spec`; returns each task's result.

    Args:
      spec: The PipelineSpec (as uploaded).
      pipeline_root: The run's pipeline_root, as the API's RuntimeConfig.
      parameters: The run's parameter values.
      platform_spec: The PlatformSpec uploaded with the spec, if any.
      enable_caching: False: the cache is off for the run, as KFP's
        `cache_disabled` / caching settings.
      allow_local_root: Accept a root on this disk (module docstring).

    Raises:
      KfpError: KFP would refuse the run or fail a task; the message says
        which and why, ending with the task's log.
    """
    self._runs += 1
    run_id = f'run{self._runs}'
    values = check_run_parameters(spec, parameters or {})
    root = self.pipeline_root(pipeline_root)
    self._local_root = allow_local_root and root.startswith('/')
    if not self._local_root:
      parse_bucket(root)
    session_info = self._session_info(root)
    executors = (
      (platform_spec or {})
      .get('platforms', {})
      .get('kubernetes', {})
      .get('deploymentSpec', {})
      .get('executors', {})
    )
    tasks = spec['root']['dag']['tasks']
    results: Dict[str, TaskResult] = {}
    for name in _order(tasks):
      task = tasks[name]
      component = spec['components'][task['componentRef']['name']]
      label = component['executorLabel']
      container = spec['deploymentSpec']['executors'][label]['container']
      inputs = {
        'parameterValues': self._parameters(name, task, component, values),
        'artifacts': {
          key: {'artifacts': [self._input_artifact(name, source, results)]}
          for key, source in task.get('inputs', {}).get('artifacts', {}).items()
        },
      }
      if not self._triggered(task, inputs):
        results[name] = TaskResult('skipped', {})
        continue
      pod = os.path.join(self.work_dir, 'pods', run_id, name)
      executor_input = {
        'inputs': inputs,
        'outputs': self._provision(root, name, component, pod),
      }
      mounts = executors.get(label, {}).get('pvcMount', [])
      fingerprint = ''
      if enable_caching and task.get('cachingOptions', {}).get('enableCache'):
        fingerprint = self._fingerprint(
          executor_input, container, component, mounts
        )
        if fingerprint in self._cache:
          cached = self._cache[fingerprint]
          results[name] = TaskResult(
            'cached',
            {
              key: self._runtime_artifact(artifact_id)
              for key, artifact_id in cached.items()
            },
            executor_input,
            fingerprint,
          )
          continue
      outputs = self._launch(
        name, pod, container, executor_input, mounts, session_info
      )
      if fingerprint:
        self._cache[fingerprint] = outputs
      results[name] = TaskResult(
        'succeeded',
        {
          key: self._runtime_artifact(artifact_id)
          for key, artifact_id in outputs.items()
        },
        executor_input,
        fingerprint,
      )
    return results

  def _session_info(self, root: str) -> str:
    """`config/env.go` `GetStoreSessionInfo` without provider settings."""
    scheme = root.split('://', 1)[0] if '://' in root else ''
    if scheme == 'minio':
      params = {
        'region': 'minio',
        'endpoint': 'seaweedfs.kubeflow:9000',
        'disableSSL': 'true',
        'fromEnv': 'false',
        'maxRetries': '5',
        'secretName': 'mlpipeline-minio-artifact',
        'accessKeyKey': 'accesskey',
        'secretKeyKey': 'secretkey',
      }
    else:
      params = {'fromEnv': 'true'}
    return json.dumps(
      {'Provider': scheme, 'Params': params}, separators=(',', ':')
    )

  def _parameters(
    self,
    name: str,
    task: Dict[str, Any],
    component: Dict[str, Any],
    run_values: Dict[str, Any],
  ) -> Dict[str, Any]:
    """`resolve.go` `resolveInputs`: resolved and type-checked values."""
    values = {}
    for key, source in task.get('inputs', {}).get('parameters', {}).items():
      if 'componentInputParameter' in source:
        value = run_values[source['componentInputParameter']]
      elif 'runtimeValue' in source:
        value = source['runtimeValue']['constant']
      else:
        raise KfpError(f'{name}: parameter spec {source} not emulated')
      if value is None:
        raise KfpError(f'{name}: got null for input parameter "{key}"')
      values[key] = value
    definitions = component.get('inputDefinitions', {}).get('parameters', {})
    for key, definition in definitions.items():
      if key not in values:
        if not definition.get('isOptional') and 'defaultValue' not in (
          definition
        ):
          raise KfpError(
            f'{name}: neither value nor default value provided '
            f'for non-optional parameter "{key}"'
          )
        continue
      expected = definition.get('parameterType')
      kind = _kind(values[key])
      if expected == 'STRING':
        values[key] = _text(values[key])
      elif kind != ('NUMBER' if expected.startswith('NUMBER_') else expected):
        raise KfpError(
          f'{name}: input parameter "{key}" type mismatch: '
          f'expect {expected}, got {kind.lower()}'
        )
    return values

  def _input_artifact(
    self, name: str, source: Dict[str, Any], results: Dict[str, TaskResult]
  ) -> Dict[str, Any]:
    """`resolve.go` `resolveUpstreamArtifacts`: the producer's output."""
    if 'taskOutputArtifact' not in source:
      raise KfpError(f'{name}: artifact spec {source} not emulated')
    producer = source['taskOutputArtifact']['producerTask']
    key = source['taskOutputArtifact']['outputArtifactKey']
    result = results.get(producer)
    if result is None or key not in result.outputs:
      raise KfpError(
        f'{name}: cannot find output artifact key "{key}" in '
        f'producer task "{producer}"'
      )
    return copy.deepcopy(result.outputs[key])

  def _runtime_artifact(self, artifact_id: int) -> Dict[str, Any]:
    """`OutputArtifact.ToRuntimeArtifact` of an MLMD artifact."""
    artifact = self._artifacts[artifact_id]
    return {
      'name': str(artifact.id),
      'uri': artifact.uri,
      'metadata': {
        key: from_mlmd_value(value)
        for key, value in artifact.custom_properties.items()
      },
      'type': {'instanceSchema': ''},
    }

  @staticmethod
  def _triggered(task: Dict[str, Any], inputs: Dict[str, Any]) -> bool:
    condition = task.get('triggerPolicy', {}).get('condition')
    if not condition:
      return True
    match = _CONDITION.match(condition)
    if not match:
      raise ValueError(f'Condition not emulated: {condition}')
    key, field, number = match.groups()
    artifact = inputs['artifacts'][key]['artifacts'][0]
    return artifact.get('metadata', {}).get(field) == float(number)

  def _provision(
    self, root: str, task: str, component: Dict[str, Any], pod: str
  ) -> Dict[str, Any]:
    """`driver.go` `provisionOutputs`."""
    definitions = component.get('outputDefinitions', {}).get('artifacts', {})
    if self.version == MASTER:
      task_root = f'{root.rstrip("/")}/{task}/{uuid.uuid4()}'
      local_root = local_path_for_uri(task_root)
      output_file = (
        f'{local_root}/output_metadata.json'
        if local_root
        else OUTPUT_METADATA_FILEPATH
      )
    else:
      task_root = f'{root.rstrip("/")}/{task}'
      output_file = OUTPUT_METADATA_FILEPATH
    artifacts = {}
    for key, definition in definitions.items():
      artifact = {
        'uri': f'{task_root}/{key}',
        'type': definition['artifactType'],
      }
      if self.version == MASTER:
        artifact['name'] = key
      if 'metadata' in definition:
        artifact['metadata'] = definition['metadata']
      artifacts[key] = {'artifacts': [artifact]}
    return {
      'artifacts': artifacts,
      'outputFile': os.path.join(pod, output_file.lstrip('/')),
    }

  def _fingerprint(
    self,
    executor_input: Dict[str, Any],
    container: Dict[str, Any],
    component: Dict[str, Any],
    mounts: List[Dict[str, Any]],
  ) -> str:
    """`cacheutils/cache.go` `GenerateCacheKey`, `GenerateFingerPrint`."""
    inputs, outputs = executor_input['inputs'], executor_input['outputs']
    key = {
      'inputArtifactNames': {
        name: {'artifactNames': [a['name'] for a in value['artifacts']]}
        for name, value in inputs['artifacts'].items()
      },
      'inputParameterValues': inputs['parameterValues'],
      'outputArtifactsSpec': {
        name: {k: v for k, v in value['artifacts'][0].items() if k != 'uri'}
        for name, value in outputs['artifacts'].items()
      },
      'outputParametersSpec': {
        name: definition['parameterType']
        for name, definition in component.get('outputDefinitions', {})
        .get('parameters', {})
        .items()
      },
      'containerSpec': {
        'image': container['image'],
        'cmdArgs': container.get('command', []) + container.get('args', []),
        'pvcNames': sorted({m['constant'] for m in mounts}),
      },
    }
    return hashlib.sha256(_cache_json(key).encode()).hexdigest()

  def _launch(
    self,
    name: str,
    pod: str,
    container: Dict[str, Any],
    executor_input: Dict[str, Any],
    mounts: List[Dict[str, Any]],
    session_info: str,
  ) -> Dict[str, int]:
    """The launcher: runs the task's command; returns output key -> MLMD id."""
    # Imported here: the rest of this module needs no TensorFlow.
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    message = json_format.ParseDict(
      executor_input, pipeline_spec_pb2.ExecutorInput()
    )
    placeholders = {'{{$}}': json_format.MessageToJson(message, indent=None)}
    for key, value in executor_input['inputs']['parameterValues'].items():
      placeholders[f"{{{{$.inputs.parameters['{key}']}}}}"] = _text(value)
    for direction in ('inputs', 'outputs'):
      for key, value in executor_input[direction]['artifacts'].items():
        uri = value['artifacts'][0]['uri']
        placeholders[f"{{{{$.{direction}.artifacts['{key}'].uri}}}}"] = uri
        local = local_path_for_uri(uri)
        if local:
          placeholders[f"{{{{$.{direction}.artifacts['{key}'].path}}}}"] = (
            os.path.join(pod, local.lstrip('/'))
          )

    def fill(word: str) -> str:
      for placeholder, value in placeholders.items():
        word = word.replace(placeholder, value)
      return word

    command = [
      sys.executable if word == 'python' else fill(word)
      for word in container['command']
    ]
    args = [fill(arg) for arg in container.get('args', [])]
    if any('{{$' in arg for arg in command + args):
      raise ValueError(f'{name}: placeholder not emulated in {args}')
    os.makedirs(pod, exist_ok=True)
    for value in executor_input['inputs']['artifacts'].values():
      self._download(value['artifacts'][0]['uri'], pod)
    for value in executor_input['outputs']['artifacts'].values():
      local = local_path_for_uri(value['artifacts'][0]['uri'])
      if local is None and self._local_root:
        continue  # The launcher would have refused the root already.
      if local is None:
        raise KfpError(
          f'{name}: failed to generate local storage path for '
          f'output artifact {value["artifacts"][0]["uri"]}'
        )
      os.makedirs(
        os.path.dirname(os.path.join(pod, local.lstrip('/'))), exist_ok=True
      )
    output_file = executor_input['outputs']['outputFile']
    os.makedirs(os.path.dirname(output_file), exist_ok=True)
    run_id = os.path.basename(os.path.dirname(pod))
    log_path = os.path.join(self.work_dir, 'logs', f'{run_id}-{name}.log')
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with self._mounted(mounts), open(log_path, 'w') as log:
      returncode = subprocess.call(
        command + args, stdout=log, stderr=subprocess.STDOUT
      )
    if returncode:
      with open(log_path) as log:
        raise KfpError(
          f'{name} failed (exit {returncode}):\n' + log.read()[-6000:]
        )
    reported = {}
    if os.path.exists(output_file):
      with open(output_file) as f:
        reported = json.load(f).get('artifacts', {})
    outputs = {}
    for key, value in executor_input['outputs']['artifacts'].items():
      artifact = copy.deepcopy(value['artifacts'][0])
      for update in reported.get(key, {}).get('artifacts', [])[:1]:
        if update.get('uri'):
          artifact['uri'] = update['uri']
        artifact.setdefault('metadata', {}).update(update.get('metadata', {}))
      self._upload(artifact['uri'], pod)
      outputs[key] = self._record(key, artifact, session_info)
    return outputs

  def _record(
    self, key: str, artifact: Dict[str, Any], session_info: str
  ) -> int:
    """`RecordArtifact`: stores the artifact in MLMD; returns its id."""
    properties = {
      k: to_mlmd_value(v) for k, v in artifact.get('metadata', {}).items()
    }
    properties.setdefault('display_name', to_mlmd_value(key))
    if self.version == MASTER:
      properties.setdefault('store_session_info', to_mlmd_value(session_info))
    schema = artifact['type'].get('instanceSchema') or (
      'title: ' + artifact['type'].get('schemaTitle', '')
    )
    artifact_id = len(self._artifacts) + 1
    self._artifacts[artifact_id] = _MlmdArtifact(
      artifact_id, artifact['uri'], schema, properties
    )
    return artifact_id

  def _download(self, uri: str, pod: str) -> None:
    """`downloadArtifacts`, `objectstore.DownloadBlob`: the objects under
    `uri` into the pod's disk."""
    local = local_path_for_uri(uri)
    if local is None:
      logging.warning(
        'Input Artifact does not have a recognized storage URI '
        '%r. Skipping downloading to local path.',
        uri,
      )
      return
    target = os.path.join(pod, local.lstrip('/'))
    store = _Bucket(uri)
    for key in store.keys():
      path = os.path.join(target, os.path.relpath(key, store.prefix))
      os.makedirs(os.path.dirname(path), exist_ok=True)
      store.download(key, path)

  def _upload(self, uri: str, pod: str) -> None:
    """`uploadOutputArtifacts`, `objectstore.UploadBlob`: the local path, if
    it exists, to `uri`."""
    local = local_path_for_uri(uri)
    path = local and os.path.join(pod, local.lstrip('/'))
    if not path or not os.path.exists(path):
      logging.info('Local filepath %r does not exist: nothing uploaded', path)
      return
    store = _Bucket(uri)
    for directory, _, files in os.walk(path):
      for file_name in files:
        relative = os.path.relpath(os.path.join(directory, file_name), path)
        store.upload(
          os.path.join(directory, file_name), f'{store.prefix}/{relative}'
        )

  @contextlib.contextmanager
  def _mounted(self, mounts: List[Dict[str, Any]]) -> Iterator[None]:
    """`makeVolumeMountPatch`: each claim at its mount path, for one task."""
    made = []
    try:
      for mount in mounts:
        claim, path = mount.get('constant'), mount.get('mountPath')
        if not claim or not path:
          raise KfpError(
            f'failed to mount volume {mount}: claim name and '
            'mount path are required'
          )
        if claim not in self.claims:
          raise KfpError(
            f'persistentvolumeclaim "{claim}" not found: the pod stays Pending'
          )
        if os.path.lexists(path):
          raise KfpError(
            f'{path} exists on this machine: cannot mount {claim} there'
          )
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.symlink(self.claims[claim], path)
        made.append(path)
      yield
    finally:
      for path in made:
        os.unlink(path)


class _Bucket:
  """The objects under a gs://, s3:// or minio:// URI, as the launcher's
  gocloud bucket sees them (S3 and MinIO through boto3 and
  $AWS_ENDPOINT_URL; not tensorflow-io, which aborts the process at exit)."""

  def __init__(self, uri: str):
    scheme, rest = uri.split('://', 1)
    self.name, _, prefix = rest.partition('/')
    self.prefix = prefix.rstrip('/')
    if scheme == 'gs':
      from google.cloud import storage

      self._gcs = storage.Client().bucket(self.name)
      self._s3 = None
    else:
      import boto3

      self._s3 = boto3.client(
        's3',
        endpoint_url=(
          os.environ.get('AWS_ENDPOINT_URL_S3')
          or os.environ.get('AWS_ENDPOINT_URL')
        ),
      )

  def keys(self) -> Iterator[str]:
    """Object keys under the prefix (`isBlobKeyUnderPrefix`)."""
    if self._s3 is None:
      names = (b.name for b in self._gcs.list_blobs(prefix=self.prefix))
    else:
      pages = self._s3.get_paginator('list_objects_v2').paginate(
        Bucket=self.name, Prefix=self.prefix
      )
      names = (o['Key'] for page in pages for o in page.get('Contents', []))
    for name in names:
      if name.startswith(self.prefix + '/') and not name.endswith('/'):
        yield name

  def download(self, key: str, path: str) -> None:
    if self._s3 is None:
      self._gcs.blob(key).download_to_filename(path)
    else:
      self._s3.download_file(self.name, key, path)

  def upload(self, path: str, key: str) -> None:
    if self._s3 is None:
      self._gcs.blob(key).upload_from_filename(path)
    else:
      self._s3.upload_file(path, self.name, key)
