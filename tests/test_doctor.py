"""``elta doctor`` on this machine's CPU: the native kernels, and the Triton kernels under
the interpreter (the suite sets ``TRITON_INTERPRET=1``), against the float64 reference;
a kernel that computes a wrong value makes it fail."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from elta_core import kernels  # noqa: E402
from elta_core.app.cli import main  # noqa: E402

ARGS = ["doctor", "--device", "cpu", "--quick", "--quiet", "--compile-backend", "aot_eager"]


def test_doctor_checks_every_kernel_that_runs_on_the_cpu(tmp_path, capsys):
    out = tmp_path / "doctor.json"
    assert main([*ARGS, "--json", str(out)]) == 0
    checks = json.loads(out.read_text())
    ran = {(c["kernel"], c["operation"].split(" ")[0]) for c in checks}
    expected = set()
    if kernels.native_available():
        expected |= {("native", "FLSA"), ("native", "APDS")}
    if kernels.triton_available():
        expected |= {("triton", "FLSA"), ("triton", "APDS")}
    assert ran == expected
    assert all(c["ok"] and c["error"] <= c["tolerance"] for c in checks)
    assert all(c["kernel_ms"] > 0 and c["reference_ms"] > 0 for c in checks)
    assert all(c["compiled_ms"] > 0 for c in checks if c["kernel"] == "native" and c["operation"].startswith("FLSA"))
    printed = capsys.readouterr().out
    assert "| cpu | native |" in printed or not kernels.native_available()
    assert f"{len(checks)} of {len(checks)} checks passed" in printed


@pytest.mark.skipif(not kernels.native_available(), reason="the native kernels are not built")
def test_doctor_fails_on_a_kernel_that_computes_a_wrong_loss(monkeypatch, capsys):
    import elta_core.kernels.native as native

    right = native.flsa_loss
    monkeypatch.setattr(native, "flsa_loss", lambda *args, **kwargs: right(*args, **kwargs) * 1.01)
    assert main(ARGS) == 1
    printed = capsys.readouterr().out
    assert "| NO |" in printed and "checks passed; the failures above" in printed
