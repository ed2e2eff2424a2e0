"""Turn the per-run results of a sweep into the summary (JSON) and the markdown table."""

from __future__ import annotations

import math
import statistics

MNIST_TRAIN = 60000


def _median(xs):
    return float(statistics.median(xs)) if xs else None


def _why(res):
    return f"{res['status']}: {res.get('reason', '')}".strip()


def summarize(runs, sizes, peers, baselines, floor_peer):
    """Per batch size and peer: median/min/max ms, samples/s, ratios, floor, epoch s, memory.

    ``baselines``: the peers that may serve as "scratchvae" for the ratios, in order of
    preference (the first with a result in every repeat is used).
    """
    out = {}
    for B in sizes:
        at = [r for r in runs if r["batch"] == B]
        by_peer = {p: [r for r in at if r["peer"] == p] for p in peers}
        ok = {p: [r for r in rs if r["status"] == "ok"] for p, rs in by_peer.items()}
        base = next((p for p in baselines if ok.get(p) and len(ok[p]) == len(by_peer[p])), None)
        base_ms = {r["repeat"]: r["ms_per_step"] for r in ok.get(base, [])}
        floors = [r["floor_ms"] for r in ok.get(floor_peer, []) if "floor_ms" in r]
        floor = _median(floors)
        eager = [r["floor_eager_ms"] for r in ok.get(floor_peer, [])
                 if "floor_graph_ms" in r and "floor_eager_ms" in r]
        rows = {}
        for p in peers:
            rs = ok[p]
            if not rs:
                bad = by_peer[p][0] if by_peer[p] else {"status": "skipped", "reason": "not run"}
                rows[p] = {"status": bad["status"], "reason": bad.get("reason", "")}
                continue
            ms = [r["ms_per_step"] for r in sorted(rs, key=lambda r: r["repeat"])]
            med = _median(ms)
            ratios = [r["ms_per_step"] / base_ms[r["repeat"]] for r in sorted(rs, key=lambda r: r["repeat"])
                      if r["repeat"] in base_ms]
            row = {"status": "ok", "runs": len(rs), "ms_per_step": ms, "median_ms": med,
                   "min_ms": min(ms), "max_ms": max(ms), "samples_per_s": B / (med / 1e3),
                   "ratio_runs": ratios, "ratio_median": _median(ratios),
                   "efficiency": floor / med if floor else None,
                   "epoch_s": math.ceil(MNIST_TRAIN / B) * med / 1e3,
                   "peak_mem_bytes": max(r["peak_mem_bytes"] for r in rs),
                   "peak_mem_kind": rs[0]["peak_mem_kind"],
                   "wall_ms_median": _median([r["wall_ms_per_step"] for r in rs]),
                   "loss_last": rs[-1]["loss_last"], "all_finite": all(r["all_finite"] for r in rs)}
            failed = [r for r in by_peer[p] if r["status"] != "ok"]
            if failed:
                row["failed_runs"] = [_why(r) for r in failed]
            rows[p] = row
        out[str(B)] = {"baseline": base, "floor_ms": floor, "floor_runs": floors,
                       "floor_min_ms": min(floors) if floors else None,
                       "floor_max_ms": max(floors) if floors else None,
                       "floor_eager_ms": _median(eager), "peers": rows}
    return out


def _mem(n):
    return f"{n / 2**20:.0f} MiB"


def _f(x, nd=2):
    return "–" if x is None else f"{x:.{nd}f}"


def _ms(x):
    """Milliseconds: 3 decimals under 1 ms (GPU steps), else 2."""
    return "–" if x is None else f"{x:.3f}" if x < 1 else f"{x:.2f}"


def markdown(meta, check, summary):
    m = meta
    lines = [f"# scratchvae benchmark: {m['device'].upper()}, {m['date']}", ""]
    lines.append(f"`{m['command']}`")
    lines.append("")
    lines += [f"- **Machine:** {m['cpu_model']}, {m['cpu_count']} logical CPUs; {m['platform']}; "
              f"Python {m['python']}" + (f"; GPU {m['gpu']}" if m.get("gpu") else "")]
    lines.append(f"- **Versions:** {m['versions_line']}")
    lines.append(f"- **bench extra pins (setup.cfg):** {', '.join(m['bench_pins']) or 'none'}"
                 + (f"; installed here: {m['installed_line']}" if m.get("installed_line") else ""))
    lines.append(f"- **BLAS:** {m['blas_line']}")
    lines.append(f"- **Threads:** {m['threads_line']}")
    lines.append(f"- **Conditions:** each peer in its own process; peers interleaved; the whole sweep "
                 f"repeated {m['repeats']}×; float32 asserted for every peer's parameters (JAX without x64); "
                 f"the matrix products in **{m.get('precision', 'fp32')}** (below); timed step = draw ε + forward "
                 f"including the scalar loss + backward + Adam (lr 1e-3); each step takes the next of "
                 f"{m['n_batches']} preloaded batches of {m['data']}, pixels in [0, 1], the same "
                 f"sequence for every peer; warm-up {m['warmup']} steps, then "
                 + ", ".join(f"{s} timed steps at batch {b}" for b, s in m["steps"].items()) + ".")
    lines.append(f"- **Precision {m.get('precision', 'fp32')}**, each peer's own setting: "
                 + ("; ".join(f"{p}: {v}" for p, v in m.get("precision_settings", {}).items()) or "none ran")
                 + ". Parameters, optimizer state and losses stay float32 everywhere.")
    lines.append(f"- **Timing:** {m['timing_line']}")
    lines.append("- **ratio** = peer ms / scratchvae ms in the same sweep (scratchvae = "
                 f"{m['baseline_desc']}): **> 1 means scratchvae is faster**. Each run's ratio, then "
                 "the median. **floor/step** = the GEMM floor (the step's 11 matrix products alone, "
                 f"{m['floor_desc']}) / the peer's median step. **s/epoch** = ⌈60000/B⌉ × median "
                 f"step (full MNIST). **peak mem**: {m['mem_desc']}.")
    if m.get("noise_note"):
        lines.append(f"- **Note:** {m['noise_note']}")
    for B, s in summary.items():
        lines += ["", f"## batch {B}", ""]
        if s["baseline"] and not s["baseline"].startswith("scratchvae"):
            lines += [f"No scratchvae peer ran at this size: ratios are to **{s['baseline']}**.", ""]
        elif s["baseline"] and len(m["baseline_desc"].split(" if it ran")) > 1:
            lines += [f"Ratios are to **{s['baseline']}**.", ""]
        if s["floor_ms"] is not None:
            lines.append(f"GEMM floor: **{_ms(s['floor_ms'])} ms** per step "
                         f"({_ms(s['floor_min_ms'])}–{_ms(s['floor_max_ms'])} over {len(s['floor_runs'])} runs)"
                         + (f"; the same products launched eagerly: {_ms(s['floor_eager_ms'])} ms."
                            if s.get("floor_eager_ms") is not None else "."))
            lines.append("")
        lines.append("| peer | ms/step (median) | min–max | samples/s | ratio per run | ratio (median) "
                     "| floor/step | s/epoch | peak mem |")
        lines.append("|---|---:|---:|---:|---|---:|---:|---:|---:|")
        for p, r in s["peers"].items():
            if r["status"] != "ok":
                lines.append(f"| {p} | {r['status']}: {r['reason']} | | | | | | | |")
                continue
            runs = " / ".join(f"{x:.2f}" for x in r["ratio_runs"]) or "–"
            mark = "" if r["all_finite"] else " (non-finite loss!)"
            extra = f" ({len(r['failed_runs'])} run(s) failed)" if r.get("failed_runs") else ""
            lines.append(f"| {p}{mark}{extra} | {_ms(r['median_ms'])} | {_ms(r['min_ms'])}–{_ms(r['max_ms'])} | "
                         f"{r['samples_per_s']:,.0f} | {runs} | {_f(r['ratio_median'])} | "
                         f"{_f(r['efficiency'])} | {_f(r['epoch_s'], 1)} | {_mem(r['peak_mem_bytes'])} |")
    lines += ["", "## Same work (checked before timing)", "",
              f"Loss and gradients for the same parameters and the same ε (numpy-generated, batch "
              f"{check['batch']}), relative error ‖peer − scratchvae-numpy‖/‖scratchvae-numpy‖ per array; "
              f"the bound is {check['tol']:g} in float64.", "",
              "| peer | dtype | loss | worst gradient (array) | bound | result |", "|---|---|---:|---:|---:|---|"]
    for p, c in check["peers"].items():
        if c["status"] != "ok":
            lines.append(f"| {p} | | | | | {c['status']}: {c.get('reason', '')} |")
            continue
        worst = max((v, k) for k, v in c["errors"].items() if k != "loss")
        lines.append(f"| {p} | {c['dtype']} | {c['errors'].get('loss', float('nan')):.1e} | "
                     f"{worst[0]:.1e} ({worst[1]}) | {c['tol']:g} | "
                     f"{'pass' if c['pass'] else 'FAIL'}{' — ' + c['reference'] if c.get('reference') else ''} |")
    return "\n".join(lines) + "\n"
