"""TRL's vLLM generation options for the teacher GRPO phase (``TeacherGRPOConfig.vllm``)."""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field


class VLLMSettings(BaseModel):
    """TRL's vLLM generation for GRPO (``GRPOConfig.use_vllm`` and its ``vllm_*`` options), for GPU hosts.

    ``mode="colocate"`` starts a vLLM engine inside each training process, sharing its GPU
    (``gpu_memory_utilization`` of it); ``mode="server"`` sends generation to a ``trl vllm-serve`` server
    (``server_base_url`` or ``server_host``:``server_port``; weights are pushed to it over NCCL on
    ``group_port`` after each optimizer step). vLLM samples with its own kernels, so the log-probs it returns differ
    from the trainer's: ``importance_sampling_correction`` re-weights the loss by the trainer/vLLM probability ratio
    (TRL's truncated or masked importance sampling, ``importance_sampling_mode``, bounds
    ``importance_sampling_clip_min``/``_max``), which costs one more no-grad forward of the policy per step.

    Not on CPU: TRL's ``use_vllm`` fails at the first weight sync there (docs environment.md, "TRL on CPU"); GRPO on
    CPU generates with ``transformers``. TRL needs the ``vllm`` package in the training environment.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["colocate", "server"] = "colocate"
    gpu_memory_utilization: float = Field(default=0.3, gt=0.0, le=1.0, description="colocate: share of the GPU")
    tensor_parallel_size: int = Field(default=1, ge=1, description="colocate")
    max_model_length: Optional[int] = Field(default=None, ge=8, description="colocate: context length")
    enable_sleep_mode: bool = Field(default=False, description="colocate: free vLLM's memory while training")
    server_base_url: Optional[str] = Field(default=None, description="server: e.g. http://10.0.0.5:8000")
    server_host: str = "0.0.0.0"
    server_port: int = Field(default=8000, ge=1, le=65535)
    server_timeout: float = Field(default=240.0, gt=0.0)
    group_port: int = Field(default=51216, ge=1, le=65535, description="server: NCCL weight-sync port")
    importance_sampling_correction: bool = True
    importance_sampling_mode: Literal["token_truncate", "token_mask", "sequence_truncate",
                                      "sequence_mask"] = "sequence_mask"
    importance_sampling_clip_max: Optional[float] = Field(default=3.0, gt=0.0)
    importance_sampling_clip_min: Optional[float] = Field(default=None, ge=0.0)

    def grpo_args(self) -> dict[str, Any]:
        """The ``GRPOConfig`` keyword arguments."""
        args = {"use_vllm": True, "vllm_mode": self.mode, "vllm_gpu_memory_utilization": self.gpu_memory_utilization,
                "vllm_tensor_parallel_size": self.tensor_parallel_size,
                "vllm_max_model_length": self.max_model_length, "vllm_enable_sleep_mode": self.enable_sleep_mode,
                "vllm_server_base_url": self.server_base_url, "vllm_server_host": self.server_host,
                "vllm_server_port": self.server_port, "vllm_server_timeout": self.server_timeout,
                "vllm_group_port": self.group_port,
                "vllm_importance_sampling_correction": self.importance_sampling_correction,
                "vllm_importance_sampling_mode": self.importance_sampling_mode,
                "vllm_importance_sampling_clip_max": self.importance_sampling_clip_max,
                "vllm_importance_sampling_clip_min": self.importance_sampling_clip_min}
        return args


__all__ = ["VLLMSettings"]
