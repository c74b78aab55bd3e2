"""The pipeline definition, shared by the local runner and Kubeflow.

ExampleGen (images, text or image+text rows) -> StatisticsGen -> SchemaGen ->
[ImportSchemaGen: the curated schema_file] -> ExampleValidator (the data
validation gate: schema, label coverage, drift against the served model's run,
train/eval skew; an anomaly stops the run, see components/data_validator.py) ->
Transform (label vocabulary; the decode/resize and tokenization graph, not
materialized) -> [Tuner, with `tuning`: the head's hyperparameters on cached
embeddings] -> Trainer (transfer learning in phases) -> Evaluator (accuracy
bound + no regression against the model being served, see
components/serving_baseline_evaluator.py) -> Pusher (only when blessed;
atomic, see components/atomic_pusher.py).
"""

import json
import os
from typing import Dict, List, Optional

import tensorflow_data_validation as tfdv
import tensorflow_model_analysis as tfma
from tfx import v1 as tfx
from tfx.utils import proto_utils

from components import atomic_pusher
from components import data_validator
from components import image_example_gen
from components import serving_baseline_evaluator
from components import text_example_gen
from modules import features
from pipeline import settings as settings_lib

PREPROCESSING_MODULE = os.path.join(
  settings_lib.MODULES_DIR, 'preprocessing.py'
)
TRAINER_MODULE = os.path.join(settings_lib.MODULES_DIR, 'trainer.py')
TUNER_MODULE = os.path.join(settings_lib.MODULES_DIR, 'tuner.py')
# The same user code by import path, for images that contain the project.
PREPROCESSING_FN = 'modules.preprocessing.preprocessing_fn'
RUN_FN = 'modules.trainer.run_fn'
TUNER_FN = 'modules.tuner.tuner_fn'

# Settings a KubeflowV2DagRunner run can override (pipeline/settings.py).
# All are strings: V2 only substitutes whole execution properties, never
# values inside a dict or proto.
DATA_ROOT_PARAMETER = settings_lib.DATA_ROOT_PARAMETER
EVAL_CONFIG_PARAMETER = settings_lib.EVAL_CONFIG_PARAMETER
TRAINER_CONFIG_PARAMETER = settings_lib.TRAINER_CONFIG_PARAMETER
SCHEMA_FILE_PARAMETER = 'schema_file'  # ImportSchemaGen, if a file is set.
DATA_VALIDATION_PARAMETER = 'data_validation'  # The validator's settings JSON.


def eval_config(
  accuracy_threshold: float, max_accuracy_drop: float
) -> tfma.EvalConfig:
  """Overall-accuracy gate (bound, no regression); per-class metrics."""
  return tfma.EvalConfig(
    model_specs=[
      tfma.ModelSpec(
        signature_name='serving_examples',
        label_key=features.LABEL_XF,
        prediction_key='probabilities',
        preprocessing_function_names=['transform_features'],
      )
    ],
    slicing_specs=[
      tfma.SlicingSpec(),
      tfma.SlicingSpec(feature_keys=[features.LABEL_KEY]),
    ],
    metrics_specs=[
      tfma.MetricsSpec(
        metrics=[
          tfma.MetricConfig(class_name='ExampleCount'),
          tfma.MetricConfig(
            class_name='SparseCategoricalAccuracy',
            # The gate is on overall accuracy; per-class accuracy is
            # reported, not gated (a class has only a few eval examples).
            per_slice_thresholds=[
              tfma.PerSliceMetricThreshold(
                slicing_specs=[tfma.SlicingSpec()],
                threshold=tfma.MetricThreshold(
                  value_threshold=tfma.GenericValueThreshold(
                    lower_bound={'value': accuracy_threshold}
                  ),
                  # Ignored on the first run (no baseline).
                  change_threshold=tfma.GenericChangeThreshold(
                    direction=(tfma.MetricDirection.HIGHER_IS_BETTER),
                    absolute={'value': -max_accuracy_drop - 1e-10},
                  ),
                ),
              )
            ],
          ),
        ]
      )
    ],
  )


def runtime_parameters(
  config: settings_lib.PipelineConfig,
) -> Dict[str, tfx.dsl.experimental.RuntimeParameter]:
  """The runtime parameters, defaulting to `config`'s values."""
  gate = eval_config(config.accuracy_threshold, config.max_accuracy_drop)
  defaults = {
    DATA_ROOT_PARAMETER: (
      config.data_root,
      'Folder-per-class image tree, or the folder holding the manifest '
      '(ExampleGen).',
    ),
    EVAL_CONFIG_PARAMETER: (
      json.dumps(proto_utils.proto_to_dict(gate), sort_keys=True),
      'tfma.EvalConfig JSON: the accuracy gate of the Evaluator.',
    ),
    TRAINER_CONFIG_PARAMETER: (
      json.dumps(config.trainer.to_dict(), sort_keys=True),
      'Trainer settings JSON (pipeline/settings.py TrainerConfig); '
      f'{", ".join(settings_lib.COMPILE_TIME_TRAINER_KEYS)} are fixed at '
      'compile time.',
    ),
    DATA_VALIDATION_PARAMETER: (
      data_validator.Settings.of(config).to_json(),
      'Data validation settings JSON (thresholds, warn_anomalies).',
    ),
  }
  if config.schema_file:
    defaults[SCHEMA_FILE_PARAMETER] = (
      config.schema_file,
      'The curated schema (a path the pods see).',
    )
  return {
    name: tfx.dsl.experimental.RuntimeParameter(
      name=name, ptype=str, default=default, description=description
    )
    for name, (default, description) in defaults.items()
  }


def example_gen_component(config: settings_lib.PipelineConfig, data_root):
  """The image ExampleGen, or for text and image_text the text ExampleGen."""
  if config.modality == features.IMAGE:
    return image_example_gen.image_example_gen(
      data_root,
      manifest=config.manifest,
      split_folders=config.split_folders,
      max_rejected_fraction=config.max_rejected_fraction,
      allow_paths_outside_data_root=config.allow_paths_outside_data_root,
      require_every_split=True,
    )
  return text_example_gen.text_example_gen(
    data_root,
    config.manifest,
    text_columns=config.text_columns,
    label_column=config.label_column,
    id_column=config.id_column,
    image_column=(
      config.image_column if config.modality == features.IMAGE_TEXT else None
    ),
    max_rejected_fraction=config.max_rejected_fraction,
    allow_paths_outside_data_root=config.allow_paths_outside_data_root,
    require_every_split=True,
  )


def transform_config(config: settings_lib.PipelineConfig) -> Dict[str, object]:
  """The Transform's custom_config: image size and/or text tokenization."""
  values = {}
  if config.modality in (features.IMAGE, features.IMAGE_TEXT):
    values['image_size'] = config.image_size
  if config.modality in (features.TEXT, features.IMAGE_TEXT):
    values.update(
      text_encoder=config.text_encoder, max_length=config.max_length
    )
  return values


def create_pipeline(
  config: settings_lib.PipelineConfig,
  beam_pipeline_args: Optional[List[str]] = None,
  metadata_connection_config=None,
  *,
  modules_in_image: bool = False,
  with_runtime_parameters: bool = False,
) -> tfx.dsl.Pipeline:
  """Builds the TFX pipeline for `config`.

  Args:
    config: The pipeline settings.
    beam_pipeline_args: Overrides `config.beam_pipeline_args`.
    metadata_connection_config: MLMD connection (local runs).
    modules_in_image: Name the user code by import path (`PREPROCESSING_FN`,
      `RUN_FN`) rather than by file, for container images that hold the
      project. TFX then packages no user-module wheel under the pipeline root
      at compile time, and cache keys no longer see code changes.
    with_runtime_parameters: Make data_root, the Evaluator's gate, the
      Trainer's settings, the data validation settings and (if set) the
      schema file `runtime_parameters(config)` (KubeflowV2DagRunner).
  """
  if with_runtime_parameters:
    parameters = runtime_parameters(config)
    data_root = parameters[DATA_ROOT_PARAMETER]
    gate = parameters[EVAL_CONFIG_PARAMETER]
    trainer_config = parameters[TRAINER_CONFIG_PARAMETER]
    validation_config = parameters[DATA_VALIDATION_PARAMETER]
    schema_file = parameters.get(SCHEMA_FILE_PARAMETER)
  else:
    data_root = config.data_root
    gate = eval_config(config.accuracy_threshold, config.max_accuracy_drop)
    trainer_config = config.trainer.to_dict()
    validation_config = data_validator.Settings.of(config).to_json()
    schema_file = config.schema_file
  if modules_in_image:
    transform_code = {'preprocessing_fn': PREPROCESSING_FN}
    trainer_code = {'run_fn': RUN_FN}
    tuner_code = {'tuner_fn': TUNER_FN}
  else:
    transform_code = {'module_file': PREPROCESSING_MODULE}
    trainer_code = {'module_file': TRAINER_MODULE}
    tuner_code = {'module_file': TUNER_MODULE}

  example_gen = example_gen_component(config, data_root)
  statistics_gen = tfx.components.StatisticsGen(
    examples=example_gen.outputs['examples'],
    # TFDV's exact top-k groups by every distinct value, which holds every
    # image's bytes and every text in memory on local Beam; the sketch is
    # bounded (Transform's statistics use it already).
    stats_options=tfdv.StatsOptions(use_sketch_based_topk_uniques=True),
  )
  schema_gen = tfx.components.SchemaGen(
    statistics=statistics_gen.outputs['statistics'], infer_feature_shape=True
  )
  import_schema = (
    tfx.components.ImportSchemaGen(schema_file=schema_file)
    if schema_file
    else None
  )
  validator = data_validator.DataValidator(
    statistics=statistics_gen.outputs['statistics'],
    schema=schema_gen.outputs['schema'],
    curated_schema=import_schema.outputs['schema'] if import_schema else None,
    baseline_dir=config.serving_dir,
    validation_config=validation_config,
  ).with_id('ExampleValidator')
  transform = tfx.components.Transform(
    examples=example_gen.outputs['examples'],
    schema=schema_gen.outputs['schema'],
    custom_config=transform_config(config),
    # Only the vocabulary is analyzed; images are decoded on the fly.
    materialize=False,
    # StatisticsGen has the raw data's statistics. Transform's own (of the
    # raw bytes, and of every decoded image) grew its memory with the data.
    disable_statistics=True,
    splits_config=tfx.proto.SplitsConfig(analyze=['train', 'eval']),
    **transform_code,
  )
  transform.add_upstream_node(validator)  # The gate: no anomaly, or no run.
  tuner, tuned = None, {}
  if config.tuning:
    # Settings fixed at compile time: the Tuner's custom_config is one JSON
    # property, with no room for a runtime parameter inside it.
    tuner = tfx.components.Tuner(
      examples=example_gen.outputs['examples'],
      transform_graph=transform.outputs['transform_graph'],
      train_args=tfx.proto.TrainArgs(splits=['train']),
      eval_args=tfx.proto.EvalArgs(splits=['eval']),  # Never read.
      custom_config={
        'trainer': config.trainer.to_dict(),
        'tuning': config.tuning,
      },
      **tuner_code,
    )
    tuned = {'hyperparameters': tuner.outputs['best_hyperparameters']}
  trainer = tfx.components.Trainer(
    examples=example_gen.outputs['examples'],
    transform_graph=transform.outputs['transform_graph'],
    schema=schema_gen.outputs['schema'],
    train_args=tfx.proto.TrainArgs(splits=['train']),
    eval_args=tfx.proto.EvalArgs(splits=['eval']),
    custom_config=trainer_config,
    **tuned,
    **trainer_code,
  )
  evaluator = serving_baseline_evaluator.ServingBaselineEvaluator(
    examples=example_gen.outputs['examples'],
    example_splits=['eval'],
    model=trainer.outputs['model'],
    baseline_dir=config.serving_dir,
    eval_config=gate,
  ).with_id('Evaluator')
  with tfx.dsl.Cond(
    evaluator.outputs['blessing'].future()[0].custom_property('blessed') == 1
  ):
    pusher = atomic_pusher.AtomicPusher(
      model=trainer.outputs['model'],
      model_blessing=evaluator.outputs['blessing'],  # Checked again.
      # Recorded beside the version for the next run's validation.
      statistics=statistics_gen.outputs['statistics'],
      schema=schema_gen.outputs['schema'],
      push_destination=tfx.proto.PushDestination(
        filesystem=tfx.proto.PushDestination.Filesystem(
          base_directory=config.serving_dir
        )
      ),
    ).with_id('Pusher')

  return tfx.dsl.Pipeline(
    pipeline_name=config.pipeline_name,
    pipeline_root=config.pipeline_root,
    components=[
      example_gen,
      statistics_gen,
      schema_gen,
      *([import_schema] if import_schema else []),
      validator,
      transform,
      *([tuner] if tuner else []),
      trainer,
      evaluator,
      pusher,
    ],
    enable_cache=True,
    metadata_connection_config=metadata_connection_config,
    beam_pipeline_args=beam_pipeline_args or config.beam_pipeline_args,
  )
