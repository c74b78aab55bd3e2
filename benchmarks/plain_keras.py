"""The plain Keras script a user would write instead of the pipeline.

The two-phase recipe of the Keras transfer-learning guide: images loaded from
the folders with image_dataset_from_directory, a frozen MobileNet base + new
head fitted, the top layers unfrozen and fine-tuned at a 10x lower learning
rate, then tf.saved_model.save. The constants are the pipeline demo's
defaults (pipeline/settings.py TrainerConfig; benchmarks/pipeline_vs_keras.py
checks they match). BatchNorm layers stay frozen in fine-tuning, as in the
pipeline, so both train the same weights. The weights are the same offline
ImageNet MobileNet the pipeline uses (`weights='imagenet'` needs internet).
Only TensorFlow and tf_keras are imported, as a plain script would.

  .venv/bin/python benchmarks/plain_keras.py --data DIR --export DIR
DIR holds train/<class>/* and eval/<class>/*.
"""

import argparse
import json
import os
import sys
import time

os.environ['TF_USE_LEGACY_KERAS'] = '1'
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tensorflow as tf
import tf_keras as keras

from modules import pretrained_weights  # The offline weights' file only.

IMAGE_SIZE, BATCH_SIZE, SEED = 96, 32, 42
PHASE1_EPOCHS, PHASE1_LEARNING_RATE = 5, 1e-3
PHASE2_EPOCHS, PHASE2_LEARNING_RATE = 2, 1e-4
FINE_TUNE_LAYERS, DROPOUT = 20, 0.2


def train(
  data_dir: str, export_dir: str, phase1_epochs: int, phase2_epochs: int
):
  """Trains and exports; returns the model and the eval dataset."""
  keras.utils.set_random_seed(SEED)
  train_ds, eval_ds = (
    keras.utils.image_dataset_from_directory(
      os.path.join(data_dir, split),
      image_size=(IMAGE_SIZE, IMAGE_SIZE),
      batch_size=BATCH_SIZE,
      shuffle=split == 'train',
      seed=SEED,
    ).prefetch(tf.data.AUTOTUNE)
    for split in ('train', 'eval')
  )
  num_classes = len(os.listdir(os.path.join(data_dir, 'train')))

  base = keras.applications.MobileNet(
    input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
    include_top=False,
    pooling='avg',
    weights=pretrained_weights.offline_mobilenet_weights(),
  )
  base.trainable = False
  inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
  x = keras.applications.mobilenet.preprocess_input(inputs)
  x = base(x, training=False)
  x = keras.layers.Dropout(DROPOUT)(x)
  model = keras.Model(inputs, keras.layers.Dense(num_classes)(x))

  def fit(learning_rate, epochs):
    model.compile(
      optimizer=keras.optimizers.Adam(learning_rate),
      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      metrics=['accuracy'],
    )
    model.fit(train_ds, validation_data=eval_ds, epochs=epochs, verbose=2)

  fit(PHASE1_LEARNING_RATE, phase1_epochs)
  base.trainable = True
  for i, layer in enumerate(base.layers):
    layer.trainable = i >= len(
      base.layers
    ) - FINE_TUNE_LAYERS and not isinstance(
      layer, keras.layers.BatchNormalization
    )
  fit(PHASE2_LEARNING_RATE, phase2_epochs)
  tf.saved_model.save(model, export_dir)
  return model, eval_ds


def main():
  started = time.time()
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data', required=True)
  parser.add_argument('--export', required=True)
  parser.add_argument('--epochs', default=f'{PHASE1_EPOCHS},{PHASE2_EPOCHS}')
  parser.add_argument('--result', help='writes times and accuracy as JSON')
  args = parser.parse_args()
  model, eval_ds = train(
    args.data, args.export, *map(int, args.epochs.split(','))
  )
  finished = time.time()
  accuracy = model.evaluate(eval_ds, verbose=0)[1]
  print(f'eval accuracy {accuracy:.4f}, {finished - started:.1f} s')
  if args.result:
    with open(args.result, 'w') as f:
      json.dump(
        {'started': started, 'finished': finished, 'accuracy': accuracy}, f
      )


if __name__ == '__main__':
  main()
