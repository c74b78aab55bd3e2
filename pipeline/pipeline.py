"""The pipeline definition, shared by the local runner and Kubeflow.

ExampleGen (images) -> StatisticsGen -> SchemaGen -> Transform (label
vocabulary; the decode/resize graph, not materialized) -> Trainer (two-phase
transfer learning) -> Evaluator (accuracy bound + no regression against the
latest blessed model) -> Pusher (only when blessed).
"""

import os
from typing import List, Optional

import tensorflow_model_analysis as tfma
from tfx import v1 as tfx

from components import image_example_gen
from modules import features
from pipeline import config as config_lib

PREPROCESSING_MODULE = os.path.join(config_lib.MODULES_DIR, 'preprocessing.py')
TRAINER_MODULE = os.path.join(config_lib.MODULES_DIR, 'trainer.py')


def eval_config(accuracy_threshold: float,
                max_accuracy_drop: float) -> tfma.EvalConfig:
  """Accuracy gate (absolute bound and change vs baseline), per-class slices."""
  return tfma.EvalConfig(
      model_specs=[
          tfma.ModelSpec(
              signature_name='serving_examples',
              label_key=features.LABEL_XF,
              prediction_key='probabilities',
              preprocessing_function_names=['transform_features'])
      ],
      slicing_specs=[
          tfma.SlicingSpec(),
          tfma.SlicingSpec(feature_keys=[features.LABEL_KEY]),
      ],
      metrics_specs=[
          tfma.MetricsSpec(metrics=[
              tfma.MetricConfig(class_name='ExampleCount'),
              tfma.MetricConfig(
                  class_name='SparseCategoricalAccuracy',
                  threshold=tfma.MetricThreshold(
                      value_threshold=tfma.GenericValueThreshold(
                          lower_bound={'value': accuracy_threshold}),
                      # Ignored on the first run, when no baseline exists.
                      change_threshold=tfma.GenericChangeThreshold(
                          direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                          absolute={'value': -max_accuracy_drop - 1e-10}))),
          ])
      ])


def create_pipeline(config: config_lib.PipelineConfig,
                    beam_pipeline_args: Optional[List[str]] = None,
                    metadata_connection_config=None) -> tfx.dsl.Pipeline:
  """Builds the TFX pipeline for `config`."""
  example_gen = image_example_gen.image_example_gen(
      config.data_root,
      manifest=config.manifest,
      split_folders=config.split_folders,
      max_rejected_fraction=config.max_rejected_fraction)
  statistics_gen = tfx.components.StatisticsGen(
      examples=example_gen.outputs['examples'])
  schema_gen = tfx.components.SchemaGen(
      statistics=statistics_gen.outputs['statistics'],
      infer_feature_shape=True)
  transform = tfx.components.Transform(
      examples=example_gen.outputs['examples'],
      schema=schema_gen.outputs['schema'],
      module_file=PREPROCESSING_MODULE,
      custom_config={'image_size': config.image_size},
      # Only the vocabulary is analyzed; images are decoded on the fly.
      materialize=False,
      splits_config=tfx.proto.SplitsConfig(analyze=['train', 'eval']))
  trainer = tfx.components.Trainer(
      module_file=TRAINER_MODULE,
      examples=example_gen.outputs['examples'],
      transform_graph=transform.outputs['transform_graph'],
      schema=schema_gen.outputs['schema'],
      train_args=tfx.proto.TrainArgs(splits=['train']),
      eval_args=tfx.proto.EvalArgs(splits=['eval']),
      custom_config=config.trainer)
  model_resolver = tfx.dsl.Resolver(
      strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
      model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
      model_blessing=tfx.dsl.Channel(
          type=tfx.types.standard_artifacts.ModelBlessing)).with_id(
              'latest_blessed_model_resolver')
  evaluator = tfx.components.Evaluator(
      examples=example_gen.outputs['examples'],
      example_splits=['eval'],
      model=trainer.outputs['model'],
      baseline_model=model_resolver.outputs['model'],
      eval_config=eval_config(config.accuracy_threshold,
                              config.max_accuracy_drop))
  with tfx.dsl.Cond(evaluator.outputs['blessing'].future()[0]
                    .custom_property('blessed') == 1):
    pusher = tfx.components.Pusher(
        model=trainer.outputs['model'],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(
                base_directory=config.serving_dir)))

  return tfx.dsl.Pipeline(
      pipeline_name=config.pipeline_name,
      pipeline_root=config.pipeline_root,
      components=[
          example_gen, statistics_gen, schema_gen, transform, trainer,
          model_resolver, evaluator, pusher
      ],
      enable_cache=True,
      metadata_connection_config=metadata_connection_config,
      beam_pipeline_args=beam_pipeline_args or config.beam_pipeline_args)
