"""The allocator tuning (allocator.py): it takes effect, it changes no result, and it yields.

Each case runs in a fresh interpreter: mallopt settings last for the life of a process.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt is glibc's; elsewhere tune_allocator does nothing by design",
)

# Allocates a 96 MiB tensor twice and counts the page faults of the second one: glibc serves
# it from a fresh mmap (~24,000 faults) unless the first one's memory stayed in the heap.
_FAULTS_OF_A_REUSED_BUFFER = """
import json, resource, torch
from gradcam_cli.allocator import tune_allocator, tuned
if {tune}:
    tune_allocator()
for round in range(2):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffer = torch.ones(24 << 20)  # float32: 96 MiB
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del buffer
print(json.dumps({{"tuned": tuned(), "faults": faults}}))
"""

# Explains a seeded batch with a small random model: the first explain_batch tunes the process.
_MAPS = """
import json, sys, numpy as np, timm, torch
from gradcam_cli import explain_batch
from gradcam_cli.allocator import tuned
torch.manual_seed(0)
model = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
images = torch.randn(4, 3, 96, 96)
result = explain_batch(model, images, "layer4", topk=2)
np.save(sys.argv[1], result.maps["layer4"].numpy())
print(json.dumps({"tuned": tuned(), "targets": result.targets.tolist()}))
"""


def _run(code: str, *args: str, **env: str) -> dict:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    environment.pop("GRADCAM_TUNE_ALLOCATOR", None)
    environment.update(env)
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=environment
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_a_freed_large_buffer_is_reused_without_page_faults():
    plain = _run(_FAULTS_OF_A_REUSED_BUFFER.format(tune=False))
    tuned = _run(_FAULTS_OF_A_REUSED_BUFFER.format(tune=True))
    assert (plain["tuned"], tuned["tuned"]) == (False, True)
    assert plain["faults"] > 20_000, plain  # 96 MiB / 4 KiB pages, faulted in again
    assert tuned["faults"] < 1_000, tuned


def test_explaining_tunes_the_process_and_the_maps_stay_bit_identical(tmp_path):
    tuned = _run(_MAPS, str(tmp_path / "tuned.npy"))
    plain = _run(_MAPS, str(tmp_path / "plain.npy"), GRADCAM_TUNE_ALLOCATOR="0")
    assert (tuned["tuned"], plain["tuned"]) == (True, False)
    assert tuned["targets"] == plain["targets"]
    maps = np.load(tmp_path / "tuned.npy")
    assert maps.shape == (4, 2, 3, 3) and maps.max() > 0
    np.testing.assert_array_equal(maps, np.load(tmp_path / "plain.npy"))


@pytest.mark.parametrize(
    "env",
    [
        {"GRADCAM_TUNE_ALLOCATOR": "0"},
        {"GRADCAM_TUNE_ALLOCATOR": "off"},
        {"MALLOC_TRIM_THRESHOLD_": "131072"},
        {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"},
    ],
)
def test_the_opt_out_and_the_users_own_settings_win(env):
    result = _run(_FAULTS_OF_A_REUSED_BUFFER.format(tune=True), **env)
    assert result["tuned"] is False
    assert result["faults"] > 20_000, result
