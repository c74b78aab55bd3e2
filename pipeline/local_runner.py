"""Runs the pipeline with LocalDagRunner (Beam DirectRunner, MLMD on sqlite)
and reads back from MLMD what this run did.

One run at a time per output directory: a run holds an exclusive flock on
`<state_dir>/.run.lock` (state_dir is output_dir, or a local folder for an
object store: see PipelineConfig.state_dir) from start to end, and a second
run on the same directory fails at once with OutputDirBusyError naming the
holder. The kernel
drops the lock when its process dies (even by SIGKILL), so a killed run never
blocks the next one. (On an object store the lock excludes runs on this
machine only.)
"""

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import socket
import time
from typing import Callable, Dict, Iterator, Optional

from absl import logging as absl_logging
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx
from tfx.dsl.io import fileio

from components import data_validator
from modules import trainer as trainer_module
from pipeline import object_store
from pipeline import settings as settings_lib
from pipeline import pipeline as pipeline_lib

_STATES = {
  metadata_store_pb2.Execution.COMPLETE: 'ran',
  metadata_store_pb2.Execution.CACHED: 'cached',
  metadata_store_pb2.Execution.FAILED: 'failed',
  metadata_store_pb2.Execution.CANCELED: 'skipped',
}
LOCK_FILE = '.run.lock'
# What LocalDagRunner logs (absl, INFO) around each component it launches.
_NODE_EVENTS = {
  'Component %s is running.': 'running',
  'Component %s is finished.': 'finished',
}


class OutputDirBusyError(RuntimeError):
  """Another run holds the output directory (its MLMD store and serving/)."""


@contextlib.contextmanager
def exclusive_output_dir(
  output_dir: str, state_dir: Optional[str] = None
) -> Iterator[None]:
  """Holds `output_dir`'s run lock (in `state_dir`, default `output_dir`).

  Raises:
    OutputDirBusyError: another run holds it.
  """
  fd = os.open(
    os.path.join(state_dir or output_dir, LOCK_FILE),
    os.O_RDWR | os.O_CREAT,
    0o644,
  )
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 512, 0).decode('utf-8', 'replace').strip()
      raise OutputDirBusyError(
        f'Output directory {output_dir} is in use by another run '
        f'({holder or "holder unknown"}); nothing was run. Wait for it to '
        'finish or use another output directory.'
      ) from None
    os.ftruncate(fd, 0)
    os.pwrite(
      fd,
      (
        f'pid {os.getpid()} on {socket.gethostname()}, started '
        f'{time.strftime("%Y-%m-%d %H:%M:%S %Z")}'
      ).encode(),
      0,
    )
    yield
  finally:
    os.close(fd)  # Releases the lock.


@dataclasses.dataclass
class RunResult:
  """What one pipeline run did, read from MLMD.

  Attributes:
    components: node id -> 'ran' | 'cached' | 'failed' | 'skipped', in the
      order the nodes ran.
    training: the Trainer's training_summary.json (per-phase accuracies).
    blessed: whether the Evaluator blessed this run's model.
    evaluation: the Evaluator's output directory (tfma.load_eval_result).
    pushed_to: the versioned serving directory, if the model was pushed.
    seconds: wall time of the run.
    run_id: the MLMD pipeline_run context name (LocalDagRunner: a timestamp).
    component_seconds: node id -> seconds its execution took (MLMD create to
      last update; near 0 when cached).
    model: the Trainer's Model artifact directory (the SavedModel is in its
      `Format-Serving/`), also when it was not blessed.
    examples: the ExampleGen output directory (`Split-train/`, `Split-eval/`).
    statistics: StatisticsGen's output directory.
    schema: SchemaGen's (inferred) schema directory.
    data_validation: what the ExampleValidator found
      (components/data_validator.py `validate`), None if it did not finish.
  """

  components: Dict[str, str]
  training: dict
  blessed: bool
  evaluation: Optional[str]
  pushed_to: Optional[str]
  seconds: float
  run_id: str = ''
  component_seconds: Dict[str, float] = dataclasses.field(default_factory=dict)
  model: Optional[str] = None
  examples: Optional[str] = None
  statistics: Optional[str] = None
  schema: Optional[str] = None
  data_validation: Optional[dict] = None


class _NodeProgress(logging.Filter):
  """Reports each component's start and finish as LocalDagRunner logs them.

  Installed on the absl logger with absl's verbosity raised to INFO; lets
  through only the records the logger would have emitted before.
  """

  def __init__(self, report: Callable[[str], None], level: int):
    super().__init__()
    self._report = report
    self._level = level
    self._started = {}

  def filter(self, record: logging.LogRecord) -> bool:
    event = _NODE_EVENTS.get(record.msg)
    if event and record.args:
      node = record.args[0]
      now = time.time()
      if event == 'running':
        self._started[node] = now
        self._report(f'[{time.strftime("%H:%M:%S")}] {node} running')
      else:
        took = now - self._started.get(node, now)
        self._report(
          f'[{time.strftime("%H:%M:%S")}] {node} finished ({took:.1f} s)'
        )
    return record.levelno >= self._level


def run(
  config: settings_lib.PipelineConfig,
  progress: Optional[Callable[[str], None]] = None,
) -> RunResult:
  """Runs the pipeline locally and returns what happened.

  Args:
    config: the pipeline settings.
    progress: called with a line when each component starts and finishes.

  Raises:
    OutputDirBusyError: another run is using config.output_dir.
    data_validator.DataAnomaliesError: the data failed validation; its
      `run_result` says what ran.
  """
  object_store.register(config.data_root, config.output_dir)
  os.makedirs(config.state_dir, exist_ok=True)
  with exclusive_output_dir(config.output_dir, config.state_dir):
    return _run_locked(config, progress)


def _run_locked(
  config: settings_lib.PipelineConfig, progress: Optional[Callable[[str], None]]
) -> RunResult:
  connection = tfx.orchestration.metadata.sqlite_metadata_connection_config(
    config.metadata_path
  )
  absl_logger = absl_logging.get_absl_logger()
  verbosity = absl_logging.get_verbosity()
  node_progress = (
    _NodeProgress(progress, absl_logger.getEffectiveLevel())
    if progress
    else None
  )
  if node_progress:
    absl_logger.addFilter(node_progress)
    # Not absl_logger.setLevel: TF restores absl's verbosity while saving.
    absl_logging.set_verbosity(max(verbosity, absl_logging.INFO))
  started = time.time()
  try:
    tfx.orchestration.LocalDagRunner().run(
      pipeline_lib.create_pipeline(
        config,
        beam_pipeline_args=config.beam_pipeline_args
        + object_store.beam_args(config.data_root, config.output_dir),
        metadata_connection_config=connection,
      )
    )
  except data_validator.DataAnomaliesError as e:
    e.run_result = _read_last_run(
      connection, config.pipeline_name, time.time() - started
    )
    e.run_result.data_validation = e.outcome
    raise
  finally:
    if node_progress:
      absl_logger.removeFilter(node_progress)
      absl_logging.set_verbosity(verbosity)
  return _read_last_run(connection, config.pipeline_name, time.time() - started)


def read_run(
  config: settings_lib.PipelineConfig, run_id: Optional[str] = None
) -> RunResult:
  """What run `run_id` (default: the newest) in config.output_dir did.

  Raises:
    ValueError: no such run.
  """
  if not os.path.exists(config.metadata_path):
    raise ValueError(
      f'No runs in {config.output_dir} (no {config.metadata_path}).'
    )
  return _read_last_run(
    tfx.orchestration.metadata.sqlite_metadata_connection_config(
      config.metadata_path
    ),
    config.pipeline_name,
    0.0,
    run_id,
  )


def _read_last_run(
  connection, pipeline_name: str, seconds: float, run_id: Optional[str] = None
) -> RunResult:
  store = metadata_store.MetadataStore(connection)
  runs = [
    c
    for c in store.get_contexts_by_type('pipeline_run')
    if run_id is None or c.name == run_id
  ]
  if not runs:
    raise ValueError(f'No run {run_id!r} in this output directory.')
  run_context = max(runs, key=lambda c: c.id)
  result = RunResult(
    components={},
    training={},
    blessed=False,
    evaluation=None,
    pushed_to=None,
    seconds=seconds,
    run_id=run_context.name,
  )
  executions = sorted(
    store.get_executions_by_context(run_context.id), key=lambda e: e.id
  )
  for execution in executions:
    node = next(
      c.name
      for c in store.get_contexts_by_execution(execution.id)
      if c.type == 'node'
    )
    node_id = node[len(pipeline_name) + 1 :]
    result.components[node_id] = _STATES.get(
      execution.last_known_state, 'unknown'
    )
    result.component_seconds[node_id] = (
      execution.last_update_time_since_epoch - execution.create_time_since_epoch
    ) / 1000
    outputs = store.get_artifacts_by_id(
      [
        e.artifact_id
        for e in store.get_events_by_execution_ids([execution.id])
        if e.type == metadata_store_pb2.Event.OUTPUT
      ]
    )
    for artifact in outputs:
      _read_output(store, artifact, result, node_id)
  return result


def _read_output(store, artifact, result: RunResult, node_id: str) -> None:
  """Fills in `result` from one output artifact of the run."""
  kind = store.get_artifact_types_by_id([artifact.type_id])[0].name
  # Transform outputs statistics, schemas and anomalies too.
  if kind == 'ExampleStatistics' and node_id == 'StatisticsGen':
    result.statistics = artifact.uri
  elif kind == 'Schema' and node_id == 'SchemaGen':
    result.schema = artifact.uri
  elif kind == 'ExampleAnomalies' and node_id == 'ExampleValidator':
    path = os.path.join(artifact.uri, data_validator.RESULT_FILE)
    if os.path.exists(path):
      with open(path) as f:
        result.data_validation = json.load(f)
  elif kind == 'Examples':
    result.examples = artifact.uri
  elif kind == 'Model':
    result.model = artifact.uri
  elif kind == 'ModelRun':
    path = os.path.join(artifact.uri, trainer_module.TRAINING_SUMMARY_FILE)
    if fileio.exists(path):
      with fileio.open(path) as f:
        result.training = json.load(f)
  elif kind == 'ModelEvaluation':
    result.evaluation = artifact.uri
  elif kind == 'ModelBlessing':
    result.blessed = artifact.custom_properties['blessed'].int_value == 1
  elif kind == 'PushedModel':
    if artifact.custom_properties['pushed'].int_value == 1:
      result.pushed_to = artifact.custom_properties[
        'pushed_destination'
      ].string_value
