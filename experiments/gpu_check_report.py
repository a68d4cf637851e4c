"""gpu_check.md: experiments/gpu_check.py's report as short tables, and the record of a
part that was not measured."""
from __future__ import annotations


def not_measured(why: str) -> dict:
    return {"status": "not measured", "why": why}


def _fmt(v) -> str:
    if isinstance(v, dict) and "status" in v:
        return f"not measured ({v['why']})" if v["status"] == "not measured" else v["status"]
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
    return "-" if v is None else str(v)


def _table(rows: list, columns: list) -> list:
    lines = ["| " + " | ".join(title for _, title in columns) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(key)) for key, _ in columns) + " |" for r in rows]
    return lines


def to_markdown(report: dict) -> str:
    """gpu_check.md: the report's parts as short tables."""
    env = report.get("environment", not_measured("not run"))
    lines = [f"# GPU check ({'dry run, tiny sizes' if report['dry_run'] else 'full sizes'})",
             "", f"{report['date']}, `{report['command']}`, {report['total_s']:.0f} s in all.",
             ""]
    if env.get("status") == "measured":
        memory = report.get("device_memory", not_measured("not reached"))
        if memory.get("status") == "measured":
            memory = ", ".join(f"{k} {v:,.0f}" for k, v in memory.items() if k != "status")
        lines += [f"Device: {env['device_kind']} x {env['device_count']} ({env['platform']}); "
                  f"JAX {env['jax_version']}, jaxlib {env['jaxlib_version']}, CUDA "
                  f"{_fmt(env['cuda_version'])}; nvidia-smi: {_fmt(env['nvidia_smi'])}.",
                  f"Device memory after the last part: {_fmt(memory)}.", ""]
    sections = [
        ("resnet50_step", "Training step (bt_jax)",
         [("per_device_batch", "per-device batch"), ("pairs_per_s", "pairs/s"),
          ("median_step_ms", "step ms"), ("compile_s", "compile s"),
          ("peak_memory_mib", "peak MiB"), ("achieved_tflops", "TFLOP/s"), ("mfu", "MFU")]),
        ("torch_step", "Training step (PyTorch)",
         [("per_device_batch", "per-device batch"), ("pairs_per_s", "pairs/s"),
          ("median_step_ms", "step ms"), ("peak_memory_mib", "peak MiB"),
          ("bt_jax_over_torch", "bt_jax / PyTorch")]),
        ("loss_paths", "Loss, value and gradients",
         [("n", "N"), ("d", "D"), ("direct_ms", "direct ms"), ("gram_ms", "Gram ms"),
          ("gram_speedup", "Gram speed-up")]),
    ]
    for key, title, columns in sections:
        part = report.get(key, not_measured("not reached"))
        lines.append(f"## {title}")
        if part.get("status") == "measured":
            lines += [part.get("model", part.get("what", "")), ""] + _table(part["rows"], columns)
        else:
            lines.append(_fmt(part) + (f": {part.get('error', '')}" if part.get("error") else ""))
        lines.append("")
    for key, title in (("plan", "The plan of the step against the measured step"),
                       ("augmentation", "On-device augmentation"),
                       ("quality", "Fashion-MNIST quality")):
        part = report.get(key, not_measured("not reached"))
        lines.append(f"## {title}")
        if part.get("status") == "measured":
            lines += [f"- {k}: {_fmt(v)}" for k, v in part.items() if k != "status"]
        else:
            lines.append(_fmt(part) + (f": {part.get('error', '')}" if part.get("error") else ""))
        lines.append("")
    return "\n".join(lines)
