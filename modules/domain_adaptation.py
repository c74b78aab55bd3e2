"""Unsupervised domain adaptation with a gradient-reversal layer (DANN).

Domain-adversarial training (Ganin & Lempitsky, 2015; Ganin et al., JMLR
2016) adds a domain head next to the label head: both read the classifier's
pooled backbone features, the domain head through a gradient-reversal layer
(GRL: identity forward, gradient multiplied by -lambda backward). The domain
head learns to tell source (labelled) from target (unlabelled) images; the
reversed gradient pushes the trainable backbone layers towards features in
which the two domains look alike, while the label head keeps them
discriminative for the source labels.

One DANN step over a labelled source batch and an unlabelled target batch
minimizes

  loss = label cross-entropy on the source
         + weight * domain binary cross-entropy on source and target

so the domain head gets `weight` times the domain gradient, the label head
the source label gradient only, and the trainable feature layers the label
gradient minus `weight * lambda(p)` times the domain gradient. The domain
head has its own Adam optimizer at `domain_learning_rate` (default 1e-3, the
phase-1 rate): at the fine-tuning rate (1e-4) the new head was outrun by the
features, which then flipped its predictions (domain accuracy 0, loss
growing without bound) instead of confusing it. With
`schedule: ganin` lambda ramps from 0 to 1 over the adapted training,
lambda(p) = 2 / (1 + exp(-10 p)) - 1, p = step / total steps (the paper's
schedule: the domain head's early, noisy signal barely reaches the
features); with `schedule: constant` lambda is 1 throughout.

DANN applies to the fine-tuning phases only (phase 2, or each of `phases`
with progressive unfreezing; the lambda ramp restarts in each): it needs
trainable feature layers, and in phase 1 the backbone is frozen (with the
cached phase 1 it is not even run). Image models only. The logged `loss` and
`accuracy` are the source label loss and accuracy; `domain_loss` and
`domain_accuracy` are the domain head's (0.5 accuracy: a confused head).
The exported model is the plain classifier: the GRL and the domain head live
in a training-only wrapper (`DannModel`) and are not in the serving graph.

Measured on the demo data (benchmarks/RESULTS.md, (e)): on a noise-shifted
target, DANN did not beat plain fine-tuning (weight 0.1: equal; 1.0: worse).
"""

import dataclasses
import functools
import math
import os
from typing import Dict, List, Optional

import tensorflow as tf
import tf_keras as keras

from modules import model as model_lib
from modules import phases
from modules import preprocessing
from pipeline import settings as settings_lib

DOMAIN_HEAD = 'domain_head'


def ganin_lambda(progress: float) -> float:
  """The DANN ramp 2 / (1 + exp(-10 p)) - 1 for progress p in [0, 1]."""
  return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0


@tf.custom_gradient
def reverse_gradient(x: tf.Tensor, scale: tf.Tensor):
  """Identity on `x`; the gradient to `x` is -scale times the upstream one."""

  def grad(upstream):
    return -tf.cast(scale, upstream.dtype) * upstream, tf.zeros_like(scale)

  return tf.identity(x), grad


class GradientReversal(keras.layers.Layer):
  """Identity forward; multiplies the gradient by -scale backward.

  `scale` (lambda) is a non-trainable variable, so a schedule can change it
  between steps (`assign_scale`) without retracing the training step.
  """

  def __init__(self, scale: float = 1.0, **kwargs):
    super().__init__(**kwargs)
    self.scale = self.add_weight(
      name='scale',
      shape=(),
      dtype=tf.float32,
      trainable=False,
      initializer=keras.initializers.Constant(scale),
    )

  def call(self, inputs):
    return reverse_gradient(inputs, tf.convert_to_tensor(self.scale))

  def assign_scale(self, scale: float) -> None:
    self.scale.assign(scale)

  def get_config(self):
    return {
      **super().get_config(),
      'scale': float(keras.backend.get_value(self.scale)),
    }


def _is_image(name: str) -> bool:
  return name.lower().endswith(settings_lib.IMAGE_EXTENSIONS)


def list_target_images(root: str) -> List[str]:
  """Every image file below `root`, at any depth, sorted."""
  return sorted(
    os.path.join(directory, name)
    for directory, _, names in tf.io.gfile.walk(root)
    for name in names
    if _is_image(name)
  )


def target_dataset(
  root: str, image_size: int, batch_size: int, seed: int
) -> tf.data.Dataset:
  """Endless shuffled batches of target images, decoded like the Transform.

  The same `preprocessing.decode_and_resize` as training and serving, in a
  parallel map: float32 [batch, size, size, 3] in [0, 255].
  """
  paths = list_target_images(root)
  dataset = (
    tf.data.Dataset.from_tensor_slices(paths)
    .shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    .repeat()
    .batch(batch_size, drop_remainder=True)
  )

  def _load(batch_paths):
    return preprocessing.decode_and_resize(
      tf.map_fn(tf.io.read_file, batch_paths), image_size
    )

  return dataset.map(_load, num_parallel_calls=tf.data.AUTOTUNE)


def adaptation_dataset(
  source: tf.data.Dataset, target: tf.data.Dataset, steps: Optional[int] = None
) -> tf.data.Dataset:
  """((source inputs, labels), target images) batches, one source pass.

  The target batches repeat, so an epoch is one pass over the source. Its
  `steps` (source batches) are made known to Keras, for the lambda schedule;
  None: the source's cardinality, else one counting pass over it.
  """
  if steps is None:
    steps = int(source.cardinality())
  if steps < 0:
    steps = int(source.reduce(0, lambda count, _: count + 1))
  return (
    tf.data.Dataset.zip((source, target))
    .apply(tf.data.experimental.assert_cardinality(steps))
    .prefetch(tf.data.AUTOTUNE)
  )


class DannModel(keras.Model):
  """Training-only wrapper: the classifier plus GRL and domain head.

  The label head and the features are the classifier's own layers, so
  training this model trains the classifier, which is what gets exported.
  `fit` takes ((source inputs, labels), target inputs) batches; `evaluate`
  and `predict` take the classifier's own batches and use the classifier
  alone.
  """

  def __init__(
    self,
    classifier: keras.Model,
    weight: float,
    hidden_units: int,
    domain_learning_rate: float = 1e-3,
    scale: float = 1.0,
    class_weight: Optional[Dict[int, float]] = None,
    **kwargs,
  ):
    """The wrapper; build it in the classifier's strategy scope.

    Args:
      classifier: the classifier to train (its head input is the features).
      weight: the domain loss's weight.
      hidden_units: the domain head's hidden width.
      domain_learning_rate: the domain head optimizer's (Adam); `compile`
        gives the optimizer of the classifier's weights.
      scale: the GRL's initial lambda.
      class_weight: {label index: weight} for the source label loss, as
        Keras' `fit(class_weight=...)` (which cannot see the source labels
        inside this model's batches).
      **kwargs: for keras.Model.
    """
    super().__init__(**kwargs)
    self.classifier = classifier
    self.domain_weight = weight
    self.label_weights = None
    if class_weight:
      self.label_weights = tf.constant(
        [class_weight.get(i, 1.0) for i in range(max(class_weight) + 1)],
        tf.float32,
      )
    self.reversal = GradientReversal(scale, name='gradient_reversal')
    self.domain_head = keras.Sequential(
      [
        keras.layers.Dense(hidden_units, activation='relu'),
        keras.layers.Dense(1, dtype='float32'),  # Even under mixed precision.
      ],
      name=DOMAIN_HEAD,
    )
    self.domain_optimizer = keras.optimizers.Adam(domain_learning_rate)
    if self.dtype_policy.name == 'mixed_float16':
      self.domain_optimizer = keras.mixed_precision.LossScaleOptimizer(
        self.domain_optimizer
      )
    features = classifier.get_layer(model_lib.HEAD_DROPOUT).input
    # One pass of the shared layers gives both heads' inputs.
    self.heads = keras.Model(
      classifier.inputs,
      [classifier.outputs[0], self.domain_head(self.reversal(features))],
      name='dann_heads',
    )
    self.domain_loss_tracker = keras.metrics.Mean(name='domain_loss')
    self.domain_accuracy = keras.metrics.BinaryAccuracy(
      name='domain_accuracy', threshold=0.0
    )  # On logits.

  def call(self, inputs, training=None):
    return self.classifier(inputs, training=training)

  def losses_on(
    self, source_inputs, source_labels, target_inputs, training: bool = True
  ) -> Dict[str, tf.Tensor]:
    """The step's losses; the label loss reads the source logits only.

    Returns:
      `loss` (the total, scaled for distribution as Keras scales its compiled
      loss), `domain_loss` (the unscaled mean), and the `source_logits`,
      `domain_logits` and `domain_labels` (0 source, 1 target).
    """
    num_source = tf.shape(tf.nest.flatten(source_inputs)[0])[0]
    both = tf.nest.map_structure(
      lambda s, t: tf.concat([s, t], axis=0), source_inputs, target_inputs
    )
    logits, domain_logits = self.heads(both, training=training)
    domain_logits = tf.reshape(domain_logits, [-1])
    domain_labels = tf.concat(
      [
        tf.zeros([num_source]),
        tf.ones([tf.shape(domain_logits)[0] - num_source]),
      ],
      axis=0,
    )
    per_example = tf.nn.sigmoid_cross_entropy_with_logits(
      labels=domain_labels, logits=domain_logits
    )
    source_logits = logits[:num_source]
    label_weights = (
      None
      if self.label_weights is None
      else tf.gather(self.label_weights, source_labels)
    )
    label_loss = self.compiled_loss(
      source_labels,
      source_logits,
      sample_weight=label_weights,
      regularization_losses=self.losses,
    )
    return {
      'loss': label_loss
      + self.domain_weight * tf.nn.compute_average_loss(per_example),
      'domain_loss': tf.reduce_mean(per_example),
      'source_logits': source_logits,
      'domain_logits': domain_logits,
      'domain_labels': domain_labels,
    }

  def train_step(self, data):
    (source_inputs, source_labels), target_inputs = data
    with tf.GradientTape(persistent=True) as tape:
      out = self.losses_on(source_inputs, source_labels, target_inputs)
    domain = self.domain_head.trainable_variables
    domain_refs = {v.ref() for v in domain}
    self.optimizer.minimize(
      out['loss'],
      [v for v in self.trainable_variables if v.ref() not in domain_refs],
      tape=tape,
    )
    self.domain_optimizer.minimize(out['loss'], domain, tape=tape)
    self.compiled_metrics.update_state(source_labels, out['source_logits'])
    self.domain_loss_tracker.update_state(out['domain_loss'])
    self.domain_accuracy.update_state(
      out['domain_labels'], out['domain_logits']
    )
    return {
      **{m.name: m.result() for m in self.metrics},
      'reversal_scale': tf.convert_to_tensor(self.reversal.scale),
    }

  def test_step(self, data):
    inputs, labels = data
    logits = self.classifier(inputs, training=False)
    self.compiled_loss(labels, logits, regularization_losses=self.losses)
    self.compiled_metrics.update_state(labels, logits)
    # Only the classifier's loss and metrics: the domain ones need target data.
    return {
      m.name: m.result()
      for m in self.compiled_loss.metrics + self.compiled_metrics.metrics
    }


class ReversalSchedule(keras.callbacks.Callback):
  """Sets the GRL's lambda before each step: ganin_lambda(step / total)."""

  def __init__(self, reversal: GradientReversal):
    super().__init__()
    self.reversal = reversal
    self.step = 0

  def on_train_begin(self, logs=None):
    if not self.params.get('steps'):
      raise ValueError(
        'The lambda schedule needs the number of steps per '
        'epoch; build the dataset with adaptation_dataset.'
      )
    self.total_steps = self.params['epochs'] * self.params['steps']
    self.step = 0

  def on_train_batch_begin(self, batch, logs=None):
    self.reversal.assign_scale(ganin_lambda(self.step / self.total_steps))
    self.step += 1


def run_adapted_phase(
  context: phases.PhaseContext,
  name: str,
  epochs: int,
  learning_rate: float,
  fine_tune_layers: phases.FineTuneLayers,
  *,
  settings: settings_lib.DomainAdaptationConfig,
  image_size: int,
  batch_size: int,
  seed: int,
) -> dict:
  """phases.run_phase for a fine-tuning phase, trained with DANN.

  The arguments up to `fine_tune_layers` are run_phase's; `context.model`
  must be an image classifier (build_classifier) with one backbone, of which
  the phase must unfreeze some layers (DANN adapts them).

  Args:
    context, name, epochs, learning_rate, fine_tune_layers: as run_phase's;
      context.train holds the labelled source batches.
    settings: the checked domain_adaptation settings.
    image_size: the Transform's image size, for the target images.
    batch_size: global batch size of the target batches (as the source's).
    seed: the target shuffle's.

  Returns:
    run_phase's result plus `domain_adaptation`: the settings and the number
    of target images.
  """
  model, towers, strategy = context.model, context.towers, context.strategy
  if (
    len(towers) != 1
    or len(model.inputs) != 1
    or model.inputs[0].shape.rank != 4
  ):
    raise ValueError(
      f'domain_adaptation is for image models; this model takes {model.inputs}.'
    )
  setting = (
    fine_tune_layers[0]
    if isinstance(fine_tune_layers, (list, tuple))
    else fine_tune_layers
  )
  with strategy.scope():
    if not model_lib.unfreeze(towers[0], setting):
      raise ValueError(
        f'domain_adaptation: {name} unfreezes no backbone layer '
        f'({setting!r}), so the reversed domain gradient would '
        'train nothing; unfreeze some layers.'
      )
  options = context.options
  with strategy.scope():
    dann = DannModel(
      model,
      settings.weight,
      settings.hidden_units,
      settings.domain_learning_rate,
      class_weight=options.class_weight,
    )
  schedule = (
    [ReversalSchedule(dann.reversal)] if settings.schedule == 'ganin' else []
  )
  target = target_dataset(
    settings.target_data_root, image_size, batch_size, seed
  )
  adapted = dataclasses.replace(
    context,
    model=dann,
    train=adaptation_dataset(context.train, target, options.steps_per_epoch),
    callbacks=list(context.callbacks) + schedule,
    options=dataclasses.replace(options, class_weight=None),
  )
  result = phases.run_phase(
    adapted, name, epochs, learning_rate, fine_tune_layers
  )
  result['domain_adaptation'] = {
    **dataclasses.asdict(settings),
    'target_images': len(list_target_images(settings.target_data_root)),
  }
  return result


def fine_tuning_runner(config, strategy: tf.distribute.Strategy):
  """The function that runs the trainer's fine-tuning phases.

  Args:
    config: the trainer settings (pipeline/settings.py TrainerConfig).
    strategy: the training strategy (for the global batch size).

  Returns:
    phases.run_phase when `config.domain_adaptation` is empty, else
    run_adapted_phase with the settings bound (same call signature).
  """
  settings = config.domain_adaptation
  if settings is None:
    return phases.run_phase
  return functools.partial(
    run_adapted_phase,
    settings=settings,
    image_size=config.image_size,
    batch_size=config.batch_size * strategy.num_replicas_in_sync,
    seed=config.seed,
  )
