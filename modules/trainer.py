"""Trainer module: `run_fn` for the TFX Trainer.

Reads the raw examples (encoded image bytes, raw text or both), applies the
transform graph on the fly in a parallel tf.data pipeline, trains under
MirroredStrategy in phases (modules/phases.py: feature extraction, then one
or several fine-tuning phases) and exports a SavedModel
whose signatures are
  * `serving_default`: raw inputs -> class names + probabilities. The inputs
    are `image_bytes` (encoded images), `text` (UTF-8 strings), or both for
    image+text models; each element is judged before it is decoded and gets
    a `status` (modules/serving.py): a bad one never fails the batch;
  * `serving_examples`: serialized tf.Examples -> the same outputs (Evaluator);
  * `transform_features`: serialized tf.Examples -> the label index (Evaluator;
    images and tokens are left out so the Evaluator never holds them).
The modality follows the examples' raw features. Text models tokenize with
tensorflow_text ops: `import tensorflow_text` before loading one.
"""

import dataclasses
import json
import math
import os
from typing import Any, Dict, List, Optional, Tuple

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras
from tfx import v1 as tfx

from modules import augmentation as augmentation_lib
from modules import backbones
from modules import domain_adaptation
from modules import embedding_cache
from modules import features
from modules import model as model_lib
from modules import phases
from modules import preprocessing
from modules import serving
from pipeline import settings as settings_lib

TRAINING_SUMMARY_FILE = 'training_summary.json'
FIT, VALIDATION = 'fit', 'validation'  # The parts of the train split.
# Settings the Tuner's best hyperparameters may override (modules/tuner.py).
TUNABLE = ('phase1_learning_rate', 'dropout', 'head_weight_decay')


def modality(tf_transform_output: tft.TFTransformOutput) -> str:
  """'image', 'text' or 'image_text', from the raw features."""
  return features.modality_of(tf_transform_output.raw_feature_spec())


def model_inputs(transformed: Dict[str, tf.Tensor], kind: str):
  """The classifier's inputs among the transformed features of `kind`."""
  if kind == features.IMAGE:
    return transformed[features.IMAGE_XF]
  names = {features.IMAGE_XF} if kind == features.IMAGE_TEXT else set()
  names |= {features.TOKEN_IDS_XF, features.TOKEN_MASK_XF, features.TEXT_XF}
  return {k: v for k, v in transformed.items() if k in names}


def in_part(
  serialized: tf.Tensor, part: Optional[str], validation_fraction: float
) -> tf.Tensor:
  """Whether a serialized train example is in `part` of the train split.

  'validation': the examples whose fingerprint hash falls in the first
  `validation_fraction` of 1000 buckets; 'fit': the others; None: all. The
  ExampleGens serialize deterministically (components/ingestion.py,
  `_serialize`), so the parts are the same on every run and machine.
  """
  if part is None:
    return tf.constant(True)
  held_out = tf.strings.to_hash_bucket_fast(serialized, 1000) < int(
    round(validation_fraction * 1000)
  )
  return held_out if part == VALIDATION else tf.logical_not(held_out)


def make_dataset(
  file_pattern: List[str],
  tf_transform_output: tft.TFTransformOutput,
  batch_size: int,
  shuffle: bool,
  seed: int = 42,
  part: Optional[str] = None,
  validation_fraction: float = 0.0,
) -> tf.data.Dataset:
  """(model inputs, label_xf) batches from raw GZIP'd tf.Examples, one pass.

  `part` selects 'fit' or 'validation' examples of a train split (in_part).
  """
  files = tf.data.Dataset.list_files(file_pattern, shuffle=False)
  dataset = tf.data.TFRecordDataset(
    files, compression_type='GZIP', num_parallel_reads=tf.data.AUTOTUNE
  )
  if part is not None:
    dataset = dataset.filter(
      lambda serialized: in_part(serialized, part, validation_fraction)
    )
  if shuffle:
    dataset = dataset.shuffle(10_000, seed=seed, reshuffle_each_iteration=True)
  kind = modality(tf_transform_output)
  raw_feature_spec = tf_transform_output.raw_feature_spec()
  raw_feature_spec = {
    k: v
    for k, v in raw_feature_spec.items()
    if k in features.RAW_INPUTS[kind] + (features.LABEL_KEY,)
  }
  transform_layer = tf_transform_output.transform_features_layer()

  def _transform(serialized):
    transformed = transform_layer(
      tf.io.parse_example(serialized, raw_feature_spec)
    )
    return model_inputs(transformed, kind), transformed[features.LABEL_XF]

  return (
    dataset.batch(batch_size)
    .map(_transform, num_parallel_calls=tf.data.AUTOTUNE)
    .prefetch(tf.data.AUTOTUNE)
  )


def class_names(tf_transform_output: tft.TFTransformOutput) -> List[str]:
  """Class names in label-index order, from the Transform vocabulary."""
  return [
    name.decode('utf-8')
    for name in tf_transform_output.vocabulary_by_name(
      features.LABEL_VOCABULARY
    )
  ]


def make_serving_signatures(
  model: keras.Model,
  tf_transform_output: tft.TFTransformOutput,
  names: List[str],
  max_pixels: Optional[int] = None,
):
  """The exported signatures; see the module docstring and modules/serving.py.

  Images whose header claims more than `max_pixels` (default: ingestion's)
  are not decoded.
  """
  max_pixels = max_pixels or serving.ingestion_max_pixels()
  model.tft_layer = tf_transform_output.transform_features_layer()
  model.class_names = tf.constant(names)
  kind = modality(tf_transform_output)
  raw_feature_spec = tf_transform_output.raw_feature_spec()
  serving_spec = {k: raw_feature_spec[k] for k in features.RAW_INPUTS[kind]}
  image_size = None
  if kind != features.TEXT:
    image_size = tf_transform_output.transformed_feature_spec()[
      features.IMAGE_XF
    ].shape[0]

  def _transform_text(texts):
    shape = [-1] + list(serving_spec[features.TEXT_KEY].shape)
    return model.tft_layer({features.TEXT_KEY: tf.reshape(texts, shape)})

  def _probabilities(transformed):
    logits = model(model_inputs(transformed, kind), training=False)
    return tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)

  def _predict_raw(raw):
    return serving.classify(
      raw,
      _transform_text,
      _probabilities,
      model.class_names,
      image_size,
      max_pixels,
    )

  @tf.function(
    input_signature=[tf.TensorSpec([None], tf.string, name='image_bytes')]
  )
  def serve_image_bytes(image_bytes):
    return _predict_raw({features.IMAGE_KEY: image_bytes})

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name='text')])
  def serve_text(text):
    return _predict_raw({features.TEXT_KEY: text})

  @tf.function(
    input_signature=[
      tf.TensorSpec([None], tf.string, name='image_bytes'),
      tf.TensorSpec([None], tf.string, name='text'),
    ]
  )
  def serve_image_and_text(image_bytes, text):
    return _predict_raw(
      {features.IMAGE_KEY: image_bytes, features.TEXT_KEY: text}
    )

  @tf.function(
    input_signature=[tf.TensorSpec([None], tf.string, name='examples')]
  )
  def serve_examples(serialized):
    parsed = tf.io.parse_example(serialized, serving_spec)
    return _predict_raw(
      {k: preprocessing.dense_vector(v) for k, v in parsed.items()}
    )

  @tf.function(
    input_signature=[tf.TensorSpec([None], tf.string, name='examples')]
  )
  def transform_features(serialized):
    label_spec = {features.LABEL_KEY: raw_feature_spec[features.LABEL_KEY]}
    raw = tf.io.parse_example(serialized, label_spec)
    return {features.LABEL_XF: model.tft_layer(raw)[features.LABEL_XF]}

  serve_raw = {
    features.IMAGE: serve_image_bytes,
    features.TEXT: serve_text,
    features.IMAGE_TEXT: serve_image_and_text,
  }[kind]
  return {
    'serving_default': serve_raw,
    'serving_examples': serve_examples,
    'transform_features': transform_features,
  }


def build_model(
  kind: str, config: settings_lib.TrainerConfig, num_classes: int
) -> Tuple[keras.Model, List[model_lib.AnyBackbone]]:
  """The classifier for `kind` and its towers (image first).

  Call under the precision policy and in the strategy scope.
  """
  towers = []
  if kind in (features.IMAGE, features.IMAGE_TEXT):
    towers.append(
      backbones.build_backbone(
        config.backbone, config.image_size, config.weights
      )
    )
  if kind in (features.TEXT, features.IMAGE_TEXT):
    towers.append(
      backbones.build_text_backbone(
        config.text_encoder, config.max_length, config.text_weights
      )
    )
  if config.augmentation and kind == features.TEXT:
    raise ValueError(
      'trainer.augmentation is for images; a text model has none to augment'
    )
  augmentation = augmentation_lib.build(config.augmentation, config.seed)
  if kind == features.IMAGE:
    classifier = model_lib.build_classifier(
      towers[0],
      config.image_size,
      num_classes,
      config.dropout,
      augmentation,
      config.head_weight_decay,
    )
  elif kind == features.TEXT:
    classifier = model_lib.build_text_classifier(
      towers[0],
      config.max_length,
      num_classes,
      config.dropout,
      config.head_weight_decay,
    )
  else:
    classifier = model_lib.build_fusion_classifier(
      *towers,
      config.image_size,
      config.max_length,
      num_classes,
      config.dropout,
      augmentation,
      config.head_weight_decay,
    )
  return classifier, towers


@dataclasses.dataclass
class Datasets:
  """What the phases read: (inputs, label index) batches.

  Attributes:
    train: the examples the phases fit on (the train split less validation).
    validation: held out from the train split (in_part): early stopping and
      the choice of the exported phase read only this.
    eval: the split the Evaluator's gate judges; only reported per phase,
      never used for a training decision. None: not reported.
  """

  train: tf.data.Dataset
  validation: tf.data.Dataset
  eval: Optional[tf.data.Dataset] = None


def train_phases(
  context: phases.PhaseContext,
  config: settings_lib.TrainerConfig,
  eval_dataset: Optional[tf.data.Dataset] = None,
) -> Dict[str, dict]:
  """Feature extraction, then the fine-tuning phase(s); results in order.

  The keys are 'phase1', 'phase2', ... (config.fine_tuning_phases()). Each
  tower unfreezes what its phase says for its kind (image or text). Each
  phase's result holds its `validation_accuracy` and `validation_loss`
  (and with `eval_dataset`, `eval_accuracy` and `eval_loss`); `chosen` is
  True for the one phase whose weights the classifier ends with: the best
  on validation (accuracy, then loss; the earlier phase on a tie), so a
  fine-tuning phase that hurts is not exported. Phase 1 stops early after
  `config.phase1_patience`; the others after `context.options`' patience.
  """
  classifier, strategy = context.model, context.strategy
  phase1_context = dataclasses.replace(
    context,
    options=dataclasses.replace(
      context.options, early_stopping_patience=config.phase1_patience
    ),
  )
  cache = phase1_cache_use(config)
  if cache == 'used':
    phase1 = embedding_cache.run_cached_phase1(
      phase1_context,
      config.phase1_epochs,
      config.phase1_learning_rate,
      config.batch_size * strategy.num_replicas_in_sync,
      config.seed,
      closed_form_start=config.phase1_start == 'logistic_regression',
    )
  else:
    logging.info('phase1 without the embedding cache: %s', cache)
    phase1 = phases.run_phase(
      phase1_context,
      'phase1',
      config.phase1_epochs,
      config.phase1_learning_rate,
      0,
    )
  candidates = _Candidates(classifier, strategy, eval_dataset)
  results = {
    'phase1': candidates.add('phase1', {**phase1, 'embedding_cache': cache})
  }
  fine_tune = domain_adaptation.fine_tuning_runner(config, strategy)
  for phase in config.fine_tuning_phases():
    results[phase.name] = candidates.add(
      phase.name,
      fine_tune(
        context,
        phase.name,
        phase.epochs,
        phase.learning_rate,
        phase.tower_settings(context.towers),
      ),
    )
  candidates.restore_best(results)
  return results


class _Candidates:
  """Each phase's end as a candidate for export; keeps the best's weights."""

  def __init__(
    self,
    classifier: keras.Model,
    strategy: tf.distribute.Strategy,
    eval_dataset: Optional[tf.data.Dataset],
  ):
    self.classifier, self.strategy = classifier, strategy
    self.eval_dataset = eval_dataset
    self.best, self.best_score, self.best_weights = None, None, None

  def add(self, name: str, result: dict) -> dict:
    """The phase's result, its metrics named for the split they were on."""
    # The phase validated (and reported) on the validation part.
    result['validation_accuracy'] = result.pop('eval_accuracy')
    result['validation_loss'] = result.pop('eval_loss')
    self._measure_on_eval(result)
    score = (result['validation_accuracy'], -result['validation_loss'])
    if self.best is None or score > self.best_score:
      self.best, self.best_score = name, score
      self.best_weights = [(v, v.numpy()) for v in self.classifier.weights]
    return result

  def _measure_on_eval(self, result: dict) -> None:
    """Sets `eval_accuracy` and `eval_loss`: the classifier's, as it is now."""
    if self.eval_dataset is None:
      return
    with self.strategy.scope():
      model_lib.compile_for_phase(self.classifier, 1e-3)  # For evaluate.
    loss, accuracy = self.classifier.evaluate(self.eval_dataset, verbose=0)
    result['eval_accuracy'], result['eval_loss'] = float(accuracy), float(loss)

  def restore_best(self, results: Dict[str, dict]) -> None:
    """Marks the chosen phase; loads its weights unless it was the last.

    When that is phase 1 and phase 1 had a closed-form start, the start
    refitted on the fit and validation parts (its `refit`) is loaded
    instead, whether or not phase 1's epochs beat the start on validation:
    the choices are made, and the refit learns from every train example, as
    a linear probe on the whole train split does. On held-out data it beat
    the epochs' head on four datasets of four (benchmarks/RESULTS.md (g)).
    """
    for name, result in results.items():
      result['chosen'] = name == self.best
    if self.best != list(results)[-1]:
      with self.strategy.scope():
        for variable, value in self.best_weights:
          variable.assign(value)
    print(
      f'[trainer] exported: {self.best} (validation accuracy '
      f'{self.best_score[0]:.4f}, loss {-self.best_score[1]:.4f}; the '
      f'best of {list(results)})',
      flush=True,
    )
    refit = results['phase1'].pop('refit', None)
    if refit is not None and self.best == 'phase1':
      self._export_refit(results['phase1'], refit)

  def _export_refit(self, phase1: dict, refit) -> None:
    """Loads the closed-form start refitted on fit + validation."""
    kernel, bias = refit()
    dense = self.classifier.get_layer(model_lib.LOGITS)
    with self.strategy.scope():
      dense.kernel.assign(kernel)
      dense.bias.assign(bias)
    phase1['start']['refit_exported'] = True
    self._measure_on_eval(phase1)  # The exported model's figures.
    print(
      '[trainer] phase1 exported as its closed-form start refitted with its '
      f'L2 {phase1["start"]["weight_decay"]:g} on the fit and validation '
      'parts together'
      + (
        '' if phase1['start'].get('kept') else " (in place of its epochs' head)"
      ),
      flush=True,
    )


def phase1_cache_use(config: settings_lib.TrainerConfig) -> str:
  """'used', or why phase 1 runs without the embedding cache."""
  if not config.phase1_cache:
    return 'off: phase1_cache is false'
  if config.augmentation:
    return (
      'off: augmentation is on, and cached embeddings would not see '
      'the augmented views'
    )
  return 'used'


def label_counts(
  file_pattern: List[str],
  tf_transform_output: tft.TFTransformOutput,
  num_classes: int,
  part: Optional[str] = None,
  validation_fraction: float = 0.0,
) -> np.ndarray:
  """Examples per label index (of `part`, see in_part): one pass that parses
  the labels only."""
  label_spec = {
    features.LABEL_KEY: tf_transform_output.raw_feature_spec()[
      features.LABEL_KEY
    ]
  }
  transform_layer = tf_transform_output.transform_features_layer()
  labels = (
    tf.data.TFRecordDataset(
      tf.data.Dataset.list_files(file_pattern, shuffle=False),
      compression_type='GZIP',
      num_parallel_reads=tf.data.AUTOTUNE,
    )
    .filter(lambda serialized: in_part(serialized, part, validation_fraction))
    .batch(1024)
    .map(
      lambda serialized: transform_layer(
        tf.io.parse_example(serialized, label_spec)
      )[features.LABEL_XF]
    )
  )
  counts = np.zeros(num_classes, np.int64)
  for batch in labels:
    indices = batch.numpy().reshape(-1)
    counts += np.bincount(indices[indices >= 0], minlength=num_classes)
  return counts


def class_weights(
  setting, names: List[str], counts: Optional[np.ndarray]
) -> Optional[Dict[int, float]]:
  """{label index: weight} for `setting`, or None for 'none'.

  'balanced': n / (classes x n_class), so every class weighs the same in
  total (a class with no train examples gets 1). A mapping: {class name:
  weight}; classes it leaves out get 1.
  """
  if setting == 'none':
    return None
  if setting == 'balanced':
    total, present = int(counts.sum()), counts > 0
    return {
      i: (total / (len(names) * int(count)) if present[i] else 1.0)
      for i, count in enumerate(counts)
    }
  unknown = sorted(set(setting) - set(names))
  if unknown:
    raise ValueError(
      f'trainer.class_weights: unknown class(es) {unknown}; '
      f'the classes are {names}'
    )
  return {i: float(setting.get(name, 1.0)) for i, name in enumerate(names)}


def tuned_config(
  custom_config: Dict[str, Any], hyperparameters: Optional[Dict[str, Any]]
) -> Tuple[settings_lib.TrainerConfig, Dict[str, Any]]:
  """The settings, with the Tuner's best values (TUNABLE) over them.

  `hyperparameters` is a KerasTuner HyperParameters config (TFX's Tuner ->
  Trainer `best_hyperparameters`), or None without a Tuner.
  """
  tuned = {
    key: value
    for key, value in ((hyperparameters or {}).get('values') or {}).items()
    if key in TUNABLE
  }
  return settings_lib.TrainerConfig.from_dict(
    {**(custom_config or {}), **tuned}
  ), tuned


def validation_summary(
  config: settings_lib.TrainerConfig,
  fit_counts: np.ndarray,
  validation_counts: np.ndarray,
) -> Dict[str, Any]:
  """How the train split was divided; raises when validation is empty."""
  if not validation_counts.sum() or not fit_counts.sum():
    raise ValueError(
      f'trainer.validation_fraction {config.validation_fraction} left '
      f'{int(fit_counts.sum())} examples to fit on and '
      f'{int(validation_counts.sum())} to validate on; the train split is '
      'too small to hold out a validation part, add examples.'
    )
  return {
    'method': 'hash of each serialized train example into 1000 buckets; '
    'the first validation_fraction of them validate',
    'fraction': config.validation_fraction,
    'fit_examples': int(fit_counts.sum()),
    'validation_examples': int(validation_counts.sum()),
    'used_for': 'phase early stopping and the choice of the exported '
    'phase; the eval split is never used for either',
  }


def run_fn(fn_args: tfx.components.FnArgs):
  """TFX Trainer entry point."""
  config, tuned = tuned_config(
    fn_args.custom_config, getattr(fn_args, 'hyperparameters', None)
  )
  keras.utils.set_random_seed(config.seed)
  tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
  names = class_names(tf_transform_output)
  kind = modality(tf_transform_output)
  strategy = tf.distribute.MirroredStrategy()
  global_batch = config.batch_size * strategy.num_replicas_in_sync
  logging.info(
    'Training a %s model for %d classes %s on %d replica(s), global batch %d',
    kind,
    len(names),
    names,
    strategy.num_replicas_in_sync,
    global_batch,
  )

  counts = {
    part: label_counts(
      fn_args.train_files,
      tf_transform_output,
      len(names),
      part,
      config.validation_fraction,
    )
    for part in (FIT, VALIDATION)
  }
  validation = validation_summary(config, counts[FIT], counts[VALIDATION])
  print(
    f'[trainer] train split: {validation["fit_examples"]} to fit, '
    f'{validation["validation_examples"]} to validate on',
    flush=True,
  )
  datasets = Datasets(
    train=make_dataset(
      fn_args.train_files,
      tf_transform_output,
      global_batch,
      shuffle=True,
      seed=config.seed,
      part=FIT,
      validation_fraction=config.validation_fraction,
    ),
    validation=make_dataset(
      fn_args.train_files,
      tf_transform_output,
      global_batch,
      shuffle=False,
      part=VALIDATION,
      validation_fraction=config.validation_fraction,
    ),
    eval=make_dataset(
      fn_args.eval_files, tf_transform_output, global_batch, shuffle=False
    ),
  )
  options = phases.FitOptions.from_config(
    config,
    class_weight=class_weights(config.class_weights, names, counts[FIT]),
    steps_per_epoch=math.ceil(int(counts[FIT].sum()) / global_batch),
  )
  with model_lib.precision_policy(config.precision):
    with strategy.scope():
      classifier, towers = build_model(kind, config, len(names))
    tensorboard = keras.callbacks.TensorBoard(
      log_dir=fn_args.model_run_dir, update_freq='epoch'
    )
    context = phases.PhaseContext(
      classifier,
      towers,
      strategy,
      datasets.train,
      datasets.validation,
      options,
      callbacks=[tensorboard],
    )
    results = train_phases(context, config, datasets.eval)
    signatures = make_serving_signatures(
      classifier,
      tf_transform_output,
      names,
      max_pixels=serving.ingestion_max_pixels(fn_args.train_files),
    )
    tf.saved_model.save(
      classifier, fn_args.serving_model_dir, signatures=signatures
    )
  summary = {
    'config': dataclasses.asdict(config),
    'modality': kind,
    'class_names': names,
    'replicas': strategy.num_replicas_in_sync,
    'global_batch_size': global_batch,
    'class_weight': options.class_weight,
    'validation': validation,
    'hyperparameters': tuned or None,
    'phases': list(results),
    'chosen': next(
      name for name, result in results.items() if result['chosen']
    ),
    **results,
  }
  tf.io.gfile.makedirs(fn_args.model_run_dir)
  with tf.io.gfile.GFile(
    os.path.join(fn_args.model_run_dir, TRAINING_SUMMARY_FILE), 'w'
  ) as f:
    json.dump(summary, f, indent=2)
