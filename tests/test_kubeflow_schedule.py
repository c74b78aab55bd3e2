"""`python -m kubeflow upload | schedule | run-once` against a fake KFP.

The fake serves, on 127.0.0.1 only, the KFP v2beta1 REST endpoints that the
kfp 2.5 client calls for these commands, records every request, and can fail
any of them. The package is the golden compiled pipeline. Checked: the
request bodies (cron, pinned version id, parameters, the pipeline root of
every run), the rollback when the upload or the recurring run fails,
authentication and unreachable endpoints, and bad pipeline roots, refused
before any request. The golden root (gs://example-bucket/...) cannot be
reached from here: the tests that get as far as KFP pass --skip-root-check.
"""

import argparse
import email.parser
import email.policy
import http.server
import json
import os
import socket
import threading
from typing import Dict, List, NamedTuple, Optional, Tuple
import urllib.parse

import pytest
from tfx.utils import proto_utils

from kubeflow import cli
from pipeline import pipeline as pipeline_lib

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(
  PROJECT_ROOT, 'tests', 'golden', 'kubeflow_pipeline.json'
)
API = '/apis/v2beta1'
CRON = '0 0 3 * * *'


class Request(NamedTuple):
  method: str
  path: str
  query: Dict[str, str]
  headers: Dict[str, str]  # Lower-case names.
  body: object  # JSON, or {field: (filename, bytes)} for multipart uploads.


class FakeKfp:
  """The KFP v2beta1 endpoints kfp.Client uses here, on 127.0.0.1.

  Attributes:
    requests: Every request received, in order.
    fail: 'METHOD /path' -> (HTTP status, message) to answer instead.
    token: If set, requests without `Authorization: Bearer <token>` get 401.
    login_redirect: Redirect every request to a login page (as Dex does).
    pipelines: pipeline id -> name, the pipelines that exist.
  """

  MAX_REQUESTS = 200
  MAX_BODY = 10 << 20

  def __init__(self):
    self.requests: List[Request] = []
    self.fail: Dict[str, Tuple[int, str]] = {}
    self.token: Optional[str] = None
    self.login_redirect = False
    self.pipelines: Dict[str, str] = {}
    self.experiments: Dict[str, str] = {}
    self._lock = threading.Lock()
    fake = self

    class Handler(http.server.BaseHTTPRequestHandler):
      timeout = 10

      def log_message(self, *args):  # Quiet.
        pass

      def do_GET(self):
        fake.handle(self)

      do_POST = do_DELETE = do_GET

    self.server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    self.server.daemon_threads = True
    self.host = 'http://127.0.0.1:%d' % self.server.server_address[1]
    self._thread = threading.Thread(
      target=self.server.serve_forever,
      kwargs={'poll_interval': 0.05},
      daemon=True,
    )
    self._thread.start()

  def stop(self):
    self.server.shutdown()
    self.server.server_close()
    self._thread.join(timeout=5)

  def calls(self, method: str, path: str) -> List[Request]:
    return [r for r in self.requests if (r.method, r.path) == (method, path)]

  def handle(self, handler: http.server.BaseHTTPRequestHandler) -> None:
    url = urllib.parse.urlsplit(handler.path)
    length = int(handler.headers.get('Content-Length') or 0)
    if length > self.MAX_BODY or len(self.requests) >= self.MAX_REQUESTS:
      return self._reply(handler, 503, {'error': 'fake KFP limit reached'})
    raw = handler.rfile.read(length)
    request = Request(
      handler.command,
      url.path,
      dict(urllib.parse.parse_qsl(url.query)),
      {k.lower(): v for k, v in handler.headers.items()},
      self._parse_body(handler.headers, raw),
    )
    with self._lock:
      self.requests.append(request)
      if self.login_redirect:
        return self._reply(
          handler, 302, None, {'Location': '/dex/auth?client_id=kubeflow'}
        )
      if self.token and (
        request.headers.get('authorization') != f'Bearer {self.token}'
      ):
        return self._reply(handler, 401, {'error': 'Unauthorized'})
      key = f'{request.method} {request.path}'
      if key in self.fail:
        status, message = self.fail[key]
        return self._reply(
          handler, status, {'error': message, 'message': message, 'code': 13}
        )
      status, body = self._route(request)
    self._reply(handler, status, body)

  def _route(self, request: Request) -> Tuple[int, object]:
    """The KFP answer, shaped as kfp_server_api's models expect."""
    method, path, body = request.method, request.path, request.body
    if (method, path) == ('GET', f'{API}/healthz'):
      return 200, {'multi_user': False}
    if (method, path) == ('GET', f'{API}/pipelines'):
      name = self._filtered_name(request)
      return 200, {
        'pipelines': [
          {'pipeline_id': i, 'display_name': n}
          for i, n in self.pipelines.items()
          if n == name
        ]
      }
    if (method, path) == ('POST', f'{API}/pipelines'):
      pipeline_id = f'pipeline-{len(self.pipelines) + 1}'
      self.pipelines[pipeline_id] = body['display_name']
      return 200, {'pipeline_id': pipeline_id, **body}
    if (method, path) == ('POST', f'{API}/pipelines/upload_version'):
      return 200, {
        'pipeline_id': request.query['pipelineid'],
        'pipeline_version_id': 'version-1',
        'display_name': request.query['name'],
      }
    if (method, path) == ('GET', f'{API}/experiments'):
      name = self._filtered_name(request)
      return 200, {
        'experiments': [
          {'experiment_id': i, 'display_name': n}
          for i, n in self.experiments.items()
          if n == name
        ]
      }
    if (method, path) == ('POST', f'{API}/experiments'):
      experiment_id = f'experiment-{len(self.experiments) + 1}'
      self.experiments[experiment_id] = body['display_name']
      return 200, {'experiment_id': experiment_id, **body}
    if (method, path) == ('POST', f'{API}/recurringruns'):
      return 200, {'recurring_run_id': 'recurring-run-1', **body}
    if (method, path) == ('POST', f'{API}/runs'):
      return 200, {'run_id': 'run-1', **body}
    if method == 'DELETE' and path.startswith(f'{API}/pipelines/'):
      return 200, {}
    return 404, {'error': f'not found: {method} {path}'}

  @staticmethod
  def _filtered_name(request: Request) -> str:
    (predicate,) = json.loads(request.query['filter'])['predicates']
    assert predicate['key'] == 'display_name'
    return predicate['stringValue']

  @staticmethod
  def _parse_body(headers, raw: bytes) -> object:
    content_type = headers.get('Content-Type', '')
    if content_type.startswith('multipart/form-data'):
      message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b'Content-Type: ' + content_type.encode() + b'\r\n\r\n' + raw
      )
      return {
        part.get_param('name', header='content-disposition'): (
          part.get_filename(),
          part.get_payload(decode=True),
        )
        for part in message.iter_parts()
      }
    return json.loads(raw) if raw else None

  @staticmethod
  def _reply(handler, status: int, body, headers=None) -> None:
    data = json.dumps(body).encode() if body is not None else b''
    handler.send_response(status)
    for name, value in (headers or {}).items():
      handler.send_header(name, value)
    handler.send_header('Content-Type', 'application/json')
    handler.send_header('Content-Length', str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


@pytest.fixture
def kfp_server(monkeypatch):
  for name in ('KFP_TOKEN', 'KFP_COOKIE', 'KF_PIPELINES_ENDPOINT'):
    monkeypatch.delenv(name, raising=False)
  server = FakeKfp()
  yield server
  server.stop()


def _package() -> dict:
  with open(PACKAGE) as f:
    return json.load(f)


def _defaults() -> Dict[str, str]:
  return {
    name: parameter['defaultValue']
    for name, parameter in _package()['root']['inputDefinitions'][
      'parameters'
    ].items()
  }


ROOT = 'gs://example-bucket/tfx-transfer/pipeline_root'


def _run(server: FakeKfp, *args: str, check_root: bool = False) -> int:
  command, *rest = args
  if command in ('schedule', 'run-once') and not check_root:
    rest.append('--skip-root-check')
  return cli.main([command, '--host', server.host, '--package', PACKAGE, *rest])


def _created(server: FakeKfp) -> List[str]:
  """What the commands created or deleted, in order."""
  return [
    f'{r.method} {r.path}'
    for r in server.requests
    if r.method in ('POST', 'DELETE')
  ]


def test_schedule_uploads_then_creates_a_recurring_run(kfp_server, capsys):
  assert (
    _run(
      kfp_server,
      'schedule',
      '--cron',
      CRON,
      '--max-concurrency',
      '2',
      '--data-root',
      'gs://bucket/new-images',
      '--phase1-epochs',
      '7',
      '--experiment',
      'nightly',
      '--version-name',
      'v1',
    )
    == 0
  )
  assert _created(kfp_server) == [
    f'POST {API}/experiments',
    f'POST {API}/pipelines',
    f'POST {API}/pipelines/upload_version',
    f'POST {API}/recurringruns',
  ]
  assert kfp_server.requests[0].path == f'{API}/healthz'

  (pipeline,) = kfp_server.calls('POST', f'{API}/pipelines')
  assert pipeline.body['display_name'] == 'transfer-learning'
  (upload,) = kfp_server.calls('POST', f'{API}/pipelines/upload_version')
  assert upload.query == {'name': 'v1', 'pipelineid': 'pipeline-1'}
  filename, content = upload.body['uploadfile']
  assert filename.endswith('.yaml')  # What KFP servers before 2.1 accept.
  assert json.loads(content) == _package()

  (recurring_run,) = kfp_server.calls('POST', f'{API}/recurringruns')
  body = recurring_run.body
  assert body['trigger'] == {'cron_schedule': {'cron': CRON}}
  assert int(body['max_concurrency']) == 2
  assert body['no_catchup'] is True and body['mode'] == 'ENABLE'
  assert body['experiment_id'] == 'experiment-1'
  assert body['pipeline_version_reference'] == {
    'pipeline_id': 'pipeline-1',
    'pipeline_version_id': 'version-1',
  }
  # The compiled root: KFP would not read it from the spec.
  assert body['runtime_config']['pipeline_root'] == ROOT
  # What was given, and the compiled defaults for the rest.
  assert body['runtime_config']['parameters'] == {
    **_defaults(),
    'data_root': 'gs://bucket/new-images',
    'trainer_config': json.dumps({'phase1_epochs': 7}),
  }
  assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {
    'pipeline_id': 'pipeline-1',
    'version_id': 'version-1',
    'version_name': 'v1',
    'recurring_run_id': 'recurring-run-1',
  }


def test_schedule_adds_a_version_to_an_existing_pipeline(kfp_server):
  kfp_server.pipelines['pipeline-7'] = 'transfer-learning'
  assert _run(kfp_server, 'schedule', '--cron', CRON) == 0
  assert _created(kfp_server) == [
    f'POST {API}/experiments',
    f'POST {API}/pipelines/upload_version',
    f'POST {API}/recurringruns',
  ]
  (upload,) = kfp_server.calls('POST', f'{API}/pipelines/upload_version')
  assert upload.query['pipelineid'] == 'pipeline-7'
  (recurring_run,) = kfp_server.calls('POST', f'{API}/recurringruns')
  assert (
    recurring_run.body['pipeline_version_reference']['pipeline_id']
    == 'pipeline-7'
  )
  assert recurring_run.body['runtime_config'] == {
    'parameters': _defaults(),
    'pipeline_root': ROOT,
  }


def test_failed_upload_creates_no_recurring_run(kfp_server, capsys):
  kfp_server.fail[f'POST {API}/pipelines/upload_version'] = (
    500,
    'storage unavailable',
  )
  assert _run(kfp_server, 'schedule', '--cron', CRON) == cli.EXIT_INTERNAL
  # The pipeline this command created is deleted again.
  assert _created(kfp_server) == [
    f'POST {API}/experiments',
    f'POST {API}/pipelines',
    f'POST {API}/pipelines/upload_version',
    f'DELETE {API}/pipelines/pipeline-1',
  ]
  err = capsys.readouterr().err
  assert 'HTTP 500' in err and 'storage unavailable' in err


def test_rejected_recurring_run_leaves_no_version_behind(kfp_server, capsys):
  kfp_server.pipelines['pipeline-7'] = 'transfer-learning'
  kfp_server.fail[f'POST {API}/recurringruns'] = (
    400,
    'invalid pipeline spec: unknown executor',
  )
  assert _run(kfp_server, 'schedule', '--cron', CRON) == cli.EXIT_BAD_INPUT
  assert _created(kfp_server)[-2:] == [
    f'POST {API}/recurringruns',
    f'DELETE {API}/pipelines/pipeline-7/versions/version-1',
  ]
  err = capsys.readouterr().err
  assert 'HTTP 400' in err and 'invalid pipeline spec' in err


def test_run_once(kfp_server):
  assert (
    _run(
      kfp_server,
      'run-once',
      '--accuracy-threshold',
      '0.8',
      '--max-accuracy-drop',
      '0.02',
      '--name',
      'try-1',
    )
    == 0
  )
  (run,) = kfp_server.calls('POST', f'{API}/runs')
  assert run.body['display_name'] == 'try-1'
  assert run.body['pipeline_version_reference'] == {
    'pipeline_id': 'pipeline-1',
    'pipeline_version_id': 'version-1',
  }
  assert run.body['runtime_config']['pipeline_root'] == ROOT
  gate = json.loads(run.body['runtime_config']['parameters']['eval_config'])
  assert gate == proto_utils.proto_to_dict(pipeline_lib.eval_config(0.8, 0.02))
  assert not kfp_server.calls('POST', f'{API}/recurringruns')


def test_upload(kfp_server, capsys):
  assert _run(kfp_server, 'upload', '--pipeline-name', 'other') == 0
  assert _created(kfp_server) == [
    f'POST {API}/pipelines',
    f'POST {API}/pipelines/upload_version',
  ]
  result = json.loads(capsys.readouterr().out.splitlines()[-1])
  assert result['version_id'] == 'version-1'


def test_token_is_sent(kfp_server, monkeypatch):
  kfp_server.token = 's3cret'
  monkeypatch.setenv('KFP_TOKEN', 's3cret')
  assert _run(kfp_server, 'upload') == 0
  assert all(
    r.headers['authorization'] == 'Bearer s3cret' for r in kfp_server.requests
  )


@pytest.mark.parametrize('failure', ['token', 'login_redirect', 'forbidden'])
def test_auth_failure_is_clear_and_creates_nothing(kfp_server, capsys, failure):
  if failure == 'token':
    kfp_server.token = 's3cret'
  elif failure == 'login_redirect':
    kfp_server.login_redirect = True
  else:
    kfp_server.fail[f'GET {API}/healthz'] = (403, 'RBAC: access denied')
  assert _run(kfp_server, 'schedule', '--cron', CRON) == cli.EXIT_BAD_INPUT
  assert [r.path for r in kfp_server.requests] == [f'{API}/healthz']
  err = capsys.readouterr().err
  assert 'KFP_TOKEN' in err and ('refused' in err or 'redirected' in err)


def test_unreachable_endpoint(capsys):
  port = _closed_port()
  assert (
    cli.main(
      ['upload', '--host', f'http://127.0.0.1:{port}', '--package', PACKAGE]
    )
    == cli.EXIT_BAD_INPUT
  )
  assert 'Cannot reach KFP at' in capsys.readouterr().err


@pytest.mark.parametrize(
  'args, message',
  [
    (['schedule', '--cron', '0 3 * * *'], '6 fields'),
    (['schedule', '--cron', CRON, '--max-concurrency', '11'], '1 to 10'),
    (['run-once', '--accuracy-threshold', '0.8'], 'Give both'),
    (['upload', '--package', '/no/such/pipeline.json'], 'Cannot read'),
  ],
)
def test_bad_input_sends_nothing(kfp_server, capsys, args, message):
  assert _run(kfp_server, *args) == cli.EXIT_BAD_INPUT
  assert message in capsys.readouterr().err
  assert not kfp_server.requests


def test_subcommands_mount_into_another_cli(kfp_server):
  parser = argparse.ArgumentParser(prog='tfx-transfer')
  commands = parser.add_subparsers(dest='command', required=True)
  commands.add_parser('run')
  cli.add_subcommands(commands)
  args = parser.parse_args(
    ['upload', '--host', kfp_server.host, '--package', PACKAGE]
  )
  assert cli.dispatch(args) == cli.EXIT_OK
  assert kfp_server.calls('POST', f'{API}/pipelines/upload_version')


def test_the_pipeline_root_can_be_overridden(kfp_server):
  assert (
    _run(kfp_server, 'run-once', '--pipeline-root', 's3://other-bucket/root')
    == 0
  )
  (run,) = kfp_server.calls('POST', f'{API}/runs')
  assert run.body['runtime_config']['pipeline_root'] == 's3://other-bucket/root'


def _closed_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]  # Nothing listens there once closed.


@pytest.mark.parametrize('command', ['schedule', 'run-once'])
@pytest.mark.parametrize(
  'root, message',
  [
    ('/mnt/tfx/pipeline_root', 'a mounted volume cannot hold'),
    ('minio://mlpipeline/v2/artifacts', 'TFX cannot write minio://'),
    ('gs://', 'must be gs://BUCKET'),
    ('s3://bucket/root', 'cannot reach http://127.0.0.1:'),
  ],
)
def test_bad_pipeline_roots_send_nothing(
  kfp_server, monkeypatch, capsys, command, root, message
):
  monkeypatch.setenv('AWS_ENDPOINT_URL', f'http://127.0.0.1:{_closed_port()}')
  monkeypatch.delenv('AWS_ENDPOINT_URL_S3', raising=False)
  args = [command, '--pipeline-root', root]
  if command == 'schedule':
    args += ['--cron', CRON]
  assert _run(kfp_server, *args, check_root=True) == cli.EXIT_BAD_INPUT
  assert message in capsys.readouterr().err
  assert not kfp_server.requests


def test_a_package_without_a_root_sends_nothing(kfp_server, tmp_path, capsys):
  package = _package()
  del package['defaultPipelineRoot']
  path = tmp_path / 'pipeline.json'
  path.write_text(json.dumps(package))
  assert (
    cli.main(['run-once', '--host', kfp_server.host, '--package', str(path)])
    == cli.EXIT_BAD_INPUT
  )
  assert 'No pipeline root' in capsys.readouterr().err
  assert not kfp_server.requests
