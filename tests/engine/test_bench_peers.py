"""`appliance bench peers` without the peers (they are not installed in CI): its arguments, how a
missing peer is reported, the inputs every system shares, and the arithmetic of its report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from argparse import Namespace

import pytest

from appliance.bench.peers import missing_peer, serve_flags
from appliance.bench.peers_inputs import FIRST_SESSION, build_inputs
from appliance.bench.peers_report import Measured, one_stream, print_one_stream, print_workload, ratio


def _appliance(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("appliance", path=os.path.dirname(sys.executable)) or "appliance"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("bad", [["--systems", "ours,tgi"], ["--systems", ","], ["--num-requests", "0"],
                                 ["--concurrency", "0"], ["--decode-tokens", "1"]])
def test_bad_arguments_are_one_line_and_exit_non_zero(bad):
    r = _appliance("bench", "peers", *bad)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("appliance: error: --") and r.stderr.count("\n") == 1, r.stderr


def test_missing_peers_say_how_to_install_them(tmp_path):
    r = _appliance("bench", "peers", "--systems", "llama,vllm", "--peers-dir", str(tmp_path))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"llama: not installed: PEERS_DIR={tmp_path} ")
    assert lines[0].endswith("peers/build_llama_server.sh")
    assert lines[1].startswith(f"vllm: not installed: PEERS_DIR={tmp_path} ")
    assert lines[1].endswith("peers/setup_vllm_cpu.sh")


def test_an_installed_peer_is_found_where_the_recipes_build_it(tmp_path):
    for path in ("vllm-venv/bin/python", "smollm2-hf/config.json", "llama-build/bin/llama-server"):
        (tmp_path / path).parent.mkdir(parents=True)
        (tmp_path / path).touch()
    assert [missing_peer(s, tmp_path) for s in ("ours", "vllm", "llama")] == [None, None, None]
    (tmp_path / "smollm2-hf/config.json").unlink()  # a half-finished vLLM set-up is not installed
    assert "setup_vllm_cpu.sh" in missing_peer("vllm", tmp_path)


def test_our_server_keeps_its_defaults_unless_a_flag_is_given():
    assert serve_flags(Namespace(quantization=None, dtype=None)) == ()
    assert serve_flags(Namespace(quantization="int4", dtype="bfloat16")) == ("--quantization", "int4",
                                                                              "--dtype", "bfloat16")


def test_inputs_are_our_tokens_and_one_stream_prompts_are_cold_and_equally_long(smol):
    inputs = build_inputs(smol.tokenizer, num_requests=5, output_len=7, prompt_tokens=550,
                          decode_tokens=20, rounds=2)
    assert [p.ids for p in inputs.workload] == [smol.tokenizer.apply_chat_template(p.messages)
                                                for p in inputs.workload]
    assert inputs.num_prompt_tokens == sum(len(p.ids) for p in inputs.workload)
    assert [n for _, n in inputs.one_stream] == [1, 20, 1, 20]
    prompts = [inputs.warmup, *(p for p, _ in inputs.one_stream)]
    assert {len(p.ids) for p in prompts} == {inputs.one_stream_tokens}
    assert 500 < inputs.one_stream_tokens <= 550  # cut to the target by words, never over it
    sessions = [p.messages[0]["content"].split(".")[0] for p in prompts]
    assert sessions == [f"Session {FIRST_SESSION + k}" for k in range(5)]  # each its own cold prefix
    longest = max(len(p.ids) for p in [*inputs.workload, *prompts])
    assert inputs.max_context % 256 == 0 and longest + 20 < inputs.max_context <= longest + 20 + 256


def test_one_stream_rates_are_medians_of_the_two_request_lengths():
    s = one_stream(500, first_token_s=[0.5, 0.4, 9.0], full_s=[1.1, 1.0, 1.4], decode_tokens=13)
    assert s.prefill_s == 0.5 and s.prefill_tok_s == 1000.0
    assert s.decode_tok_s == pytest.approx(12 / 0.6)
    assert one_stream(500, [1.0], [0.9], 13).decode_tok_s is None  # noise, not a negative rate
    assert ratio(30.0, 20.0) == 1.5 and ratio(None, 2.0) is None and ratio(3.0, 0.0) is None


def test_report_gives_each_peer_its_ratio_to_ours(capsys):
    rows = [Measured("ours", 10.0, 9000, 1000, [0.5, 0.5], [1.5, 1.5]),
            Measured("vllm", 15.0, 9000, 1000, [0.25, 0.25], [0.75, 0.75]),
            Measured("llama", 5.0, 9000, 1000, [1.0, 1.0], [3.0, 3.0], note="a note")]
    print_workload(rows, num_requests=4, output_len=250)
    print_one_stream(rows, prompt_tokens=500, decode_tokens=11)
    lines = capsys.readouterr().out.splitlines()
    cells = {name: [line.split()[1:] for line in lines if line.startswith(name + " ")]
             for name in ("ours", "vllm", "llama")}
    assert cells["ours"][0] == ["10.00", "100.0", "1000.0", "1.00x"]  # seconds, out, total tok/s, ratio
    assert cells["vllm"][0] == ["15.00", "66.7", "666.7", "1.50x"]
    assert cells["llama"][0] == ["5.00", "200.0", "2000.0", "0.50x"]
    assert "  a note" in lines
    assert cells["ours"][1] == ["0.500", "1000.0", "10.0", "1.00x,", "1.00x"]  # prefill s, tok/s, decode
    assert cells["vllm"][1] == ["0.250", "2000.0", "20.0", "0.50x,", "0.50x"]
    assert cells["llama"][1] == ["1.000", "500.0", "5.0", "2.00x,", "2.00x"]


def test_json_report_carries_the_rates(tmp_path):
    from appliance.bench.peers import _write_json

    path = tmp_path / "peers.json"
    args = Namespace(decode_tokens=11, peers_dir=tmp_path, func=print)
    _write_json(path, [Measured("ours", 10.0, 9000, 1000, [0.5], [1.5])], 500, args)
    data = json.loads(path.read_text())
    assert data["args"] == {"decode_tokens": 11, "peers_dir": str(tmp_path)}
    assert data["rows"][0]["one_stream"] == {"prefill_s": 0.5, "prefill_tok_s": 1000.0, "decode_tok_s": 10.0}
    assert data["rows"][0]["workload_s"] == 10.0
