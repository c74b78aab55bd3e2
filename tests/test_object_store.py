"""The pipeline on an S3 object store (a real moto_server on loopback).

`tfx-transfer run` with data_root and output_dir on `s3://` pushes a model
that, loaded back from S3 by `tfx-transfer predict`, classifies raw image
bytes; MLMD's SQLite stays on local disk; a second run reuses the cache and
its gate holds (exit 3); a missing data root exits 2. The exit codes come
from real processes: tensorflow-io's S3 filesystem makes a process that used
it abort at exit with 134 (tensorflow/io#2039), which ending through
`object_store.exit_process` prevents. A push interrupted after any file
never becomes the served version (S3 has no atomic rename).

Everything that touches s3:// through TensorFlow runs in a subprocess (see
tests/s3_server.py).
"""

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from pipeline import cli

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
DEMO_DATA = os.path.join(PROJECT_ROOT, 'data', 'fashion_demo')
TFX_TRANSFER = os.path.join(os.path.dirname(sys.executable), 'tfx-transfer')


def _run(command, server, cache_dir, timeout=900, **env):
  env = {
    **os.environ,
    **server.env,
    'TF_CPP_MIN_LOG_LEVEL': '2',
    'XDG_CACHE_HOME': str(cache_dir),
    **env,
  }
  return subprocess.run(
    command,
    cwd=PROJECT_ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
    check=False,
  )


def _explain(process: subprocess.CompletedProcess) -> str:
  return (
    f'exit code {process.returncode}\nstdout:\n{process.stdout[-3000:]}'
    f'\nstderr:\n{process.stderr[-3000:]}'
  )


def test_configure_fills_in_what_each_client_reads():
  from pipeline import object_store

  environ = {'AWS_ENDPOINT_URL': 'http://minio:9000', 'AWS_REGION': 'eu-1'}
  object_store.configure(environ)
  assert environ == {
    'AWS_ENDPOINT_URL': 'http://minio:9000',
    'S3_ENDPOINT': 'http://minio:9000',
    'S3_USE_HTTPS': '0',
    'AWS_REGION': 'eu-1',
    'AWS_DEFAULT_REGION': 'eu-1',
  }
  environ = {
    'S3_ENDPOINT': 'minio:9000',
    'S3_USE_HTTPS': '0',
    'AWS_DEFAULT_REGION': 'eu-2',
  }
  object_store.configure(environ)
  assert environ['AWS_ENDPOINT_URL'] == 'http://minio:9000'
  assert environ['AWS_REGION'] == 'eu-2'
  assert object_store.beam_args('gs://b/x', '/local') == []
  assert object_store.beam_args('s3://b/x', environ=environ) == [
    '--beam_plugins=tensorflow_io',
    '--s3_endpoint_url=http://minio:9000',
    '--s3_region_name=eu-2',
  ]


@dataclasses.dataclass
class S3Runs:
  bucket: str
  cache_dir: str
  pushed: subprocess.CompletedProcess
  serving_after_push: list
  held: subprocess.CompletedProcess
  missing: subprocess.CompletedProcess


@pytest.fixture(scope='module')
def s3_runs(s3_server, tmp_path_factory):
  """Two `tfx-transfer run`s on s3:// (pushed, then gate held); a bad one."""
  bucket = s3_server.create_bucket()
  s3_server.upload_dir(DEMO_DATA, f'{bucket}/data')
  cache_dir = tmp_path_factory.mktemp('s3_cache')
  run = [
    TFX_TRANSFER,
    'run',
    '--data-root',
    f'{bucket}/data',
    '--output-dir',
    f'{bucket}/out',
    '--phase1-epochs',
    '2',
    '--phase2-epochs',
    '0',
  ]
  pushed = _run(run + ['--accuracy-threshold', '0.3'], s3_server, cache_dir)
  serving = s3_server.keys(f'{bucket}/out/serving')
  held = _run(run + ['--accuracy-threshold', '0.99'], s3_server, cache_dir)
  missing = _run(
    run[:3] + [f'{bucket}/no_such_folder'] + run[4:], s3_server, cache_dir
  )
  return S3Runs(bucket, str(cache_dir), pushed, serving, held, missing)


def test_run_on_s3_pushes_and_keeps_mlmd_local(s3_runs, s3_server):
  assert s3_runs.pushed.returncode == cli.EXIT_PUSHED, _explain(s3_runs.pushed)
  pushed_to = s3_runs.pushed.stdout.split('Blessed and pushed to ')[1].split()[
    0
  ]
  version = pushed_to[len(f'{s3_runs.bucket}/out/serving/') :]
  assert version.isdigit()
  assert f'{version}/saved_model.pb' in s3_runs.serving_after_push
  assert f'{version}.report/report.json' in s3_runs.serving_after_push
  report = json.loads(s3_server.read(f'{pushed_to}.report/report.json'))
  assert report['pushed_to'] == pushed_to
  assert report['data_root'] == f'{s3_runs.bucket}/data'
  assert report['accuracy']['eval'] >= 0.6
  out = s3_server.keys(f'{s3_runs.bucket}/out')
  assert any(
    key.startswith('reports/') and key.endswith('/report.md') for key in out
  )
  assert any(key.startswith('pipeline_root/Trainer/model/') for key in out)
  # MLMD (SQLite) and the run lock stay on local disk.
  assert not any('metadata.sqlite' in key for key in out)
  local = [
    os.path.join(d, n)
    for d, _, names in os.walk(s3_runs.cache_dir)
    for n in names
  ]
  assert any(path.endswith('metadata.sqlite') for path in local), local


def test_model_pushed_to_s3_classifies_raw_bytes(s3_runs, s3_server, tmp_path):
  assert s3_runs.pushed.returncode == cli.EXIT_PUSHED, _explain(s3_runs.pushed)
  classes = sorted(os.listdir(DEMO_DATA))
  images = [
    os.path.join(
      DEMO_DATA, name, sorted(os.listdir(os.path.join(DEMO_DATA, name)))[i]
    )
    for name in classes
    for i in range(4)
  ]
  process = _run(
    [
      TFX_TRANSFER,
      'predict',
      '--model',
      f'{s3_runs.bucket}/out/serving',
      *images,
    ],
    s3_server,
    tmp_path,
  )
  assert process.returncode == 0, _explain(process)
  lines = [json.loads(line) for line in process.stdout.splitlines()]
  assert [line['image'] for line in lines] == images
  assert all(sorted(line['probabilities']) == classes for line in lines)
  correct = sum(
    line['label'] == os.path.basename(os.path.dirname(image))
    for line, image in zip(lines, images)
  )
  assert correct / len(images) >= 0.6, lines


def test_second_run_on_s3_is_cached_and_its_gate_holds(s3_runs, s3_server):
  assert s3_runs.held.returncode == cli.EXIT_NOT_BLESSED, _explain(s3_runs.held)
  assert 'Not blessed (the gate held)' in s3_runs.held.stdout
  table = s3_runs.held.stdout[s3_runs.held.stdout.index('\ncomponent ') :]
  assert 'FileBasedExampleGen              cached' in table
  assert 'Trainer                          cached' in table
  assert s3_server.keys(f'{s3_runs.bucket}/out/serving') == (
    s3_runs.serving_after_push
  )


def test_missing_s3_data_root_exits_2(s3_runs):
  assert s3_runs.missing.returncode == cli.EXIT_BAD_INPUT, _explain(
    s3_runs.missing
  )
  assert (
    f'data root {s3_runs.bucket}/no_such_folder is not a directory'
    in s3_runs.missing.stderr
  )


def test_unreachable_s3_or_missing_bucket_exits_2_in_seconds(
  s3_server, tmp_path
):
  with socket.socket() as closed:
    closed.bind(('127.0.0.1', 0))
    port = closed.getsockname()[1]
  started = time.time()
  run = [
    TFX_TRANSFER,
    'run',
    '--data-root',
    's3://no-such-bucket/data',
    '--output-dir',
    str(tmp_path / 'out'),
  ]
  unreachable = _run(
    run, s3_server, tmp_path, AWS_ENDPOINT_URL=f'http://127.0.0.1:{port}'
  )
  assert unreachable.returncode == cli.EXIT_BAD_INPUT, _explain(unreachable)
  assert (
    'data root s3://no-such-bucket/data cannot be read: Could not '
    f'connect to the endpoint URL: "http://127.0.0.1:{port}/'
  ) in (unreachable.stderr)
  missing = _run(run, s3_server, tmp_path)
  assert missing.returncode == cli.EXIT_BAD_INPUT, _explain(missing)
  assert (
    'data root s3://no-such-bucket/data cannot be read: bucket '
    'no-such-bucket does not exist'
  ) in missing.stderr
  assert time.time() - started < 60  # Before TensorFlow loads.
  assert not (tmp_path / 'out').exists()


def test_interrupted_push_to_s3_is_never_served(s3_server, s3_bucket, tmp_path):
  process = _run(
    [
      sys.executable,
      os.path.join(TESTS_DIR, 's3_interrupted_push.py'),
      f'{s3_bucket}/serving',
      str(tmp_path),
    ],
    s3_server,
    tmp_path,
  )
  assert process.returncode == 0, _explain(process)
  result = json.loads(process.stdout.splitlines()[-1])
  assert result['files'] >= 3
  assert len(result['interrupted']) == result['files']
  for attempt in result['interrupted']:
    # Cut after any number of files: the first model is still the one served.
    assert attempt['error'] == 'connection lost', attempt
    assert attempt['served'] == result['first'], attempt
  # saved_model.pb, which makes a version loadable, is copied last.
  assert not any(
    path.endswith('/saved_model.pb')
    for attempt in result['interrupted']
    for path in attempt['copied']
  )
  assert result['served'] == result['last'] != result['first']
  assert result['served_value'] == 2.0
  first, last = (
    int(os.path.basename(result[key])) for key in ('first', 'last')
  )
  assert result['versions'] == [str(first), str(last)]
