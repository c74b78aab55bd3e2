"""Learning-rate schedules of a training phase, by name.

  * `constant` (the default): the phase's learning rate throughout.
  * `exponential`: multiplied by `lr_decay_rate` per epoch (smoothly, per
    step).
  * `cosine`: a linear warm-up from 0 over `lr_warmup_epochs`, then a cosine
    decay to 0 at the phase's last step.

Every phase starts its schedule afresh (each compiles a new optimizer).
"""

import math
from typing import Optional, Union

import tf_keras as keras

from pipeline import settings as settings_lib

SCHEDULES = settings_lib.LR_SCHEDULES
CONSTANT, EXPONENTIAL, COSINE = SCHEDULES
LearningRate = Union[float, keras.optimizers.schedules.LearningRateSchedule]


def learning_rate(
  name: str,
  base: float,
  epochs: int,
  steps_per_epoch: Optional[int],
  decay_rate: float,
  warmup_epochs: float,
) -> LearningRate:
  """The optimizer's learning rate for one phase of `epochs` epochs."""
  if name == CONSTANT:
    return base
  if name not in SCHEDULES:
    raise ValueError(f'Unknown lr_schedule {name!r}; one of {list(SCHEDULES)}')
  if not steps_per_epoch:
    raise ValueError(f'lr_schedule {name!r} needs the steps per epoch.')
  if name == EXPONENTIAL:
    return keras.optimizers.schedules.ExponentialDecay(
      base, decay_steps=steps_per_epoch, decay_rate=decay_rate
    )
  total = max(1, epochs * steps_per_epoch)
  warmup = min(total - 1, math.ceil(warmup_epochs * steps_per_epoch))
  if warmup <= 0:
    return keras.optimizers.schedules.CosineDecay(base, decay_steps=total)
  return keras.optimizers.schedules.CosineDecay(
    0.0, decay_steps=total - warmup, warmup_target=base, warmup_steps=warmup
  )
