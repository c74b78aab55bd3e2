"""Entry point of `python -m kubeflow` (see kubeflow/cli.py)."""

import sys

from kubeflow import cli

if __name__ == '__main__':
  sys.exit(cli.main())
