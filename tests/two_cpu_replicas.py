"""Two logical CPU devices standing in for two GPUs; import before TensorFlow.

Logical devices must be configured before TensorFlow initializes its devices,
so the scripts that import this run in a subprocess.

oneDNN is off. Its convolution (tensorflow/core/kernels/mkl/mkl_conv_ops.cc,
`MklConvOp::Compute`) allocates a zero-example batch's output with the
input's shape, so a replica handed an empty part of a last global batch fails
("input depth must be evenly divisible by filter depth: 3 vs 32").
TensorFlow's own kernels, which GPUs run (tensorflow/core/kernels/
conv_ops_impl.h, `Conv2DOp::Compute`), allocate the output's shape. The
Trainer's MirroredStrategy on a machine without GPUs has one CPU replica,
which never gets an empty batch.
"""

import os

os.environ['TF_USE_LEGACY_KERAS'] = '1'
os.environ['TF_ENABLE_ONEDNN_OPTS'] = '0'
import tensorflow as tf

tf.config.set_logical_device_configuration(
  tf.config.list_physical_devices('CPU')[0],
  [tf.config.LogicalDeviceConfiguration()] * 2,
)
