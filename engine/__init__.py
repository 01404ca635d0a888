"""The paged-attention LLM engine: model, KV blocks with prefix sharing, scheduler, sampler, step loop."""

from engine.async_engine import AsyncEngine, EngineDeadError, EngineHealth, RequestFailedError
from engine.chunk_kv import KV_REUSE_MODES, ChunkSpec
from engine.config import EngineConfig, ModelConfig
from engine.llm_engine import GenerationResult, LLMEngine
from engine.loader import CheckpointError
from engine.outputs import EngineStats, RequestOutput, Usage
from engine.sampling_params import InvalidRequestError, SamplingParams

__all__ = [
    "KV_REUSE_MODES", "AsyncEngine", "CheckpointError", "ChunkSpec", "EngineConfig", "EngineDeadError",
    "EngineHealth", "EngineStats",
    "GenerationResult", "InvalidRequestError", "LLMEngine", "ModelConfig", "RequestFailedError",
    "RequestOutput", "SamplingParams", "Usage",
]
