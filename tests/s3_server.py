"""A real S3 server on loopback for tests: moto's `moto_server` (moto[server]).

It runs as its own process: a moto server started as a thread inside the
TensorFlow process deadlocked `TFRecordWriter` (measured with TF 2.16.2 and
tensorflow-io 0.37.1). Code that touches s3:// through tensorflow-io must run
in a subprocess too, ending through `object_store.exit_process`: the pytest
process would otherwise abort at exit with code 134 (tensorflow/io#2039).

`S3Server.env` is the environment a client needs (docs/kubeflow.md, object
stores): AWS_ENDPOINT_URL, the credentials and AWS_REGION.
"""

import os
import re
import subprocess
import sys
import time
import uuid

import boto3

_RUNNING = re.compile(r'Running on (http://127\.0\.0\.1:\d+)')
REGION = 'us-east-1'


class S3Server:
  """A `moto_server` process on 127.0.0.1, on a free port."""

  def __init__(self, log_path: str):
    self._log = open(log_path, 'w+b')
    self._process = subprocess.Popen(
      [
        os.path.join(os.path.dirname(sys.executable), 'moto_server'),
        '-H',
        '127.0.0.1',
        '-p',
        '0',
      ],
      stdout=self._log,
      stderr=subprocess.STDOUT,
    )
    self.endpoint = self._wait_for_endpoint(log_path)
    self.env = {
      'AWS_ENDPOINT_URL': self.endpoint,
      'AWS_ACCESS_KEY_ID': 'testing',
      'AWS_SECRET_ACCESS_KEY': 'testing',
      'AWS_REGION': REGION,
    }
    self.client = boto3.client(
      's3',
      endpoint_url=self.endpoint,
      region_name=REGION,
      aws_access_key_id='testing',
      aws_secret_access_key='testing',
    )

  def _wait_for_endpoint(self, log_path: str, timeout: float = 60) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
      with open(log_path, encoding='utf-8', errors='replace') as f:
        match = _RUNNING.search(f.read())
      if match:
        return match.group(1)
      if self._process.poll() is not None:
        break
      time.sleep(0.2)
    self.stop()
    with open(log_path, encoding='utf-8', errors='replace') as f:
      raise RuntimeError(f'moto_server did not start:\n{f.read()}')

  def create_bucket(self, name: str = '') -> str:
    """Creates a bucket (a fresh name by default); returns `s3://<name>`."""
    name = name or f'test-{uuid.uuid4().hex[:12]}'
    self.client.create_bucket(Bucket=name)
    return f's3://{name}'

  def upload_dir(self, local_dir: str, uri: str) -> None:
    """Uploads every file under `local_dir` to the prefix `uri`."""
    bucket, _, prefix = uri[len('s3://') :].partition('/')
    for directory, _, names in os.walk(local_dir):
      for name in names:
        path = os.path.join(directory, name)
        key = os.path.relpath(path, local_dir).replace(os.sep, '/')
        self.client.upload_file(path, bucket, f'{prefix}/{key}'.lstrip('/'))

  def keys(self, uri: str) -> list:
    """The object keys under `uri`, relative to it, sorted."""
    bucket, _, prefix = uri[len('s3://') :].partition('/')
    prefix = prefix.rstrip('/') + '/' if prefix else ''
    keys = []
    for page in self.client.get_paginator('list_objects_v2').paginate(
      Bucket=bucket, Prefix=prefix
    ):
      keys += [item['Key'][len(prefix) :] for item in page.get('Contents', [])]
    return sorted(keys)

  def read(self, uri: str) -> bytes:
    bucket, _, key = uri[len('s3://') :].partition('/')
    return self.client.get_object(Bucket=bucket, Key=key)['Body'].read()

  def stop(self) -> None:
    if self._process.poll() is None:
      self._process.terminate()
      try:
        self._process.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self._process.kill()
        self._process.wait()
    self._log.close()
