"""TFX's Evaluator, with the model now being served as its baseline.

The no-regression gate compares the new model with a baseline. TFX's own
examples resolve the baseline with `Resolver(LatestBlessedModelStrategy)`,
which reads MLMD while the pipeline runs: open-source Kubeflow Pipelines
cannot run that node ("resolver executors not implemented"). This Evaluator
takes the baseline from the push destination instead: the newest complete
version there (components/atomic_pusher.py: whole or not at all), that is,
the model being served. It needs no MLMD query, so the same pipeline runs with
LocalDagRunner, on Kubeflow Pipelines and on Vertex AI Pipelines. With nothing
served yet there is no baseline and the change threshold is skipped, as TFX
does without a resolved baseline.

For the evaluation the served version is copied into the evaluation
artifact's `.baseline/Format-Serving` (the layout TFX's Evaluator reads a
Model artifact from; on the pipeline root's filesystem, so distributed Beam
workers can read it too) and removed afterwards; the blessing records the
served version's path under `baseline_model` (TFX's key for the baseline's
URI).
"""

import json
import os
from typing import Any, Dict, List, Optional

from absl import logging
import tensorflow_model_analysis as tfma
from tfx import types
from tfx.components.evaluator import constants
from tfx.components.evaluator import executor as evaluator_executor
from tfx.dsl.components.base import base_beam_component
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.types import artifact_utils
from tfx.types import channel
from tfx.types import component_spec
from tfx.types import standard_artifacts
from tfx.types import standard_component_specs
from tfx.utils import io_utils
from tfx.utils import path_utils

from components import atomic_pusher

BASELINE_DIR_KEY = 'baseline_dir'
_BASELINE_COPY = '.baseline'  # In the evaluation artifact, while it runs.


def served_version(base_directory: str) -> Optional[str]:
  """The newest complete version under `base_directory`, or None."""
  versions = atomic_pusher.pushed_versions(base_directory)
  if not versions:
    return None
  return os.path.join(base_directory, versions[-1])


class ServingBaselineEvaluatorSpec(standard_component_specs.EvaluatorSpec):
  """EvaluatorSpec plus the push destination to read the baseline from."""

  PARAMETERS = {
    **standard_component_specs.EvaluatorSpec.PARAMETERS,
    BASELINE_DIR_KEY: component_spec.ExecutionParameter(type=str),
  }


class ServingBaselineEvaluatorExecutor(evaluator_executor.Executor):
  """Runs TFX's Evaluator with the served model as `baseline_model`."""

  def Do(
    self,
    input_dict: Dict[str, List[types.Artifact]],
    output_dict: Dict[str, List[types.Artifact]],
    exec_properties: Dict[str, Any],
  ) -> None:
    exec_properties = dict(exec_properties)
    served = served_version(exec_properties.pop(BASELINE_DIR_KEY))
    if served is None:
      logging.info('Nothing served yet: evaluating without a baseline.')
      super().Do(input_dict, output_dict, exec_properties)
      return
    logging.info('Baseline: the served model %s.', served)
    baseline = standard_artifacts.Model()
    baseline.uri = os.path.join(
      artifact_utils.get_single_uri(
        output_dict[standard_component_specs.EVALUATION_KEY]
      ),
      _BASELINE_COPY,
    )
    io_utils.copy_dir(served, path_utils.serving_model_dir(baseline.uri))
    try:
      super().Do(
        {**input_dict, standard_component_specs.BASELINE_MODEL_KEY: [baseline]},
        output_dict,
        exec_properties,
      )
    finally:
      fileio.rmtree(baseline.uri)
    blessing = artifact_utils.get_single_instance(
      output_dict[standard_component_specs.BLESSING_KEY]
    )
    blessing.set_string_custom_property(
      constants.ARTIFACT_PROPERTY_BASELINE_MODEL_URI_KEY, served
    )
    # The served copy is no MLMD artifact: its id (0) would name nothing, and
    # TFX's V2 entrypoint fails looking it up.
    blessing.mlmd_artifact.custom_properties.pop(
      constants.ARTIFACT_PROPERTY_BASELINE_MODEL_ID_KEY, None
    )


class ServingBaselineEvaluator(base_beam_component.BaseBeamComponent):
  """Evaluator whose baseline is the newest version under `baseline_dir`.

  Args:
    examples: The examples to evaluate on.
    model: The candidate model.
    eval_config: The `tfma.EvalConfig` (or a RuntimeParameter holding its
      JSON): metrics, slices and the gate's thresholds.
    baseline_dir: The Pusher's filesystem `base_directory`.
    example_splits: The splits of `examples` to evaluate on.
  """

  SPEC_CLASS = ServingBaselineEvaluatorSpec
  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(
    ServingBaselineEvaluatorExecutor
  )

  def __init__(
    self,
    examples: types.BaseChannel,
    model: types.BaseChannel,
    eval_config: tfma.EvalConfig,
    baseline_dir: str,
    example_splits: Optional[List[str]] = None,
  ):
    super().__init__(
      spec=ServingBaselineEvaluatorSpec(
        examples=examples,
        model=model,
        eval_config=eval_config,
        example_splits=json.dumps(example_splits),
        baseline_dir=baseline_dir,
        evaluation=channel.Channel(type=standard_artifacts.ModelEvaluation),
        blessing=channel.Channel(type=standard_artifacts.ModelBlessing),
      )
    )
