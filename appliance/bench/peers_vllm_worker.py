"""Times vLLM's offline `LLM.generate` on the peers benchmark's inputs, inside vLLM's own venv.

`appliance bench peers` runs this file with that venv's python (vLLM pins its own torch, so it
cannot share ours); it imports nothing but the standard library and vLLM. Usage:
`python peers_vllm_worker.py JOB.json RESULT.json`; the job holds token ids, not text, so every
system sees the same tokens. Loading and one warm-up request are outside every timing; prefix
caching is on, as in our engine.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(job_path: str, result_path: str) -> None:
    import vllm
    from vllm import LLM, SamplingParams

    job = json.loads(Path(job_path).read_text())
    llm = LLM(model=job["model"], dtype=job["dtype"], enable_prefix_caching=True, seed=0,
              max_model_len=job["max_model_len"])

    def timed(prompts: list[list[int]], max_tokens: int) -> tuple[float, int]:
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        started = time.perf_counter()
        outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompts], params, use_tqdm=False)
        return time.perf_counter() - started, sum(len(o.outputs[0].token_ids) for o in outputs)

    timed([job["warmup"]], 2)
    workload_s, num_output = timed(job["prompts"], job["output_len"])
    one_stream = [timed([item["ids"]], item["max_tokens"])[0] for item in job["one_stream"]]
    Path(result_path).write_text(json.dumps({
        "version": vllm.__version__, "workload_s": workload_s, "num_output_tokens": num_output,
        "one_stream_s": one_stream}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
