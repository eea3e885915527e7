"""What compiled Triton code says that the interpreter cannot: 32-bit products of
run-time values that reach an address (from the TTIR), and registers and local memory
(spills) per thread (from the cubin). Used by :mod:`elta_core.app.aot`."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from typing import Any, Sequence

_SSA = re.compile(r"^\s*(%[\w.#]+)(?::\d+)?\s*=\s*([\w.]+)\s*(.*)$")
_OPERAND = re.compile(r"%[\w.#]+")


def narrow_offset_products(ttir: str) -> list[str]:
    """The TTIR lines of 32-bit ``arith.muli`` of two run-time values that an address
    offset (``tt.addptr`` with an i32 offset) is computed from. Constants (and their
    splats and broadcasts) are not run-time values; function arguments, program ids and
    loop variables are."""
    definitions: dict[str, tuple[str, list[str], str]] = {}
    offsets: list[str] = []  # the i32 offsets of tt.addptr
    for line in ttir.splitlines():
        match = _SSA.match(line)
        if not match:
            continue
        name, op, rest = match.groups()
        operands_text, _, types = rest.partition(" : ")
        operands = _OPERAND.findall(operands_text.split(" loc(")[0])
        definitions[name] = (op, operands, line.strip())
        offset_type = types.split(" loc(")[0].rsplit(",", 1)[-1].strip()  # "i32" or "tensor<...xi32>"
        if op == "tt.addptr" and (offset_type == "i32" or offset_type.endswith("xi32>")):
            offsets += operands[1:2]

    constant: dict[str, bool] = {}

    def is_constant(value: str) -> bool:
        if value not in constant:
            op, operands, _ = definitions.get(value, ("argument", [], ""))
            constant[value] = op == "arith.constant" or (
                op in ("tt.splat", "tt.broadcast", "tt.expand_dims") and all(map(is_constant, operands)))
        return constant[value]

    found: list[str] = []

    def visit(value: str, seen: set[str]) -> None:
        if value in seen or value not in definitions:
            return
        seen.add(value)
        op, operands, line = definitions[value]
        if op in ("arith.extsi", "arith.extui"):
            return  # widened: 64-bit from here on
        if op == "arith.muli" and "i32" in line.rsplit(":", 1)[-1] and len(operands) == 2 and \
                not any(map(is_constant, operands)):
            found.append(line.split(" loc(")[0])
        for operand in operands:
            visit(operand, seen)

    for offset in offsets:
        visit(offset, set())
    return sorted(set(found))


def cubin_resources(cubin: bytes) -> tuple[int | None, int | None]:
    """(registers, local-memory bytes a thread: spills and stack) from ``cuobjdump -res-usage``."""
    from triton.backends.nvidia import compiler as nvidia

    tool = os.path.join(os.path.dirname(nvidia.__file__), "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        try:
            text = subprocess.run([tool, "-res-usage", handle.name], capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            return None, None
    registers, local = re.search(r"REG:(\d+)", text), re.search(r"LOCAL:(\d+)", text)
    return (int(registers.group(1)) if registers else None, int(local.group(1)) if local else None)


def resource_table(results: Sequence[Any]) -> str:
    """Markdown: registers, local memory (spills) and shared memory per kernel and target
    (of :class:`elta_core.app.aot.Compiled` results): the most any configuration of that
    kernel and dtype needs."""
    rows: dict[tuple[str, str, int], Any] = {}
    counts: dict[tuple[str, str, int], int] = {}
    problems: dict[tuple[str, str, int], int] = {}
    for r in results:
        key = (r.kernel, r.dtypes, r.target)
        counts[key] = counts.get(key, 0) + 1
        problems[key] = problems.get(key, 0) + len(r.problems)
        best = rows.get(key)
        if best is None or (r.registers or 0) > (best.registers or 0) or (r.spill_bytes or 0) > (best.spill_bytes or 0):
            rows[key] = r
    lines = ["| kernel | pointer dtypes | target | configurations | registers (max) | local memory / thread (bytes) | "
             "shared memory (bytes) | problems |", "|---|---|---|---:|---:|---:|---:|---|"]
    for key in sorted(rows):
        r = rows[key]
        lines.append(f"| {r.kernel} | {r.dtypes} | sm_{r.target} | {counts[key]} | {r.registers} | {r.spill_bytes} | "
                     f"{r.shared_bytes} | {problems[key]} |")
    return "\n".join(lines)
