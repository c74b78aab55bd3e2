"""Runs the pipeline with LocalDagRunner (Beam DirectRunner, MLMD on sqlite)
and reads back from MLMD what this run did."""

import dataclasses
import json
import os
import time
from typing import Dict, Optional

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx

from modules import trainer as trainer_module
from pipeline import config as config_lib
from pipeline import pipeline as pipeline_lib

_STATES = {
    metadata_store_pb2.Execution.COMPLETE: 'ran',
    metadata_store_pb2.Execution.CACHED: 'cached',
    metadata_store_pb2.Execution.FAILED: 'failed',
    metadata_store_pb2.Execution.CANCELED: 'skipped',
}


@dataclasses.dataclass
class RunResult:
  """What one pipeline run did, read from MLMD.

  Attributes:
    components: node id -> 'ran' | 'cached' | 'failed' | 'skipped'.
    training: the Trainer's training_summary.json (per-phase accuracies).
    blessed: whether the Evaluator blessed this run's model.
    evaluation: the Evaluator's output directory (tfma.load_eval_result).
    pushed_to: the versioned serving directory, if the model was pushed.
    seconds: wall time of the run.
  """
  components: Dict[str, str]
  training: dict
  blessed: bool
  evaluation: Optional[str]
  pushed_to: Optional[str]
  seconds: float


def run(config: config_lib.PipelineConfig) -> RunResult:
  """Runs the pipeline locally and returns what happened."""
  os.makedirs(config.output_dir, exist_ok=True)
  connection = tfx.orchestration.metadata.sqlite_metadata_connection_config(
      config.metadata_path)
  started = time.time()
  tfx.orchestration.LocalDagRunner().run(
      pipeline_lib.create_pipeline(
          config, metadata_connection_config=connection))
  return _read_last_run(connection, config.pipeline_name,
                        time.time() - started)


def _read_last_run(connection, pipeline_name: str,
                   seconds: float) -> RunResult:
  store = metadata_store.MetadataStore(connection)
  runs = store.get_contexts_by_type('pipeline_run')
  run_context = max(runs, key=lambda c: c.id)
  components, training = {}, {}
  blessed, evaluation, pushed_to = False, None, None
  for execution in store.get_executions_by_context(run_context.id):
    node = next(c.name for c in store.get_contexts_by_execution(execution.id)
                if c.type == 'node')
    node_id = node[len(pipeline_name) + 1:]
    components[node_id] = _STATES.get(execution.last_known_state, 'unknown')
    outputs = store.get_artifacts_by_id([
        e.artifact_id for e in store.get_events_by_execution_ids([execution.id])
        if e.type == metadata_store_pb2.Event.OUTPUT])
    for artifact in outputs:
      kind = store.get_artifact_types_by_id([artifact.type_id])[0].name
      if kind == 'ModelRun':
        path = os.path.join(artifact.uri,
                            trainer_module.TRAINING_SUMMARY_FILE)
        if os.path.exists(path):
          with open(path) as f:
            training = json.load(f)
      elif kind == 'ModelEvaluation':
        evaluation = artifact.uri
      elif kind == 'ModelBlessing':
        blessed = artifact.custom_properties['blessed'].int_value == 1
      elif kind == 'PushedModel':
        if artifact.custom_properties['pushed'].int_value == 1:
          pushed_to = artifact.custom_properties[
              'pushed_destination'].string_value
  return RunResult(components, training, blessed, evaluation, pushed_to,
                   seconds)
