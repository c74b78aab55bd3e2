"""TFX user modules: Transform preprocessing, Trainer run_fn, models."""

import os

# TF 2.16 defaults to Keras 3, but TFT 1.16 and TFMA 0.47 use tf_keras. Pin
# tf_keras for everything imported after this package (tests assert it).
os.environ['TF_USE_LEGACY_KERAS'] = '1'
