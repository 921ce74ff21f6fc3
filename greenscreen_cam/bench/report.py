"""Benchmark results for people: Rich tables for ``greencam bench``, markdown for the suite."""

from __future__ import annotations

from typing import Any


def print_result(result: dict[str, Any], console: Any) -> None:
    """``result`` of a tracker, e2e or compositor run as Rich tables on ``console``; anything else as JSON."""
    from rich.table import Table

    if result["kind"] not in ("tracker", "e2e", "compositor"):
        import json

        console.print_json(json.dumps(result))
        return
    if result["kind"] == "compositor":
        table = Table(title=f"compositor, {result['frame_size']}, {result['frames']} frames")
        table.add_column("path")
        table.add_column("median ms")
        table.add_column("p95 ms")
        for key, value in result.items():
            if isinstance(value, dict) and "median_ms" in value:
                table.add_row(key, f"{value['median_ms']:.2f}", f"{value['p95_ms']:.2f}")
        console.print(table)
        subjects = result.get("subjects")
        if subjects:
            table = Table(title="several subjects: each upsampled, then their union (median ms per frame)")
            columns = list(next(iter(subjects.values())))
            table.add_column("frame, subjects")
            for c in columns:
                table.add_column(c, justify="right")
            for key, row in subjects.items():
                table.add_row(key, *(f"{row[c]:.2f}" for c in columns))
            console.print(table)
        return
    title = (
        f"{result['model']} @ {result['resolution']} on {result['device']} ({result['dtype']}"
        f"{', compiled' if result['compiled'] else ''}"
        f"{', engine ' + result['engine'] if result.get('engine') else ''}"
        f"{' ' + result['openvino_precision'] if result.get('openvino_precision') else ''}), "
        f"{result['frames']} frames {result['frame_size']}"
    )
    table = Table(title=title)
    table.add_column("stage")
    table.add_column("median ms/frame", justify="right")
    for stage, ms in result["stages_ms"].items():
        table.add_row(stage, f"{ms:.1f}")
    table.add_row("[bold]total[/]", f"[bold]{result['total_ms']:.1f}[/]")
    console.print(table)
    if "peak_gpu_mb" in result:
        console.print(f"peak GPU memory: {result['peak_gpu_mb']:.0f} MiB")
    console.print(
        f"peak process RSS: {result['peak_rss_mb']:.0f} MiB; stored memory entries: {result['stored_entries']}"
    )
    if "reference" in result:
        ref = result["reference"]
        console.print(
            f"official SAM2VideoPredictor: propagate {ref['propagate_ms']:.1f} ms/frame "
            f"(+{ref['loading_ms_per_frame']:.1f} ms/frame loading) -> ratio {result['ratio_vs_official']:.3f} "
            f"(with loading {result['ratio_vs_official_with_loading']:.3f})"
        )
    print_steady(result, console)
    for name, label in (("vcam", "to a virtual camera"), ("mp4", "to an mp4 file")):
        if f"e2e_{name}_ms_per_frame" in result:
            console.print(
                f"end to end {label}: {result[f'e2e_{name}_ms_per_frame']:.1f} ms/frame "
                f"(track {result[f'e2e_{name}_track_ms']:.1f}, composite {result[f'e2e_{name}_compose_ms']:.1f}) "
                f"vs bare tracker {result['bare_tracker_ms']:.1f} -> overhead "
                f"{100 * result[f'pipeline_overhead_{name}']:.1f}%"
            )


def print_steady(result: dict[str, Any], console: Any) -> None:
    """The steady-state lines of a tracker run: its frames against the official ones, ops, syncs, deviation."""
    if result.get("steady_frames"):
        line = f"steady state (bank full, {result['steady_frames']} frames): {_fmt(result['steady_ms'])} ms/frame"
        if result.get("ratio_steady_vs_official") is not None:
            line += (
                f" vs official {_fmt(result['official_steady_ms'])} -> ratio {result['ratio_steady_vs_official']:.3f}"
            )
        console.print(line)
    if "ops_per_frame" in result:
        console.print(
            f"per steady frame: {_fmt(result['ops_per_frame'], 0)} aten ops, "
            f"{_fmt(result['host_syncs_per_frame'], 1)} host syncs (eager step: "
            f"{_fmt(result['eager_ops_per_frame'], 0)} ops, {_fmt(result['eager_host_syncs_per_frame'], 1)} syncs)"
        )
    if result.get("official_vos_ms_per_frame") is not None:
        console.print(
            f"official VOS-optimized predictor: {result['official_vos_ms_per_frame']:.1f} ms/frame -> ratio "
            f"{_fmt(result.get('ratio_vs_official_vos'), 3)} (steady state {_fmt(result.get('ratio_steady_vs_official_vos'), 3)})"
        )
    d = result.get("deviation_vs_eager_fp32")
    if d:
        console.print(
            f"{d['path']} vs eager float32 over {d['frames']} frames: mean IoU {d['mean_iou']:.4f}, "
            f"min IoU {d['min_iou']:.4f}, max logit difference {d['max_logit_diff']:.3g}"
        )


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _deviation_cell(d: dict[str, Any] | None) -> str:
    return "exact (eager fp32)" if not d else f"{d['mean_iou']:.4f} / {d['min_iou']:.4f}"


def suite_markdown(result: dict[str, Any]) -> str:
    """The suite's results as markdown tables (what goes into docs/benchmarks.md)."""
    v = result["versions"]
    lines = [
        f"# greencam benchmark suite on {v.get('gpu') or result['machine'].get('cpu')} ({result['device']})",
        "",
        f"- date (UTC): {result['date_utc']}; run time {_fmt(result.get('seconds'))} s"
        + (" (small settings)" if result["small"] else ""),
        f"- torch {v['torch']} (CUDA {v['cuda']}, cuDNN {v['cudnn']}), sam2 {v['sam2']}, OpenCV {v['opencv']}, "
        f"Python {v['python']}",
        "- SAM 2.1 with seeded random weights; medians over the measured frames after warm-up",
        "",
        f"## Bare tracker ({result['tracker'][0]['frame_size'] if result['tracker'] else '–'} frames)",
        "",
        "| run | ms/frame | fps | image encoder | memory attention | mask decoder | memory encoder "
        "| official ms/frame | ratio vs official | steady ms | ratio steady vs official (VOS) "
        "| ops / syncs per frame | IoU vs eager fp32 mean / min | peak GPU MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["tracker"]:
        st = r["stages_ms"]
        total = r["total_ms"]
        lines.append(
            f"| {r['label']} | {_fmt(total, 2)} | {_fmt(1000.0 / total if total else None)} "
            f"| {_fmt(st['image_encoder'], 2)} | {_fmt(st['memory_attention'], 2)} | {_fmt(st['mask_decoder'], 2)} "
            f"| {_fmt(st['memory_encoder'], 2)} | {_fmt(r.get('official_ms_per_frame'), 2)} "
            f"| {_fmt(r.get('ratio_vs_official'), 3)} | {_fmt(r.get('steady_ms'), 2)} "
            f"| {_fmt(r.get('ratio_steady_vs_official'), 3)} ({_fmt(r.get('ratio_steady_vs_official_vos'), 3)}) "
            f"| {_fmt(r.get('ops_per_frame'), 0)} / {_fmt(r.get('host_syncs_per_frame'), 1)} "
            f"| {_deviation_cell(r.get('deviation_vs_eager_fp32'))} | {_fmt(r.get('peak_gpu_mb'), 0)} |"
        )
    lines += [
        "",
        "## Live loop (tiny, source paced at 30 fps; latency = capture to output)",
        "",
        "| clip | frames in / out | output fps | tracker fps | bare tracker fps | live / bare "
        "| latency p50 / p95 ms | send gap p95 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["live"]:
        s = r["status"]
        lines.append(
            f"| {r['label']} {r['frame_size']} | {s['frames_in']} / {s['frames_out']} | {_fmt(s['output_fps'])} "
            f"| {_fmt(s['tracker_fps'])} | {_fmt(r.get('bare_tracker_fps'))} | {_fmt(r.get('live_vs_bare'), 2)} "
            f"| {_fmt(s['latency_p50_ms'])} / {_fmt(s['latency_p95_ms'])} | {_fmt(r['p95_gap_ms'])} |"
        )
    for r in result["e2e"]:
        lines += [
            "",
            f"## Offline pipeline, every frame keyed by its own mask (tiny @ {r['resolution']}, {r['frame_size']})",
            "",
            "| sink | ms/frame | fps | track ms | composite ms | bare tracker ms |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for sink in ("vcam", "mp4"):
            ms = r.get(f"e2e_{sink}_ms_per_frame")
            lines.append(
                f"| {sink} | {_fmt(ms, 2)} | {_fmt(1000.0 / ms if ms else None)} | {_fmt(r.get(f'e2e_{sink}_track_ms'), 2)} "
                f"| {_fmt(r.get(f'e2e_{sink}_compose_ms'), 2)} | {_fmt(r.get('bare_tracker_ms'), 2)} |"
            )
    comp = result.get("compositor")
    if comp:
        lines += ["", f"## Compositor ({comp['frame_size']})", "", "| path | median ms | p95 ms |", "|---|---:|---:|"]
        for key, value in comp.items():
            if isinstance(value, dict) and "median_ms" in value:
                lines.append(f"| {key} | {_fmt(value['median_ms'], 2)} | {_fmt(value['p95_ms'], 2)} |")
        if "gpu_overlap" in comp:
            o = comp["gpu_overlap"]
            lines += [
                "",
                f"Torch path with {_fmt(o['queued_gpu_work_ms'])} ms of other GPU work queued: "
                f"{_fmt(o['compose_ms_with_queued_work'], 2)} ms (alone {_fmt(o['compose_ms_alone'], 2)} ms). "
                "About the queued time means the compositor waits for the tracker's kernels.",
            ]
    if result["serve_step"]:
        lines += [
            "",
            "## greencam serve worker step (batched sessions)",
            "",
            "| sessions | step p50 ms | masks/s per session |",
            "|---:|---:|---:|",
        ]
        for r in result["serve_step"]:
            lines.append(f"| {r['sessions']} | {_fmt(r['step_ms_p50'], 2)} | {_fmt(r['masks_per_s_per_session'])} |")
    if result["skipped"]:
        lines += ["", "Skipped: " + "; ".join(result["skipped"])]
    if result["errors"]:
        lines += ["", "## Errors", ""] + [f"- {e['step']}: {e['error']}" for e in result["errors"]]
    return "\n".join(lines) + "\n"
