"""A filesystem Pusher whose pushes appear all at once, and only once.

TFX's Pusher copies file by file into `<base>/<version>/`, so a model server
polling the base directory can see a half-copied version, and a re-run that
re-blesses the same model pushes a duplicate version. This executor copies
into a hidden staging directory next to the destination and renames it into
place (atomic on a local or POSIX filesystem), and skips the copy when the
newest pushed version is the same SavedModel (same `fingerprint.pb`).

Object stores (s3://, gs://) have no atomic rename (a "rename" copies object
by object). There the version directory is written in place with its
`saved_model.pb` copied last, and a version counts as pushed only once its
`saved_model.pb` exists: no SavedModel loader (TF Serving included) can load
a version before then, and `pushed_versions` skips it. A new version's number
is above every numbered directory, complete or not.

Given the run's `statistics` and `schema`, it also records them beside the
version, as `<version>.data/statistics/Split-*/FeatureStats.pb` and
`<version>.data/schema.pbtxt` (staged and renamed in before the version), for
the next run's data validation (components/data_validator.py). Model servers
load only the numeric version directories.
"""

import os
import re
import time
from typing import Any, Dict, List, Optional

from absl import logging
from tfx import types
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.components.base import base_component
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils
from tfx.types import channel
from tfx.types import component_spec
from tfx.types import standard_artifacts
from tfx.types import standard_component_specs
from tfx.utils import io_utils
from tfx.utils import json_utils
from tfx.utils import proto_utils

from pipeline import object_store

STAGING_PREFIX = '.staging-'
_FINGERPRINT = 'fingerprint.pb'
_SAVED_MODEL = 'saved_model.pb'  # Written last on an object store.


def _numbered_dirs(base_directory: str) -> List[str]:
  """Every numbered entry under `base_directory`, complete or not, sorted."""
  if not fileio.exists(base_directory):
    return []
  return sorted(
    (
      v.rstrip('/')
      for v in fileio.listdir(base_directory)
      if v.rstrip('/').isdigit()
    ),
    key=int,
  )


def pushed_versions(base_directory: str) -> List[str]:
  """Finished versions (with their saved_model.pb) under `base_directory`,
  oldest first."""
  return [
    v
    for v in _numbered_dirs(base_directory)
    if fileio.exists(os.path.join(base_directory, v, _SAVED_MODEL))
  ]


def _same_model(model_path: str, version_path: str) -> bool:
  paths = [os.path.join(p, _FINGERPRINT) for p in (model_path, version_path)]
  if not all(fileio.exists(p) for p in paths):
    return False
  return io_utils.read_bytes_file(paths[0]) == io_utils.read_bytes_file(
    paths[1]
  )


DATA_SUFFIX = '.data'  # components/data_validator.py reads it.


def _stage_and_rename(copy, destination: str, staging: str) -> None:
  copy(staging)
  fileio.rename(staging, destination)


def _record_data(data: Dict[str, str], destination: str, staging: str) -> None:
  """Copies `data` (name in `.data/` -> source file or folder) into place."""

  def copy(target):
    fileio.makedirs(target)
    for name, source in data.items():
      if fileio.isdir(source):
        io_utils.copy_dir(source, os.path.join(target, name))
      else:
        fileio.copy(source, os.path.join(target, name))

  _stage_and_rename(copy, destination, staging)


def push_atomically(
  model_path: str, base_directory: str, data: Optional[Dict[str, str]] = None
) -> str:
  """Pushes `model_path` to `base_directory`/<version>, whole or not at all.

  Locally it is staged beside the destination and renamed in; on an object
  store it is copied in place, saved_model.pb last.

  Args:
    model_path: the SavedModel directory.
    base_directory: the push destination.
    data: recorded in `<version>.data/`: name -> file or folder to copy.

  Returns:
    The version directory now serving this model (an existing one if the
    newest version is already this model).
  """
  versions = pushed_versions(base_directory)
  if versions:
    newest = os.path.join(base_directory, versions[-1])
    if _same_model(model_path, newest):
      logging.info('%s already serves this model; not pushing a copy.', newest)
      if data and not fileio.exists(newest + DATA_SUFFIX):
        _record_data(
          data,
          newest + DATA_SUFFIX,
          f'{newest}{DATA_SUFFIX}{STAGING_PREFIX}{os.getpid()}',
        )
      return newest
  version = int(time.time())
  numbered = _numbered_dirs(base_directory)
  if numbered:
    version = max(version, int(numbered[-1]) + 1)
  destination = os.path.join(base_directory, str(version))
  fileio.makedirs(base_directory)
  if data:  # Before the version: a served version always has its data.
    _record_data(
      data,
      destination + DATA_SUFFIX,
      f'{destination}{DATA_SUFFIX}{STAGING_PREFIX}{os.getpid()}',
    )
  if object_store.is_remote(base_directory):
    saved_model = os.path.join(model_path.rstrip('/'), _SAVED_MODEL)
    io_utils.copy_dir(
      model_path,
      destination,
      deny_regex_patterns=[re.escape(saved_model) + '$'],
    )
    fileio.copy(saved_model, os.path.join(destination, _SAVED_MODEL))
    logging.info('Model pushed to %s (saved_model.pb last).', destination)
    return destination
  staging = os.path.join(
    base_directory, f'{STAGING_PREFIX}{version}-{os.getpid()}'
  )
  _stage_and_rename(
    lambda target: io_utils.copy_dir(model_path, target), destination, staging
  )
  logging.info('Model pushed atomically to %s.', destination)
  return destination


class AtomicPusherExecutor(pusher_executor.Executor):
  """Pusher executor for `PushDestination.filesystem` with atomic pushes."""

  def Do(
    self,
    input_dict: Dict[str, List[types.Artifact]],
    output_dict: Dict[str, List[types.Artifact]],
    exec_properties: Dict[str, Any],
  ) -> Optional[Any]:
    self._log_startup(input_dict, output_dict, exec_properties)
    model_push = artifact_utils.get_single_instance(
      output_dict[standard_component_specs.PUSHED_MODEL_KEY]
    )
    if not self.CheckBlessing(input_dict):
      self._MarkNotPushed(model_push)
      return None
    destination = pusher_pb2.PushDestination()
    proto_utils.json_to_proto(
      exec_properties[standard_component_specs.PUSH_DESTINATION_KEY],
      destination,
    )
    if destination.WhichOneof('destination') != 'filesystem':
      raise NotImplementedError(
        'AtomicPusherExecutor pushes to a filesystem destination only.'
      )
    model_path = self.GetModelPath(input_dict)
    data = {}
    if input_dict.get(STATISTICS_KEY):
      data['statistics'] = artifact_utils.get_single_uri(
        input_dict[STATISTICS_KEY]
      )
    if input_dict.get(SCHEMA_KEY):
      data[SCHEMA_FILE] = os.path.join(
        artifact_utils.get_single_uri(input_dict[SCHEMA_KEY]), SCHEMA_FILE
      )
    serving_path = push_atomically(
      model_path, destination.filesystem.base_directory, data
    )
    io_utils.copy_dir(model_path, model_push.uri)
    self._MarkPushed(
      model_push,
      pushed_destination=serving_path,
      pushed_version=os.path.basename(serving_path),
    )
    return None


STATISTICS_KEY, SCHEMA_KEY = 'statistics', 'schema'
SCHEMA_FILE = 'schema.pbtxt'  # In a Schema artifact.


class AtomicPusherSpec(standard_component_specs.PusherSpec):
  """PusherSpec plus the run's statistics and schema, recorded if given."""

  INPUTS = {
    **standard_component_specs.PusherSpec.INPUTS,
    STATISTICS_KEY: component_spec.ChannelParameter(
      type=standard_artifacts.ExampleStatistics, optional=True
    ),
    SCHEMA_KEY: component_spec.ChannelParameter(
      type=standard_artifacts.Schema, optional=True
    ),
  }


class AtomicPusher(base_component.BaseComponent):
  """TFX's Pusher with AtomicPusherExecutor (filesystem destinations).

  Args:
    model: the model to push.
    model_blessing: the Evaluator's blessing (checked again).
    push_destination: a filesystem destination.
    statistics: the run's ExampleStatistics, recorded beside the version.
    schema: the run's Schema, recorded beside the version.
  """

  SPEC_CLASS = AtomicPusherSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(AtomicPusherExecutor)

  def __init__(
    self,
    model: types.BaseChannel,
    model_blessing: types.BaseChannel,
    push_destination: pusher_pb2.PushDestination,
    statistics: Optional[types.BaseChannel] = None,
    schema: Optional[types.BaseChannel] = None,
  ):
    super().__init__(
      spec=AtomicPusherSpec(
        model=model,
        model_blessing=model_blessing,
        push_destination=push_destination,
        custom_config=json_utils.dumps(None),
        statistics=statistics,
        schema=schema,
        pushed_model=channel.Channel(type=standard_artifacts.PushedModel),
      )
    )
