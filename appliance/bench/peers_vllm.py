"""The peers benchmark's offline system: vLLM's CPU build, in its own venv, as a subprocess.

The job (token ids and request lengths) goes to `peers_vllm_worker.py` as a JSON file and the
times come back the same way; vLLM's own output goes to a log beside its venv. On a 2-core box
vLLM must not keep a core for its scheduler and must bind its OpenMP threads to every core; its
first start compiles the model, so its caches live in the peers folder and survive between runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from appliance.bench.peers_inputs import Inputs
from appliance.bench.peers_report import Measured

WORKER = Path(__file__).with_name("peers_vllm_worker.py")
TIMEOUT_S = 3600


def vllm_env(peers_dir: Path, num_cpus: int) -> dict[str, str]:
    cache = peers_dir / "vllm-cache"
    cache.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return env | {
        "VLLM_CPU_KVCACHE_SPACE": "4", "VLLM_CPU_OMP_THREADS_BIND": f"0-{num_cpus - 1}",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "HF_HUB_OFFLINE": "1", "TMPDIR": str(cache),
        "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"), "VLLM_CACHE_ROOT": str(cache / "vllm"),
    }


def measure_vllm(inputs: Inputs, python: Path, model_dir: Path, dtype: str, peers_dir: Path) -> Measured:
    job = {"model": str(model_dir), "dtype": dtype, "max_model_len": inputs.max_context,
           "warmup": inputs.warmup.ids, "prompts": [p.ids for p in inputs.workload],
           "output_len": inputs.output_len,
           "one_stream": [{"ids": p.ids, "max_tokens": n} for p, n in inputs.one_stream]}
    log_path = peers_dir / "vllm-bench.log"
    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as tmp:
        job_path, result_path = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_path.write_text(json.dumps(job))
        with open(log_path, "wb") as log:
            done = subprocess.run([str(python), str(WORKER), str(job_path), str(result_path)], stdout=log,
                                  stderr=subprocess.STDOUT, env=vllm_env(peers_dir, os.cpu_count() or 1),
                                  timeout=TIMEOUT_S, check=False)
        if done.returncode != 0 or not result_path.exists():
            raise RuntimeError(f"vLLM exited with status {done.returncode}; log: {log_path}")
        result = json.loads(result_path.read_text())
    times = result["one_stream_s"]
    return Measured(f"vLLM {result['version']} CPU {dtype}, offline LLM.generate", result["workload_s"],
                    inputs.num_prompt_tokens, result["num_output_tokens"],
                    [t for t, (_, n) in zip(times, inputs.one_stream, strict=True) if n == 1],
                    [t for t, (_, n) in zip(times, inputs.one_stream, strict=True) if n != 1])
