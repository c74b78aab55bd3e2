"""Object stores (s3:// on AWS or MinIO, gs://) for TFX's file IO and Beam's.

TensorFlow 2.16 has no S3 filesystem of its own: tensorflow-io 0.37.1 (its
last release, built for TF >=2.16,<2.17) registers `s3://` in `tf.io.gfile`,
and so in TFX's `fileio`, when it is imported (`register`). Beam reads and
writes `s3://` through apache-beam[aws] (boto3). `gs://` needs neither.

Both clients read the usual environment; `configure` fills in what each one
reads from what the other one does:

  AWS_ENDPOINT_URL       an S3-compatible server (MinIO), e.g. http://minio:9000;
                         unset for AWS. tensorflow-io reads S3_ENDPOINT (and
                         S3_USE_HTTPS); either name may be given.
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY   the credentials.
  AWS_REGION             the bucket's region (boto3 reads AWS_DEFAULT_REGION).

The trap (tensorflow/io#2039, measured here with TF 2.16.2): once the S3
filesystem has been used, the process aborts at exit with `pure virtual method
called` and exit code 134, after the work succeeded. `exit_process` ends a
process with its real status instead; the CLI and the Kubeflow entrypoint end
through it.
"""

import logging
import os
import sys
from typing import List, MutableMapping, NoReturn, Optional

S3_SCHEME = 's3://'


def is_remote(path: str) -> bool:
  """Whether `path` is a URI (s3://, gs://...) rather than a local path."""
  return '://' in path


def configure(environ: MutableMapping[str, str] = os.environ) -> None:
  """Sets the endpoint and region variables each client reads from the other.

  AWS_ENDPOINT_URL <-> S3_ENDPOINT (+ S3_USE_HTTPS=0 for http://) and
  AWS_REGION <-> AWS_DEFAULT_REGION; variables already set are kept.
  """
  endpoint = environ.get('AWS_ENDPOINT_URL')
  if endpoint and 'S3_ENDPOINT' not in environ:
    environ['S3_ENDPOINT'] = endpoint
    if endpoint.startswith('http://'):
      environ.setdefault('S3_USE_HTTPS', '0')
  elif environ.get('S3_ENDPOINT') and not endpoint:
    endpoint = environ['S3_ENDPOINT']
    if '://' not in endpoint:  # tensorflow-io's host:port form.
      scheme = 'http' if environ.get('S3_USE_HTTPS') == '0' else 'https'
      endpoint = f'{scheme}://{endpoint}'
    environ['AWS_ENDPOINT_URL'] = endpoint
  region = environ.get('AWS_REGION') or environ.get('AWS_DEFAULT_REGION')
  if region:
    environ.setdefault('AWS_REGION', region)
    environ.setdefault('AWS_DEFAULT_REGION', region)


def uses_s3(*paths: str) -> bool:
  return any(p.startswith(S3_SCHEME) for p in paths)


def register(*paths: str) -> None:
  """Makes `s3://` readable and writable in this process if a path needs it.

  Configures the environment and imports tensorflow-io, which registers its
  S3 filesystem with tf.io.gfile. Without an s3:// path it does nothing, so
  local and gs:// runs neither load tensorflow-io nor meet its exit trap.
  """
  if uses_s3(*paths):
    configure()
    import tensorflow_io  # noqa: F401 (registers the s3 filesystem)


def s3_problem(uri: str, directory: bool) -> Optional[str]:
  """Why `uri` is not an S3 folder (or file) this process can read, or None.

  Asks the server through boto3, with short timeouts and two attempts, so
  that a wrong endpoint, bucket or credentials is reported in seconds,
  before TensorFlow loads.
  """
  import boto3
  from botocore import config as botocore_config
  from botocore import exceptions

  configure()
  bucket, _, key = uri[len(S3_SCHEME) :].partition('/')
  if directory and not key.strip('/'):
    return f'is a bucket, not a folder in one: use {S3_SCHEME}{bucket}/<dir>'
  client = boto3.client(
    's3',
    config=botocore_config.Config(
      connect_timeout=5, read_timeout=20, retries={'max_attempts': 2}
    ),
  )
  try:
    if not directory:
      client.head_object(Bucket=bucket, Key=key)
      return None
    prefix = key.rstrip('/') + '/'
    listing = client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    return None if listing.get('KeyCount') else 'is not a directory'
  except exceptions.ClientError as e:
    error = e.response.get('Error', {})
    if error.get('Code') in ('404', 'NoSuchKey'):
      return 'is not a file'
    if error.get('Code') == 'NoSuchBucket':
      return f'cannot be read: bucket {bucket} does not exist'
    return f'cannot be read: {error.get("Code")} {error.get("Message", "")}'
  except exceptions.BotoCoreError as e:  # Endpoint, credentials.
    return f'cannot be read: {e}'


def beam_args(
  *paths: str, environ: MutableMapping[str, str] = os.environ
) -> List[str]:
  """Beam pipeline flags for `paths`: S3 settings and worker registration.

  The endpoint and region come from the environment (after `configure`);
  the credentials stay there (boto3 reads them; flags would be logged).
  `--beam_plugins` makes Beam workers in other processes import
  tensorflow-io, so that tf.io.gfile reads s3:// there too. Empty without an
  s3:// path.
  """
  if not uses_s3(*paths):
    return []
  flags = {
    's3_endpoint_url': environ.get('AWS_ENDPOINT_URL', ''),
    's3_region_name': environ.get('AWS_REGION', ''),
  }
  return ['--beam_plugins=tensorflow_io'] + [
    f'--{name}={value}' for name, value in flags.items() if value
  ]


def exit_process(status: int) -> NoReturn:
  """Flushes stdio and logging, then ends the process with `status`.

  `os._exit` skips the interpreter's teardown, where tensorflow-io's S3
  filesystem aborts (exit 134) after a successful run (tensorflow/io#2039;
  fixed by tensorflow/io PR #2120, in no release).
  """
  logging.shutdown()
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):  # Closed or broken pipe: nothing to flush.
      pass
  os._exit(status)
