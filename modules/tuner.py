"""Tuner module: `tuner_fn` for TFX's Tuner component (KerasTuner).

Searches the head's phase-1 hyperparameters (TUNABLE in modules/trainer.py:
`phase1_learning_rate`, `dropout`, `head_weight_decay`) on the frozen
backbone's embeddings, computed once, so a trial costs seconds: each trial
runs the Trainer's own phase 1 (modules/embedding_cache.py
`run_cached_phase1`: closed-form start, early stopping) on those embeddings.
The start's cross-validation is kept across trials, so a trial solves
only for its own L2, warm-started from the nearest L2's solutions.
Trials fit on the train split less its validation part and are scored on
that validation part (modules/trainer.py `in_part`): the eval split that the
Evaluator's gate judges is never read. The score is validation accuracy,
ties broken by the lower validation loss.

The component's `custom_config` is {'trainer': the Trainer's settings,
'tuning': {'trials': N}}. The best values reach the Trainer through TFX's
Tuner -> Trainer `hyperparameters` channel (trainer.tuned_config).
"""

import os
from typing import Dict

import keras_tuner
import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras
from tfx import v1 as tfx

from modules import embedding_cache
from modules import linear_probe
from modules import model as model_lib
from modules import phases
from modules import trainer
from pipeline import settings as settings_lib

OBJECTIVE = 'validation_score'  # accuracy - loss / 1000.


class HeadSearch(keras_tuner.RandomSearch):
  """Random search over the head's hyperparameters on cached embeddings."""

  def __init__(
    self,
    embeddings: Dict[str, np.ndarray],
    labels: Dict[str, np.ndarray],
    num_classes: int,
    config: settings_lib.TrainerConfig,
    **kwargs,
  ):
    super().__init__(
      objective=keras_tuner.Objective(OBJECTIVE, 'max'), **kwargs
    )
    self.embeddings, self.labels = embeddings, labels
    self.num_classes, self.config = num_classes, config
    # The start's folds, solved by the first trial, reused by later ones.
    self.cross_validation = linear_probe.CrossValidationMemo()

  def run_trial(self, trial, *args, **kwargs) -> Dict[str, float]:
    hp = trial.hyperparameters
    learning_rate = hp.Float(
      'phase1_learning_rate',
      1e-4,
      3e-2,
      sampling='log',
      default=self.config.phase1_learning_rate,
    )
    dropout = hp.Float('dropout', 0.0, 0.6, default=self.config.dropout)
    weight_decay = hp.Float(
      'head_weight_decay',
      1e-6,
      1e-1,
      sampling='log',
      default=max(self.config.head_weight_decay, 1e-6),
    )
    keras.utils.set_random_seed(self.config.seed)
    inputs = keras.Input((self.embeddings[trainer.FIT].shape[1],))
    head = keras.Model(
      inputs, model_lib.head(inputs, self.num_classes, dropout, weight_decay)
    )
    batch_size = self.config.batch_size
    data = {
      part: tf.data.Dataset.from_tensor_slices(
        (self.embeddings[part], self.labels[part])
      ).batch(batch_size)
      for part in (trainer.FIT, trainer.VALIDATION)
    }
    context = phases.PhaseContext(
      head,
      [],
      tf.distribute.get_strategy(),
      data[trainer.FIT],
      data[trainer.VALIDATION],
      phases.FitOptions(early_stopping_patience=self.config.phase1_patience),
    )
    result = embedding_cache.run_cached_phase1(
      context,
      self.config.phase1_epochs,
      learning_rate,
      batch_size,
      self.config.seed,
      closed_form_start=self.config.phase1_start == 'logistic_regression',
      memo=self.cross_validation,
    )
    # run_cached_phase1 names its second dataset's metrics eval_*.
    accuracy, loss = result['eval_accuracy'], result['eval_loss']
    return {
      OBJECTIVE: accuracy - loss / 1000,
      'val_accuracy': accuracy,
      'val_loss': loss,
    }


def tuner_fn(fn_args: tfx.components.FnArgs) -> tfx.components.TunerFnResult:
  """TFX Tuner entry point: the search, on embeddings computed here once."""
  settings = fn_args.custom_config or {}
  config = settings_lib.TrainerConfig.from_dict(settings.get('trainer'))
  tuning = settings['tuning']  # Checked by pipeline/settings.py.
  keras.utils.set_random_seed(config.seed)
  # The Tuner's FnArgs has no `transform_output` alias (the Trainer's has).
  tf_transform_output = tft.TFTransformOutput(fn_args.transform_graph_path)
  names = trainer.class_names(tf_transform_output)
  kind = trainer.modality(tf_transform_output)
  classifier, _ = trainer.build_model(kind, config, len(names))
  embedder = embedding_cache.embedding_model(classifier)
  embed = tf.function(
    lambda x: tf.cast(embedder(x, training=False), tf.float32)
  )
  embeddings, labels = {}, {}
  for part in (trainer.FIT, trainer.VALIDATION):
    dataset = trainer.make_dataset(
      fn_args.train_files,
      tf_transform_output,
      config.batch_size,
      shuffle=False,
      part=part,
      validation_fraction=config.validation_fraction,
    )
    embeddings[part], labels[part] = linear_probe.load(
      dataset.map(lambda inputs, label: (embed(inputs), label))
    )
  print(
    f'[tuner] {tuning["trials"]} trials on the embeddings of '
    f'{len(labels[trainer.FIT])} fit and {len(labels[trainer.VALIDATION])}'
    ' validation examples (the eval split is not read)',
    flush=True,
  )
  search = HeadSearch(
    embeddings,
    labels,
    len(names),
    config,
    max_trials=tuning['trials'],
    seed=config.seed,
    directory=os.path.join(fn_args.working_dir or '/tmp', 'tuner'),
    project_name='head',
    overwrite=True,
  )
  return tfx.components.TunerFnResult(tuner=search, fit_kwargs={})
