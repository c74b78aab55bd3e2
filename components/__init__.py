"""Custom TFX components (the image ExampleGen)."""
