"""Uploads a compiled pipeline to Kubeflow Pipelines and starts runs of it.

Talks to the KFP API (v2beta1) through the kfp SDK client. Each command is all
or nothing: a run or recurring run is created only after its pipeline version
was uploaded, and when a step fails, the pipeline or version the command had
created is deleted again.

Every run and recurring run names its pipeline root: KFP's backend never
reads the spec's `defaultPipelineRoot` for runs created through its API (it
takes the run's root, else the `kfp-launcher` ConfigMap's, else
`minio://mlpipeline/v2/artifacts`: kubeflow/pipelines
`backend/src/v2/driver/root_dag.go` `RootDAG`), and TFX cannot write
`minio://` URIs. `check_pipeline_root` refuses a root that KFP's launcher or
TFX cannot use, or that does not answer.
"""

import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import sys
import tempfile
from typing import Any, Callable, Dict, Iterator, Mapping, Optional
import urllib.error
import urllib.request
import warnings

import kfp
import kfp_server_api
import urllib3
import yaml

from pipeline import settings as settings_lib

HEALTHZ_PATH = '/apis/v2beta1/healthz'
# Names of the compiled pipeline's runtime parameters.
DATA_ROOT_PARAMETER = settings_lib.DATA_ROOT_PARAMETER
EVAL_CONFIG_PARAMETER = settings_lib.EVAL_CONFIG_PARAMETER
TRAINER_CONFIG_PARAMETER = settings_lib.TRAINER_CONFIG_PARAMETER
# Roots both KFP's launcher (backend/src/v2/objectstore/config.go
# ParseBucketPathToConfig) and TFX's file I/O (tf.io.gfile) accept.
OBJECT_STORE_SCHEMES = ('gs://', 's3://')
GCS_ENDPOINT = 'https://storage.googleapis.com'
S3_ENDPOINT = 'https://s3.amazonaws.com'
# KFP rejects recurring runs outside this range.
MAX_CONCURRENCY_RANGE = range(1, 11)


class KfpError(Exception):
  """A KFP request failed on the server's side."""


class RequestError(KfpError):
  """A KFP request failed in a way the caller can fix."""


class UnreachableError(RequestError):
  """The KFP endpoint cannot be reached."""


class AuthError(RequestError):
  """The KFP endpoint refused the credentials (or asked for a login)."""


@dataclasses.dataclass(frozen=True)
class Endpoint:
  """A KFP API endpoint and how to authenticate to it.

  Attributes:
    host: e.g. http://localhost:8080 (a port-forward of svc/ml-pipeline-ui)
      or https://kubeflow.example.com/pipeline.
    token: Sent as `Authorization: Bearer <token>`.
    cookie: Sent as `Cookie`, e.g. a Kubeflow login's `authservice_session=...`.
    namespace: Kubernetes namespace for experiments and runs (multi-user KFP).
  """

  host: str
  token: Optional[str] = None
  cookie: Optional[str] = None
  namespace: Optional[str] = None

  def __post_init__(self):
    if not self.host.startswith(('http://', 'https://')):
      raise ValueError(
        f'The KFP host must start with http:// or https://, got {self.host!r}'
      )
    object.__setattr__(self, 'host', self.host.rstrip('/'))


@dataclasses.dataclass(frozen=True)
class Package:
  """A compiled pipeline (`python -m kubeflow compile`).

  Attributes:
    path: The file it was read from: a JSON PipelineSpec, or YAML holding a
      PipelineSpec and then a PlatformSpec (mounted volumes).
    spec: The PipelineSpec.
    platform_spec: The PlatformSpec, if any.
  """

  path: str
  spec: Dict[str, Any]
  platform_spec: Optional[Dict[str, Any]] = None

  @classmethod
  def load(cls, path: str) -> 'Package':
    try:
      with open(path) as f:
        documents = list(yaml.safe_load_all(f))  # JSON is YAML too.
    except (OSError, yaml.YAMLError) as e:
      raise ValueError(f'Cannot read the compiled pipeline {path}: {e}') from e
    spec, *rest = documents or [None]
    if (
      not (isinstance(spec, dict) and 'pipelineInfo' in spec and 'root' in spec)
      or len(rest) > 1
      or (rest and 'platforms' not in (rest[0] or {}))
    ):
      raise ValueError(
        f'{path} is not a compiled pipeline spec; make one '
        'with `python -m kubeflow compile`.'
      )
    return cls(path, spec, rest[0] if rest else None)

  def write(self, path: str) -> None:
    """Writes what KFP takes as an upload (YAML; JSON is valid YAML)."""
    with open(path, 'w') as f:
      if self.platform_spec:
        yaml.safe_dump_all([self.spec, self.platform_spec], f, sort_keys=True)
      else:
        json.dump(self.spec, f)

  @property
  def name(self) -> str:
    return self.spec['pipelineInfo']['name']

  @property
  def pipeline_root(self) -> Optional[str]:
    """The root compiled in (`<output-dir>/pipeline_root`), if any."""
    return self.spec.get('defaultPipelineRoot')

  @property
  def digest(self) -> str:
    content = (
      [self.spec, self.platform_spec] if self.platform_spec else self.spec
    )
    return hashlib.sha256(
      json.dumps(content, sort_keys=True).encode()
    ).hexdigest()

  def defaults(self) -> Dict[str, Any]:
    """Runtime parameter name -> compiled default."""
    parameters = (
      self.spec['root'].get('inputDefinitions', {}).get('parameters', {})
    )
    return {name: p.get('defaultValue') for name, p in parameters.items()}

  def default(self, parameter: str) -> Any:
    defaults = self.defaults()
    if parameter not in defaults:
      raise ValueError(
        f'{self.path} has no runtime parameter {parameter!r}; compile it again.'
      )
    return defaults[parameter]


@dataclasses.dataclass(frozen=True)
class PipelineVersion:
  pipeline_id: str
  version_id: str
  version_name: str


def run_parameters(
  package: Package,
  data_root: Optional[str] = None,
  accuracy_threshold: Optional[float] = None,
  max_accuracy_drop: Optional[float] = None,
  trainer: Optional[Mapping[str, Any]] = None,
) -> Dict[str, str]:
  """Runtime parameter values that override the package's defaults.

  Args:
    package: The compiled pipeline.
    data_root: The image folder the run reads.
    accuracy_threshold: With max_accuracy_drop: the Evaluator's gate, one
      parameter (a tfma.EvalConfig).
    max_accuracy_drop: See accuracy_threshold.
    trainer: Trainer settings, merged into the package's.

  Returns:
    Every runtime parameter of the package: its compiled default unless
    given here. Passing them all keeps runs independent of how a KFP backend
    resolves defaults, and shows every value in the KFP UI.

  Raises:
    ValueError: On invalid or incomplete settings.
  """
  if (accuracy_threshold is None) != (max_accuracy_drop is None):
    raise ValueError(
      'Give both the accuracy threshold and the maximum '
      'accuracy drop: together they are the eval_config '
      'parameter.'
    )
  fixed = [
    key
    for key in settings_lib.COMPILE_TIME_TRAINER_KEYS
    if key in (trainer or {})
  ]
  if fixed:
    raise ValueError(
      f'{fixed} are fixed at compile time (the Transform '
      'reads them); compile the pipeline again to change them.'
    )
  parameters = package.defaults()
  if data_root is not None:
    package.default(DATA_ROOT_PARAMETER)  # Raises if there is none.
    parameters[DATA_ROOT_PARAMETER] = data_root
  if accuracy_threshold is None and not trainer:
    return parameters

  # The values are built and checked (pipeline/settings.py) as the compiler
  # builds the defaults.
  settings = {}
  if accuracy_threshold is not None:
    package.default(EVAL_CONFIG_PARAMETER)  # Raises if there is none.
    settings.update(
      accuracy_threshold=accuracy_threshold, max_accuracy_drop=max_accuracy_drop
    )
  if trainer:
    settings['trainer'] = {
      **json.loads(package.default(TRAINER_CONFIG_PARAMETER)),
      **trainer,
    }
  config = settings_lib.PipelineConfig.from_dict(settings)
  if 'backbone' in (trainer or {}):
    settings_lib.check_models(config)
  # This imports TensorFlow.
  from pipeline import pipeline as pipeline_lib

  values = pipeline_lib.runtime_parameters(config)
  if accuracy_threshold is not None:
    parameters[EVAL_CONFIG_PARAMETER] = values[EVAL_CONFIG_PARAMETER].default
  if trainer:
    parameters[TRAINER_CONFIG_PARAMETER] = values[
      TRAINER_CONFIG_PARAMETER
    ].default
  return parameters


def check_cron(cron: str) -> None:
  """KFP's cron has a seconds field first: `0 0 3 * * *` is 03:00 daily."""
  fields = cron.split()
  if len(fields) != 6:
    raise ValueError(
      f'KFP cron expressions have 6 fields, seconds first (e.g. '
      f'"0 0 3 * * *" for 03:00 every day), got {len(fields)} in {cron!r}. '
      'KFP would read a 5-field crontab line as starting with seconds.'
    )


def check_pipeline_root(
  root: Optional[str], reach: bool = True, timeout: float = 10
) -> str:
  """`root` if KFP and TFX can use it as a pipeline root and it answers.

  Args:
    root: gs://BUCKET/... or s3://BUCKET/... .
    reach: Also ask the bucket's endpoint (without credentials) whether the
      bucket exists: for S3, $AWS_ENDPOINT_URL_S3 or $AWS_ENDPOINT_URL
      (e.g. MinIO's), else AWS; for GCS, $STORAGE_EMULATOR_HOST, else Google.
    timeout: Seconds to wait for the endpoint.

  Raises:
    ValueError: No root, or one that is not a gs:// or s3:// bucket.
    UnreachableError: The endpoint does not answer or has no such bucket.
  """
  if not root:
    raise ValueError(
      'No pipeline root: the package has no defaultPipelineRoot. Compile '
      'it with --output-dir gs://... or s3://..., or pass --pipeline-root.'
    )
  if (
    not root.startswith(OBJECT_STORE_SCHEMES)
    or not root.split('://', 1)[1].split('/')[0]
  ):
    hint = (
      ' TFX cannot write minio:// URIs: use s3://BUCKET/... with '
      'AWS_ENDPOINT_URL set to the MinIO endpoint in the pods.'
      if root.startswith('minio://')
      else " KFP's launcher accepts only object stores: a mounted volume "
      'cannot hold the pipeline root.'
    )
    raise ValueError(
      f'The pipeline root must be gs://BUCKET/... or '
      f's3://BUCKET/..., got {root!r}.{hint}'
    )
  if reach:
    _check_bucket(root, timeout)
  return root


def _check_bucket(root: str, timeout: float) -> None:
  """Asks the bucket's endpoint whether it exists (module docstring)."""
  scheme, rest = root.split('://', 1)
  bucket = rest.split('/')[0]
  if scheme == 's3':
    endpoint = (
      os.environ.get('AWS_ENDPOINT_URL_S3')
      or os.environ.get('AWS_ENDPOINT_URL')
      or S3_ENDPOINT
    )
  else:
    endpoint = os.environ.get('STORAGE_EMULATOR_HOST') or GCS_ENDPOINT
  url = f'{endpoint.rstrip("/")}/{bucket}'
  opener = urllib.request.build_opener(
    urllib.request.ProxyHandler({}), _NoRedirect
  )
  try:
    opener.open(urllib.request.Request(url, method='HEAD'), timeout=timeout)
  except urllib.error.HTTPError as e:
    if e.code == 404:
      raise UnreachableError(
        f'Pipeline root {root}: {endpoint} has no bucket {bucket!r}.'
      ) from e
    # 301/403: the bucket exists (in another region, or needs credentials).
  except (urllib.error.URLError, OSError) as e:
    raise UnreachableError(
      f'Pipeline root {root}: cannot reach {endpoint}: '
      f'{getattr(e, "reason", e)}. Set AWS_ENDPOINT_URL (S3, MinIO) or '
      'STORAGE_EMULATOR_HOST (GCS) to the endpoint the pods use, or pass '
      '--skip-root-check where only the cluster can reach it.'
    ) from e


def upload(
  endpoint: Endpoint,
  package: Package,
  pipeline_name: Optional[str] = None,
  version_name: Optional[str] = None,
) -> PipelineVersion:
  """Uploads `package` as a new version (of a new pipeline if needed)."""
  client = _connect(endpoint)
  with contextlib.ExitStack() as undo:
    version = _upload(client, package, pipeline_name, version_name, undo)
    undo.pop_all()
  return version


def schedule(
  endpoint: Endpoint,
  package: Package,
  cron: str,
  parameters: Mapping[str, str],
  pipeline_root: str,
  max_concurrency: int = 1,
  experiment: Optional[str] = None,
  name: Optional[str] = None,
  pipeline_name: Optional[str] = None,
  version_name: Optional[str] = None,
) -> Dict[str, str]:
  """Uploads `package` and creates a recurring run of that version.

  Args:
    endpoint: The KFP API.
    package: The compiled pipeline.
    cron: When to run, KFP's 6-field cron (`check_cron`).
    parameters: Runtime parameter values (`run_parameters`).
    pipeline_root: Where every run's artifacts go (`check_pipeline_root`).
    max_concurrency: How many runs may be active at once (1 to 10).
    experiment: Experiment name; default the pipeline name.
    name: The recurring run's name.
    pipeline_name: Default: the package's pipeline name.
    version_name: Default: UTC time and the package's digest.

  Returns:
    The ids of the pipeline, version and recurring run.
  """
  check_cron(cron)
  if max_concurrency not in MAX_CONCURRENCY_RANGE:
    raise ValueError(f'max concurrency must be 1 to 10, got {max_concurrency}')

  def create(client, experiment_id, version, pipeline_name):
    run_name = name or f'{pipeline_name} {version.version_name} ({cron})'
    with _kfp_call(f'Creating recurring run {run_name!r}'):
      recurring_run = client.create_recurring_run(
        experiment_id=experiment_id,
        job_name=run_name,
        cron_expression=cron,
        max_concurrency=max_concurrency,
        no_catchup=True,
        params=dict(parameters),
        pipeline_id=version.pipeline_id,
        version_id=version.version_id,
        enabled=True,
        pipeline_root=pipeline_root,
      )
    return {'recurring_run_id': recurring_run.recurring_run_id}

  return _upload_then(
    endpoint, package, experiment, pipeline_name, version_name, create
  )


def run_once(
  endpoint: Endpoint,
  package: Package,
  parameters: Mapping[str, str],
  pipeline_root: str,
  experiment: Optional[str] = None,
  name: Optional[str] = None,
  pipeline_name: Optional[str] = None,
  version_name: Optional[str] = None,
) -> Dict[str, str]:
  """Uploads `package` and starts one run of that version (see `schedule`)."""

  def create(client, experiment_id, version, pipeline_name):
    run_name = name or f'{pipeline_name} {version.version_name}'
    with _kfp_call(f'Creating run {run_name!r}'):
      run = client.run_pipeline(
        experiment_id=experiment_id,
        job_name=run_name,
        params=dict(parameters),
        pipeline_id=version.pipeline_id,
        version_id=version.version_id,
        pipeline_root=pipeline_root,
      )
    return {'run_id': run.run_id}

  return _upload_then(
    endpoint, package, experiment, pipeline_name, version_name, create
  )


def _upload_then(
  endpoint: Endpoint,
  package: Package,
  experiment: Optional[str],
  pipeline_name: Optional[str],
  version_name: Optional[str],
  create,
) -> Dict[str, str]:
  """Uploads `package`, then `create(client, experiment_id, version, name)`.

  Whatever the upload created is deleted again if `create` fails, so nothing
  is left half-created. Returns the version's ids and `create`'s ids.
  """
  client = _connect(endpoint)
  pipeline_name = pipeline_name or package.name
  experiment_id = _experiment_id(
    client, experiment or pipeline_name, endpoint.namespace
  )
  with contextlib.ExitStack() as undo:
    version = _upload(client, package, pipeline_name, version_name, undo)
    created = create(client, experiment_id, version, pipeline_name)
    undo.pop_all()
  return {**dataclasses.asdict(version), **created}


def _connect(endpoint: Endpoint, timeout: float = 30) -> kfp.Client:
  """A kfp.Client, after checking that the endpoint answers and admits us."""
  _check_health(endpoint, timeout)
  kwargs = {'namespace': endpoint.namespace} if endpoint.namespace else {}
  with warnings.catch_warnings(), _kfp_call(f'Connecting to {endpoint.host}'):
    # "This client only works with Kubeflow Pipeline v2.0.0-beta.2 and later".
    warnings.simplefilter('ignore', FutureWarning)
    return kfp.Client(
      host=endpoint.host,
      existing_token=endpoint.token,
      cookies=endpoint.cookie,
      **kwargs,
    )


class _NoRedirect(urllib.request.HTTPRedirectHandler):
  def redirect_request(self, *args, **kwargs):
    return None  # A redirect becomes an HTTPError: usually a login page.


def _check_health(endpoint: Endpoint, timeout: float) -> None:
  """Fails fast and clearly where kfp.Client would retry for 25 s or hang."""
  url = endpoint.host + HEALTHZ_PATH
  headers = {}
  if endpoint.token:
    headers['Authorization'] = f'Bearer {endpoint.token}'
  if endpoint.cookie:
    headers['Cookie'] = endpoint.cookie
  # No proxies from the environment: kfp.Client does not use them either.
  opener = urllib.request.build_opener(
    urllib.request.ProxyHandler({}), _NoRedirect
  )
  try:
    with opener.open(
      urllib.request.Request(url, headers=headers), timeout=timeout
    ) as response:
      body = response.read(1 << 16)
  except urllib.error.HTTPError as e:
    if 300 <= e.code < 400:
      raise AuthError(
        f'{url} redirected to {e.headers.get("Location")} (a login page?): '
        'authenticate with KFP_TOKEN or KFP_COOKIE.'
      ) from e
    if e.code in (401, 403):
      raise AuthError(
        f'{url} refused the credentials (HTTP {e.code}): check '
        'KFP_TOKEN or KFP_COOKIE.'
      ) from e
    raise RequestError(
      f'{url} answered HTTP {e.code}: is {endpoint.host} the KFP API endpoint?'
    ) from e
  except (urllib.error.URLError, OSError) as e:
    reason = getattr(e, 'reason', e)
    raise UnreachableError(
      f'Cannot reach KFP at {endpoint.host}: {reason}'
    ) from e
  try:
    json.loads(body)
  except ValueError as e:
    raise RequestError(
      f'{url} did not answer JSON: is {endpoint.host} the KFP API endpoint?'
    ) from e


@contextlib.contextmanager
def _kfp_call(action: str) -> Iterator[None]:
  """Turns the kfp client's exceptions into KfpErrors that say what failed."""
  try:
    yield
  except kfp_server_api.ApiException as e:
    if not e.status:  # The client's way of saying "no connection".
      raise UnreachableError(f'{action}: {e.reason}') from e
    message = _server_message(e.body) or e.reason
    if e.status in (401, 403):
      raise AuthError(
        f'{action}: not allowed (HTTP {e.status}): {message}'
      ) from e
    error = RequestError if 400 <= e.status < 500 else KfpError
    raise error(f'{action} failed (HTTP {e.status}): {message}') from e
  except (urllib3.exceptions.HTTPError, OSError) as e:
    raise UnreachableError(f'{action}: cannot reach KFP: {e}') from e


def _server_message(body: Any) -> str:
  try:
    data = json.loads(body)
  except (TypeError, ValueError):
    data = body or ''
  if isinstance(data, dict):
    data = data.get('message') or data.get('error') or data
  return str(data)[:500]


def _experiment_id(
  client: kfp.Client, name: str, namespace: Optional[str]
) -> str:
  with _kfp_call(f'Getting or creating experiment {name!r}'):
    return client.create_experiment(name, namespace=namespace).experiment_id


def _upload(
  client: kfp.Client,
  package: Package,
  pipeline_name: Optional[str],
  version_name: Optional[str],
  undo: contextlib.ExitStack,
) -> PipelineVersion:
  """Uploads a version; registers how to delete what it created on `undo`."""
  pipeline_name = pipeline_name or package.name
  version_name = version_name or '{:%Y%m%d-%H%M%S}-{}'.format(
    datetime.datetime.now(datetime.timezone.utc), package.digest[:8]
  )
  with _kfp_call(f'Looking up pipeline {pipeline_name!r}'):
    pipeline_id = client.get_pipeline_id(pipeline_name)
  if pipeline_id is None:
    with _kfp_call(f'Creating pipeline {pipeline_name!r}'):
      pipeline_id = client.pipelines.create_pipeline(
        body=kfp_server_api.V2beta1Pipeline(display_name=pipeline_name)
      ).pipeline_id
    undo.callback(
      _roll_back,
      f'pipeline {pipeline_name!r} ({pipeline_id})',
      lambda: client.delete_pipeline(pipeline_id),
    )
  with tempfile.TemporaryDirectory() as tmp:
    # KFP servers before 2.1 take only .yaml, .zip and .tar.gz uploads.
    path = os.path.join(tmp, 'pipeline.yaml')
    package.write(path)
    with _kfp_call(
      f'Uploading version {version_name!r} of pipeline {pipeline_name!r}'
    ):
      version = client.upload_pipeline_version(
        path, version_name, pipeline_id=pipeline_id
      )
  version_id = version.pipeline_version_id
  undo.callback(
    _roll_back,
    f'pipeline version {version_name!r} ({version_id})',
    lambda: client.delete_pipeline_version(pipeline_id, version_id),
  )
  return PipelineVersion(pipeline_id, version_id, version_name)


def _roll_back(what: str, delete: Callable[[], Any]) -> None:
  """Deletes what a failed command created; reports instead of raising."""
  try:
    with _kfp_call(f'Deleting {what}'):
      delete()
  except KfpError as e:
    print(f'warning: {e}; delete it by hand.', file=sys.stderr)
  else:
    print(f'Rolled back: deleted {what}.', file=sys.stderr)
