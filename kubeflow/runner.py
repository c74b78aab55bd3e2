"""Compiles the pipeline into Kubeflow Pipelines IR with KubeflowV2DagRunner.

The IR holds the pipeline definition that the local runner runs
(`pipeline.pipeline.create_pipeline`), built for a cluster:

* User code is named by import path (`modules.trainer.run_fn`), since the
  image (kubeflow/Dockerfile) contains it; nothing is packaged under the
  pipeline root at compile time. KFP's cache keys see the image, not the code:
  give the image a new tag whenever the code changes.
* data_root, the Evaluator's gate and the Trainer's settings are runtime
  parameters (`pipeline.pipeline.runtime_parameters`).
* The Trainer can request CPUs, memory and GPUs.
* Every component runs kubeflow/entrypoint.py, TFX's V2 entrypoint given
  back the input artifact types that KFP's driver drops.
* Persistent volume claims can be mounted into every step, for the data: the
  pipeline root must be an object store (gs://, s3://), as KFP requires.

The output is a bare PipelineSpec (schema 2.1.0) as JSON, what the KFP API
server accepts as a pipeline version; with volumes, a YAML file holding it
and a PlatformSpec (the kfp-kubernetes `pvcMount` of each executor). What TFX
1.16 emits is compiled with schema 2.1 (`compile_pipeline`) and then gets
five fixes (`_fix_for_kfp`).
"""

import dataclasses
import json
import os
import posixpath
import re
from typing import Any, Dict, Optional, Sequence

import yaml

from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
from tfx import components as tfx_components
from tfx import v1 as tfx
from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

from components import serving_baseline_evaluator
from pipeline import pipeline as pipeline_lib
from pipeline import settings as settings_lib

# Where kubeflow/Dockerfile puts the project, and the demo data inside it.
IMAGE_PROJECT_ROOT = settings_lib.IMAGE_PROJECT_ROOT
IMAGE_DEMO_DATA = settings_lib.IMAGE_DEMO_DATA
# The command of every component (kubeflow/entrypoint.py).
ENTRYPOINT = ('python', '-m', 'kubeflow.entrypoint')

ResourceSpec = (
  pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec
)


@dataclasses.dataclass(frozen=True)
class TrainerResources:
  """What the Trainer's pod asks for (requests = limits); unset: no request.

  Attributes:
    cpu: Cores.
    memory_gb: Memory in GB.
    gpus: Number of accelerators of `gpu_type`, a Kubernetes resource name.
  """

  cpu: Optional[float] = None
  memory_gb: Optional[float] = None
  gpus: int = 0
  gpu_type: str = 'nvidia.com/gpu'

  def __post_init__(self):
    for name in ('cpu', 'memory_gb'):
      value = getattr(self, name)
      if value is not None and value <= 0:
        raise ValueError(f'Trainer {name} must be > 0, got {value}')
    if self.gpus < 0:
      raise ValueError(f'Trainer gpus must be >= 0, got {self.gpus}')

  def resource_spec(self) -> Optional[ResourceSpec]:
    if self.cpu is None and self.memory_gb is None and not self.gpus:
      return None
    spec = ResourceSpec()
    if self.cpu is not None:
      spec.cpu_request = spec.cpu_limit = self.cpu
    if self.memory_gb is not None:
      spec.memory_request = spec.memory_limit = self.memory_gb
    if self.gpus:
      spec.accelerator.type = self.gpu_type
      spec.accelerator.count = self.gpus
    return spec


@dataclasses.dataclass(frozen=True)
class VolumeMount:
  """A PersistentVolumeClaim mounted at the same path in every step."""

  claim: str
  mount_path: str

  def __post_init__(self):
    if not self.claim or not posixpath.isabs(self.mount_path):
      raise ValueError(
        f'A volume is CLAIM:/absolute/mount/path, got '
        f'{self.claim}:{self.mount_path}'
      )

  @classmethod
  def parse(cls, text: str) -> 'VolumeMount':
    claim, _, mount_path = text.partition(':')
    return cls(claim, posixpath.normpath(mount_path) if mount_path else '')

  def holds(self, path: str) -> bool:
    return posixpath.normpath(path).startswith(
      self.mount_path.rstrip('/') + '/'
    )


def platform_spec(
  spec: Dict[str, Any], volumes: Sequence[VolumeMount]
) -> Dict[str, Any]:
  """The kfp-kubernetes PlatformSpec mounting `volumes` in every executor."""
  mounts = [{'constant': v.claim, 'mountPath': v.mount_path} for v in volumes]
  executors = spec['deploymentSpec']['executors']
  return {
    'platforms': {
      'kubernetes': {
        'deploymentSpec': {
          'executors': {
            label: {'pvcMount': mounts} for label in sorted(executors)
          }
        }
      }
    }
  }


def build_pipeline(
  config: settings_lib.PipelineConfig,
  beam_pipeline_args: Optional[Sequence[str]] = None,
  trainer_resources: TrainerResources = TrainerResources(),
) -> tfx.dsl.Pipeline:
  """The local pipeline definition, set up for a cluster (module docstring).

  Args:
    config: The pipeline settings; its paths must be valid inside the pods.
    beam_pipeline_args: For ExampleGen, StatisticsGen, Transform and Evaluator;
      default `config.beam_pipeline_args` (Beam's DirectRunner in the pod).
    trainer_resources: What the Trainer's pod asks for.
  """
  pipeline = pipeline_lib.create_pipeline(
    config,
    list(beam_pipeline_args or ()),
    modules_in_image=True,
    with_runtime_parameters=True,
  )
  resources = trainer_resources.resource_spec()
  if resources:
    (trainer,) = [
      c for c in pipeline.components if isinstance(c, tfx.components.Trainer)
    ]
    trainer.with_platform_config(resources)
  return pipeline


def compile_pipeline(
  config: settings_lib.PipelineConfig,
  image: str,
  output_path: str,
  beam_pipeline_args: Optional[Sequence[str]] = None,
  trainer_resources: TrainerResources = TrainerResources(),
  volumes: Sequence[VolumeMount] = (),
) -> Dict[str, Any]:
  """Writes the pipeline's IR to `output_path` and returns it.

  Without `volumes`: the PipelineSpec as JSON. With them: YAML holding the
  PipelineSpec, then the PlatformSpec that mounts them (`output_path` must
  end in .yaml or .yml).
  """
  if volumes and not output_path.endswith(('.yaml', '.yml')):
    raise ValueError(
      'With volumes the pipeline is written as YAML (spec + '
      f'platform spec): give a .yaml output, not {output_path}'
    )
  pipeline = build_pipeline(config, beam_pipeline_args, trainer_resources)
  # Schema 2.1, not TFX's default 2.0: KFP's v2 backend gives tasks only
  # `parameterValues`, which TFX's entrypoint reads only with 2.1 (with 2.0 a
  # task sees no execution properties), and only 2.1 passes each container the
  # inputs spec that turns integers, sent as doubles, back into ints.
  # Every container runs kubeflow/entrypoint.py, which gives input artifacts
  # back the type KFP's driver drops, then runs TFX's V2 entrypoint.
  runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
    kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(
      default_image=image,
      use_pipeline_spec_2_1=True,
      default_commands=list(ENTRYPOINT),
    )
  )
  job = runner.run(pipeline, write_out=False)
  spec = json_format.ParseDict(
    job['pipelineSpec'], pipeline_spec_pb2.PipelineSpec()
  )
  _fix_for_kfp(spec, pipeline, pipeline_lib.runtime_parameters(config))
  result = json_format.MessageToDict(spec)
  os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
  with open(output_path, 'w') as f:
    if volumes:
      yaml.safe_dump_all(
        [result, platform_spec(result, volumes)], f, sort_keys=True
      )
    else:
      json.dump(result, f, indent=2, sort_keys=True)
      f.write('\n')
  return result


def _fix_for_kfp(
  spec: pipeline_spec_pb2.PipelineSpec,
  pipeline: tfx.dsl.Pipeline,
  parameters: Dict[str, Any],
) -> None:
  """Fixes what TFX 1.16's V2 builder leaves out or gets wrong for KFP.

  1. RuntimeParameter defaults and descriptions are dropped (TFX only puts
     values passed to `run(parameter_values=...)` into a PipelineJob's
     runtimeConfig, which a bare PipelineSpec has not): every run would have
     to pass every parameter. They become the root inputs' defaults.
  2. The pipeline root only reaches the PipelineJob's gcsOutputDirectory; it
     is written to `defaultPipelineRoot`, where `python -m kubeflow schedule`
     and `run-once` read it to give every run its root (KFP's backend itself
     ignores it for runs made through its API, kubeflow/schedule.py).
  3. ExampleGen's input fingerprint is computed by a `preCacheCheck` hook
     that only Vertex AI runs; KFP's cache key sees just the data_root
     string, so a scheduled run would reuse the first run's examples. Its
     cache is turned off: each run reads the data root again.
  4. The Evaluator's baseline is whatever is served when it runs
     (components/serving_baseline_evaluator.py), which KFP's cache key
     cannot see: its cache is turned off too, so a blessing always compares
     with the model served at that time.
  5. A `tfx.dsl.Cond` predicate names its artifact by TFX's implicit key
     (`inputs.artifacts['_Evaluator.blessing']`) even when the task takes that
     artifact under its own input name (`model_blessing`), so the condition
     refers to an input the task does not have, which KFP's driver cannot
     evaluate. It is rewritten to the task's own input name.

  Args:
    spec: The PipelineSpec from KubeflowV2DagRunner, fixed in place.
    pipeline: The pipeline it was compiled from.
    parameters: The pipeline's RuntimeParameters by name.
  """
  root_parameters = spec.root.input_definitions.parameters
  for name, parameter in parameters.items():
    root_parameters[name].default_value.string_value = parameter.default
    root_parameters[name].is_optional = True
    root_parameters[name].description = parameter.description
  spec.default_pipeline_root = pipeline.pipeline_info.pipeline_root
  for uncached_type in (
    tfx_components.FileBasedExampleGen,
    serving_baseline_evaluator.ServingBaselineEvaluator,
  ):
    (component,) = [
      c for c in pipeline.components if isinstance(c, uncached_type)
    ]
    spec.root.dag.tasks[component.id].caching_options.enable_cache = False
  for task in spec.root.dag.tasks.values():
    _name_condition_inputs(task)


def _name_condition_inputs(task: pipeline_spec_pb2.PipelineTaskSpec) -> None:
  """Points `task`'s condition at its inputs (fix 5 of `_fix_for_kfp`)."""
  condition = task.trigger_policy.condition
  if not condition:
    return
  for key in set(
    re.findall(r"inputs\.artifacts\['(_[^'.]+\.[^']+)'\]", condition)
  ):
    producer, output = key[1:].split('.', 1)
    names = [
      name
      for name, source in task.inputs.artifacts.items()
      if source.task_output_artifact.producer_task == producer
      and source.task_output_artifact.output_artifact_key == output
    ]
    if len(names) != 1:
      raise ValueError(
        f'Task {task.task_info.name}: the condition '
        f'{condition!r} reads {key}, which is not one of its '
        'inputs.'
      )
    condition = condition.replace(
      f"inputs.artifacts['{key}']", f"inputs.artifacts['{names[0]}']"
    )
  task.trigger_policy.condition = condition
