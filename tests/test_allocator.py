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

# Runs a two-conv model four times and counts the page faults of the last three forwards.
# Untuned, glibc maps each 49 MiB activation afresh and the kernel zero-fills its pages on
# every forward (~88,000 faults); tuned, the heap keeps them (a memalign'd chunk that does not
# fit the hole it left is sometimes placed anew: ~12,500 faults now and then, not each time).
_FAULTS_PER_FORWARD = """
import json, resource, torch
from torch import nn
from gradcam_cli.allocator import tune_allocator, tuned
if {tune}:
    tune_allocator()
torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1))
images = torch.randn(8, 3, 224, 224)  # each activation: 8 x 32 x 224 x 224 float32 = 49 MiB
faults = []
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    with torch.inference_mode():
        model(images)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({{"tuned": tuned(), "faults": sum(faults[1:])}}))
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


def test_tuned_forwards_stop_faulting_their_activations_back_in():
    plain = _run(_FAULTS_PER_FORWARD.format(tune=False))
    tuned = _run(_FAULTS_PER_FORWARD.format(tune=True))
    assert (plain["tuned"], tuned["tuned"]) == (False, True)
    assert plain["faults"] > 3 * 25_000, plain  # at least two 49 MiB tensors a forward
    assert tuned["faults"] < plain["faults"] / 4, (tuned, plain)


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
    result = _run(_FAULTS_PER_FORWARD.format(tune=True), **env)
    assert result["tuned"] is False
    assert result["faults"] > 3 * 25_000, result
