"""Runs a compiled PipelineSpec on this machine the way KFP's v2 backend does.

For each task in DAG order: its parameters (constants and pipeline
parameters), its input artifacts (upstream outputs with the metadata their
executors reported), its trigger condition; then the executor's container
command (TFX's V2 entrypoint) in a subprocess, with `{{$}}` replaced by the
ExecutorInput JSON, as KFP's launcher does; then the ExecutorOutput the
entrypoint wrote. Not emulated: the image (this virtualenv's Python runs the
command), the cache, retries, and the Vertex-only `preCacheCheck` hook.
"""

import dataclasses
import json
import os
import re
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence

_CONDITION = re.compile(
    r"^\(inputs\.artifacts\['([^']+)'\]\.artifacts\[0\]\.metadata\['([^']+)'\]"
    r' == ([0-9.]+)\)$')


@dataclasses.dataclass
class TaskResult:
  """What a task did: 'succeeded' or 'skipped', and its output artifacts."""
  state: str
  outputs: Dict[str, List[Dict[str, Any]]]


def _order(tasks: Dict[str, Any]) -> List[str]:
  """Task names, each after the tasks it depends on."""
  done, order = set(), []
  while len(order) < len(tasks):
    ready = sorted(
        name for name, task in tasks.items() if name not in done and
        set(task.get('dependentTasks', [])) <= done)
    if not ready:
      raise ValueError(f'Cycle among {sorted(set(tasks) - done)}')
    done.update(ready)
    order.extend(ready)
  return order


def _parameters(task: Dict[str, Any], pipeline_parameters: Dict[str, Any]):
  values = {}
  for name, source in task.get('inputs', {}).get('parameters', {}).items():
    if 'componentInputParameter' in source:
      values[name] = pipeline_parameters[source['componentInputParameter']]
    else:
      values[name] = source['runtimeValue']['constant']
  return values


def _triggered(task: Dict[str, Any], artifacts: Dict[str, Any]) -> bool:
  condition = task.get('triggerPolicy', {}).get('condition')
  if not condition:
    return True
  match = _CONDITION.match(condition)
  if not match:
    raise ValueError(f'Condition not emulated: {condition}')
  key, field, value = match.groups()
  metadata = artifacts[key]['artifacts'][0].get('metadata', {})
  return float(metadata.get(field, float('nan'))) == float(value)


def run(spec: Dict[str, Any],
        run_root: str,
        parameters: Optional[Dict[str, Any]] = None,
        only: Optional[Sequence[str]] = None,
        upstream: Optional[Dict[str, TaskResult]] = None,
        log_dir: Optional[str] = None) -> Dict[str, TaskResult]:
  """Runs the tasks of `spec` (or `only` these, taking the others' outputs
  from `upstream`, like KFP's cache) with output artifacts under `run_root`.

  Args:
    spec: The PipelineSpec.
    run_root: Each task's outputs go to `<run_root>/<task>/<output>`.
    parameters: Pipeline parameters; the others take their defaults.
    only: The tasks to run; default all.
    upstream: Results of tasks not run, for their outputs.
    log_dir: Where each task's stdout/stderr go (`<task>.log`); default
      `run_root`.

  Returns:
    Each task's result.

  Raises:
    RuntimeError: A task's command failed; the message ends with its log.
  """
  pipeline_parameters = {
      name: definition.get('defaultValue')
      for name, definition in spec['root'].get('inputDefinitions', {}).get(
          'parameters', {}).items()
  }
  pipeline_parameters.update(parameters or {})
  tasks = spec['root']['dag']['tasks']
  results = dict(upstream or {})
  log_dir = log_dir or run_root
  os.makedirs(log_dir, exist_ok=True)
  for name in _order(tasks):
    if only is not None and name not in only:
      continue
    task = tasks[name]
    component = spec['components'][task['componentRef']['name']]
    artifacts = {
        key: {'artifacts': results[source['taskOutputArtifact']
                                   ['producerTask']].outputs[
                                       source['taskOutputArtifact']
                                       ['outputArtifactKey']]}
        for key, source in task.get('inputs', {}).get('artifacts',
                                                      {}).items()
    }
    if not _triggered(task, artifacts):
      results[name] = TaskResult('skipped', {})
      continue
    outputs = {
        key: {'artifacts': [{
            'name': f'{name}-{key}',
            'type': definition['artifactType'],
            'uri': os.path.join(run_root, name, key),
            'metadata': {},
        }]}
        for key, definition in component.get('outputDefinitions', {}).get(
            'artifacts', {}).items()
    }
    output_file = os.path.join(run_root, name, 'executor_output.json')
    executor_input = {
        'inputs': {'parameterValues': _parameters(task, pipeline_parameters),
                   'artifacts': artifacts},
        'outputs': {'artifacts': outputs, 'outputFile': output_file},
    }
    container = spec['deploymentSpec']['executors'][
        component['executorLabel']]['container']
    command = [sys.executable if word == 'python' else word
               for word in container['command']]
    args = [json.dumps(executor_input) if arg == '{{$}}' else arg
            for arg in container['args']]
    if any('{{' in arg for arg in args):
      raise ValueError(f'{name}: placeholder not emulated in {args}')
    log_path = os.path.join(log_dir, f'{name}.log')
    with open(log_path, 'w') as log:
      returncode = subprocess.call(command + args, stdout=log,
                                   stderr=subprocess.STDOUT)
    if returncode:
      with open(log_path) as log:
        raise RuntimeError(f'{name} failed ({returncode}):\n'
                           + log.read()[-6000:])
    with open(output_file) as f:
      reported = json.load(f).get('artifacts', {})
    # Downstream tasks get what the executor reported (uri, metadata) with
    # the declared type, as KFP's driver does from MLMD.
    results[name] = TaskResult('succeeded', {
        key: [{**artifact, 'type': value['artifacts'][0]['type']}
              for artifact in reported.get(key, value)['artifacts']]
        for key, value in outputs.items()
    })
  return results
