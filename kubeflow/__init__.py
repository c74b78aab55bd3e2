"""Kubeflow Pipelines: compile the pipeline to IR, upload, schedule, run."""
