"""The real pipeline, end to end on the bundled data (LocalDagRunner, Beam).

One run trains and pushes; the pushed SavedModel is loaded and called on raw
JPEG/PNG bytes of the held-out split (its accuracy is printed beside the
same recipe with random weights). Re-runs check caching and the gate: a
re-run is cached through the Trainer; an untrained model is blessed neither
by the no-regression gate nor by the absolute bound, is not pushed, and the
previous model still serves. The shared run (`demo_run` in conftest.py)
uses the multi-process DirectRunner, one Fn API worker process per
core, so every DoFn of ExampleGen, StatisticsGen, Transform and the
Evaluator is pickled into worker processes as on the portable runners.
A run with the Tuner (tuning on) whose fine-tuning phase is made to hurt:
the Tuner's values reach the Trainer and phase 1 is exported.
"""

import os

import numpy as np
import pytest
import tensorflow_model_analysis as tfma

import helpers
from components import atomic_pusher
from modules import trainer as trainer_module
from pipeline import local_runner
from pipeline import report as report_lib
from pipeline import settings as settings_lib

UPSTREAM = (
  'FileBasedExampleGen',
  'StatisticsGen',
  'SchemaGen',
  'Transform',
  'Trainer',
)


def test_pushed_model_beats_chance_and_random_weights(demo_run, tmp_path):
  config, result = demo_run
  assert result.blessed and result.pushed_to
  assert os.path.dirname(result.pushed_to) == config.serving_dir
  print(
    f'phase 1 accuracy {result.training["phase1"]["eval_accuracy"]:.3f}, '
    f'phase 2 accuracy {result.training["phase2"]["eval_accuracy"]:.3f}'
  )

  eval_examples = helpers.split_examples(config.pipeline_root, 'eval')
  extensions = {os.path.splitext(p)[1] for p, _ in eval_examples}
  assert extensions == {'.png', '.jpg'}
  class_names = sorted({label for _, label in eval_examples})
  chance = 1.0 / len(class_names)

  outputs = helpers.classify(
    result.pushed_to, config.data_root, [p for p, _ in eval_examples]
  )
  probabilities = outputs['probabilities'].numpy()
  np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
  assert sorted(c.decode() for c in outputs['classes'].numpy()[0]) == (
    class_names
  )
  pretrained = helpers.accuracy(
    result.pushed_to, config.data_root, eval_examples
  )

  random_init = helpers.accuracy(
    helpers.train_directly(
      config.pipeline_root,
      str(tmp_path),
      {**helpers.E2E_TRAINER, 'weights': 'none'},
    ),
    config.data_root,
    eval_examples,
  )
  print(
    f'held-out accuracy on raw bytes: pretrained {pretrained:.3f}, '
    f'random weights {random_init:.3f}, chance {chance:.3f} '
    f'({len(eval_examples)} images)'
  )
  assert pretrained >= 0.85
  assert pretrained >= random_init + 0.2


def test_evaluator_reports_per_class_accuracy(demo_run):
  _, result = demo_run
  eval_result = tfma.load_eval_result(result.evaluation)
  slices = {s: m[''][''] for s, m in eval_result.slicing_metrics}
  per_class = {s[0][1]: m for s, m in slices.items() if s}
  assert len(per_class) == 5
  for metrics in per_class.values():
    assert 0.0 <= metrics['sparse_categorical_accuracy']['doubleValue'] <= 1.0
  assert tfma.load_validation_result(result.evaluation).validation_ok


def test_rerun_is_cached_and_worse_models_are_not_pushed(demo_run):
  config, first = demo_run
  pushed_before = atomic_pusher.pushed_versions(config.serving_dir)

  rerun = local_runner.run(config)
  for component in UPSTREAM:
    assert rerun.components[component] == 'cached', rerun.components

  def gated_run(**overrides):
    bad = settings_lib.PipelineConfig(
      output_dir=config.output_dir,
      beam_pipeline_args=config.beam_pipeline_args,  # In the cache keys.
      trainer={**config.trainer, 'phase1_epochs': 0, 'phase2_epochs': 0},
      **overrides,
    )
    result = local_runner.run(bad)
    assert result.components['Trainer'] in ('ran', 'cached')
    assert not result.blessed and result.pushed_to is None
    failed = tfma.load_validation_result(result.evaluation)
    assert not failed.validation_ok
    # The served model's copy for the comparison is gone again.
    assert not os.path.exists(os.path.join(result.evaluation, '.baseline'))
    return str(failed.metric_validations_per_slice)

  # An untrained head above an absolute bound of 0: only "no regression
  # against the latest blessed model" can stop it.
  regression = gated_run(accuracy_threshold=0.0)
  assert 'change_threshold' in regression
  # Regression tolerated, absolute bound kept: the bound stops it.
  too_low = gated_run(accuracy_threshold=0.6, max_accuracy_drop=1.0)
  assert 'value_threshold' in too_low and 'change_threshold' not in too_low

  # Nothing new was pushed after the first run's model, which still serves.
  served = atomic_pusher.pushed_versions(config.serving_dir)
  assert served[: len(pushed_before)] == pushed_before
  newest = os.path.join(config.serving_dir, served[-1])
  eval_examples = helpers.split_examples(config.pipeline_root, 'eval')
  assert helpers.accuracy(newest, config.data_root, eval_examples) == (
    helpers.accuracy(first.pushed_to, config.data_root, eval_examples)
  )
  print(
    f'serving versions: {served}; rerun took '
    f'{rerun.seconds:.0f} s with {rerun.components}'
  )


def test_tuner_feeds_the_trainer_and_a_hurting_phase_is_not_exported(demo_run):
  """Tuning on; phase 2 at a learning rate that wrecks the backbone."""
  config, _ = demo_run
  tuned = settings_lib.PipelineConfig(
    output_dir=config.output_dir,
    beam_pipeline_args=config.beam_pipeline_args,  # In the cache keys.
    tuning={'trials': 2},
    trainer={**config.trainer.to_dict(), 'phase2_learning_rate': 0.05},
  )
  result = local_runner.run(tuned)
  assert result.components['Tuner'] == 'ran'
  assert result.components['Transform'] == 'cached'
  training = result.training
  hyperparameters = training['hyperparameters']
  assert sorted(hyperparameters) == sorted(trainer_module.TUNABLE)
  for key, value in hyperparameters.items():
    assert training['config'][key] == value  # What the Trainer trained with.
  phase1, phase2 = training['phase1'], training['phase2']
  print(
    f'tuned {hyperparameters}; validation accuracy: phase 1 '
    f'{phase1["validation_accuracy"]:.3f}, phase 2 '
    f'{phase2["validation_accuracy"]:.3f}'
  )
  assert phase2['validation_accuracy'] < phase1['validation_accuracy']
  assert training['chosen'] == 'phase1' and phase1['chosen']
  # The exported SavedModel is phase 1's: on raw eval bytes it scores what
  # phase 1 scored on the eval split.
  eval_examples = helpers.split_examples(config.pipeline_root, 'eval')
  exported = helpers.accuracy(
    os.path.join(result.model, 'Format-Serving'),
    config.data_root,
    eval_examples,
  )
  assert exported == pytest.approx(phase1['eval_accuracy'], abs=1e-6)
  validation = training['validation']
  assert validation['fit_examples'] + validation['validation_examples'] == (
    len(helpers.split_examples(config.pipeline_root, 'train'))
  )
  report = report_lib.build(tuned, result)
  assert report['selection']['chosen'] == 'phase1'
  assert [c['phase'] for c in report['selection']['candidates']] == [
    'phase1',
    'phase2',
  ]
  markdown = report_lib.render_markdown(report)
  assert '## Exported model' in markdown and 'Tuned (Tuner component)' in (
    markdown
  )
