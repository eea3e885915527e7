"""The Triton kernels compiled for real GPU targets (A100 sm_80, H100 sm_90, B200 sm_100)
without a GPU, from the launches the public API makes: every configuration compiles, fits
the target's shared memory, computes no address offset as a 32-bit product, and a float64
kernel takes no float32 scalar (:mod:`elta_core.app.aot`). The compilation
runs in subprocesses without ``TRITON_INTERPRET`` (the suite's own process interprets)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")
triton = pytest.importorskip("triton")

from elta_core.app.compiled_code import narrow_offset_products  # noqa: E402

KERNELS = {"flsa._normalize_kernel", "flsa._direct_kernel", "flsa._block_sums_kernel", "flsa._prefix_kernel",
           "flsa._normalize_backward_kernel", "apds._scores_kernel", "apds._sharpen_kernel", "apds._grid_kernel"}


def _has_nvidia_backend() -> bool:
    try:
        from triton.backends import backends
    except ImportError:
        return False
    return "nvidia" in backends


needs_nvidia_backend = pytest.mark.skipif(not _has_nvidia_backend(), reason="this Triton has no NVIDIA backend")


@pytest.mark.slow
@needs_nvidia_backend
def test_every_kernel_configuration_compiles_for_a100_h100_and_b200(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")  # compiled here, not taken from an earlier run's cache
    # two processes, one per core: H100 (sm_90) with the CI subset's every dtype; A100 (sm_80) and B200
    # (sm_100) with float32 alone (each dtype is a compile of every configuration; the whole sweep with
    # every dtype on every target is python -m elta_core.app.aot --sweep)
    jobs = {"90": "float32,bfloat16,float64", "80,100": "float32"}
    runs = {targets: subprocess.Popen([sys.executable, "-m", "elta_core.app.aot", "--targets", targets, "--dtypes",
                                       dtypes, "--quiet", "--json", str(tmp_path / f"{targets}.json")],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for targets, dtypes in jobs.items()}
    results = []
    for targets, process in runs.items():
        stdout, stderr = process.communicate(timeout=900)
        assert process.returncode == 0, stderr[-4000:]
        report = json.loads((tmp_path / f"{targets}.json").read_text())
        assert report["failures"] == []
        results += report["results"]
    assert {(r["kernel"], r["target"]) for r in results} == {(k, t) for k in KERNELS for t in (80, 90, 100)}
    assert all(not r["problems"] for r in results)
    assert {r["dtypes"].split(",")[0] for r in results if r["kernel"] == "flsa._normalize_kernel" and
            r["target"] == 90} == {"bf16", "fp32", "fp64"}  # half features reach the kernels as they are
    assert all(r["registers"] for r in results), "registers read from every cubin"


TTIR = """
    %rows = tt.make_range {end = 32 : i32, start = 0 : i32} : tensor<32xi32> loc(#loc1)
    %c32 = arith.constant 32 : i32 loc(#loc2)
    %pid = tt.get_program_id x : i32 loc(#loc3)
    %start = arith.muli %pid, %c32 : i32 loc(#loc4)
    %w = tt.splat %width : i32 -> tensor<32xi32> loc(#loc5)
    %wide = arith.muli %rows, %w : tensor<32xi32> loc(#loc6)
    %p = tt.splat %ptr : !tt.ptr<f32> -> tensor<32x!tt.ptr<f32>> loc(#loc7)
    %a = tt.addptr %p, %wide : tensor<32x!tt.ptr<f32>>, tensor<32xi32> loc(#loc8)
    %r64 = arith.extsi %rows : tensor<32xi32> to tensor<32xi64> loc(#loc9)
    %w64 = tt.splat %width64 : i64 -> tensor<32xi64> loc(#loc10)
    %safe = arith.muli %r64, %w64 : tensor<32xi64> loc(#loc11)
    %b = tt.addptr %p, %safe : tensor<32x!tt.ptr<f32>>, tensor<32xi64> loc(#loc12)
    %c = tt.addptr %p, %rows : tensor<32x!tt.ptr<f32>>, tensor<32xi32> loc(#loc13)
"""


def test_the_offset_check_flags_a_32_bit_product_of_run_time_values_only():
    found = narrow_offset_products(TTIR)
    assert found == ["%wide = arith.muli %rows, %w : tensor<32xi32>"]  # not the widened one, not pid * 32


def test_the_offset_check_passes_products_with_constants():
    assert narrow_offset_products(TTIR.replace("%w = tt.splat %width", "%w = tt.splat %c32")) == []
