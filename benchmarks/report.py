"""Turn a pytest-benchmark JSON file into the Markdown tables of benchmarks/README.md.

    python -m pytest benchmarks --benchmark-enable --benchmark-json=bench.json
    python benchmarks/report.py bench.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def tables(report: dict) -> str:
    groups: dict[str, list[dict]] = defaultdict(list)
    for bench in report["benchmarks"]:
        groups[bench["group"]].append(bench)
    lines = []
    for group, benches in groups.items():
        baseline = max(b["stats"]["mean"] for b in benches)
        has_memory = any("peak_extra_mib" in b["extra_info"] for b in benches)
        lines += [f"**{group}**", ""]
        header = "| implementation | mean (ms) | min (ms) | rounds | speed-up vs slowest |"
        rule = "|---|---:|---:|---:|---:|"
        if has_memory:
            header += " peak extra memory (MiB) |"
            rule += "---:|"
        lines += [header, rule]
        for b in sorted(benches, key=lambda b: b["stats"]["mean"]):
            name = (b.get("params") or {}).get("name") or b["name"]
            row = (
                f"| {name} | {b['stats']['mean'] * 1e3:.3g} | {b['stats']['min'] * 1e3:.3g} | "
                f"{b['stats']['rounds']} | {baseline / b['stats']['mean']:.2f}x |"
            )
            if has_memory:
                row += f" {b['extra_info'].get('peak_extra_mib', float('nan')):.0f} |"
            lines.append(row)
        lines.append("")
    machine = report.get("machine_info", {})
    lines.append(
        f"Machine: {machine.get('cpu', {}).get('brand_raw', 'unknown CPU')}, "
        f"{machine.get('cpu', {}).get('count', '?')} cores, Python {machine.get('python_version', '?')}."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    with open(sys.argv[1]) as handle:
        print(tables(json.load(handle)))
