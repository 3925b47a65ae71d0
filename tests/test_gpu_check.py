"""benchmarks/gpu_check.py, the prepared device check: it runs on the CPU (``--device cpu
--small``) so it cannot rot, and its CUDA-only branch is exercised with a mocked driver."""

import importlib.util
import json
import subprocess
import sys

import torch
from helpers import CHILD_ENV, ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_small_run_writes_one_report_with_everysection(tmp_path):
    out = tmp_path / "check.json"
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--small", "--json", str(out)]
    done = subprocess.run(cmd, env=CHILD_ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["failed"] == [] and report["small"] is True
    assert report["device"]["device"] == "cpu" and report["device"]["name"]
    assert report["smoke_tiny"]["vae_decodes_per_frame"] > 0
    runs = report["bench"]["runs"]
    assert set(runs) == {"default", "fp32", "reference", "batch-8"}
    assert runs["default"]["modulation_batch"] == "auto"
    assert runs["batch-8"]["modulation_batch"] == 8
    # on the CPU "auto" precision is fp32, so default and fp32 compute the same
    assert report["agreement"]["default_vs_fp32"] == 1.0
    assert report["agreement"]["batch_8_vs_default"] == 1.0
    assert 0 < report["agreement"]["default_vs_reference"] <= 1
    assert set(report["plans"]) == set(runs) and report["seconds"]["total"] > 0


def test_device_info_reads_the_card_on_cuda(monkeypatch):
    gpu_check = _script()
    props = type("Props", (), {"major": 9, "minor": 0})()
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (70 * 2**30, 80 * 2**30))
    info = gpu_check.device_info(torch.device("cuda"))
    assert info["name"] == "NVIDIA H100 80GB HBM3" and info["capability"] == "9.0"
    assert info["total_memory_gb"] == 80.0 and info["free_memory_gb"] == 70.0


def test_a_failing_section_is_recorded_and_the_others_run():
    gpu_check = _script()
    report = {"failed": [], "seconds": {}}

    def broken():
        raise RuntimeError("CUDA error: no kernel image is available")

    assert gpu_check.section(report, "smoke_tiny", broken) is None
    assert gpu_check.section(report, "bench", lambda: {"ok": 1}) == {"ok": 1}
    assert report["failed"] == ["smoke_tiny"] and "no kernel image" in report["smoke_tiny"]["error"]
    assert set(report["seconds"]) == {"smoke_tiny", "bench"}
