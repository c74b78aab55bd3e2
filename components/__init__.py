"""Custom TFX components: the image and text ExampleGens, the atomic Pusher."""
