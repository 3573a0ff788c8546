"""The "Depth" section of report.html and its row in the verdict box, from a `caikit depth` depth.json.

Charts are inline SVG (report.charts.svg_line_chart), one per series: the shift's dimensionality and size per
layer, the direction's separation and cosine per layer, the spectrum at the layer where the shift is largest,
and the per-token KL curve. `caikit depth` writes the same charts to DIR/charts/*.svg.
"""

from __future__ import annotations

from html import escape
from typing import Any

from caikit.report.charts import svg_line_chart
from caikit.report.finding import Finding
from caikit.report.markup import Raw, missing, table
from caikit.report.sources import Layout, interval_of, read_json


def depth_charts(result: dict[str, Any]) -> dict[str, str]:
    """{file stem: svg} of a depth.json's series (an empty series draws no chart)."""
    layers = result.get("layers") or []
    charts = {}

    def put(name: str, title: str, series: dict, x_label: str) -> None:
        series = {k: v for k, v in series.items() if v}
        if series:
            charts[name] = svg_line_chart(title, series, x_label=x_label)

    put("dimensions", "Shift M1 - M0: directions per layer",
        {"k90 (90 % of energy)": [(r["layer"], r["k90"]) for r in layers],
         "k50": [(r["layer"], r["k50"]) for r in layers],
         "participation ratio": [(r["layer"], r["participation_ratio"]) for r in layers]}, "layer")
    put("shift_size", "Shift size ||M1 - M0|| / ||M0|| per layer",
        {"relative size": [(r["layer"], r["relative_size"]) for r in layers]}, "layer")
    put("direction", "Refusal direction per layer",
        {"AUROC after (held out)": [(r["layer"], r["after"]["auroc"]) for r in layers],
         "AUROC before (held out)": [(r["layer"], r["before"]["auroc"]) for r in layers],
         "cosine before/after": [(r["layer"], r["cosine"]) for r in layers],
         "shift share along it": [(r["layer"], r["share_along_direction"]) for r in layers]}, "layer")
    spectrum = result.get("spectrum") or {}
    put("spectrum", f"Spectrum of the shift at layer {spectrum.get('layer')}: share of energy",
        {"eigenvalue share": [(i + 1, s) for i, s in enumerate(spectrum.get("shares") or [])]}, "direction")
    token = result.get("token_kl") or {}
    put("token_kl", "KL(M1 || M0) per response position (harmful prompts)",
        {"on M1's answers": [(p["position"], p["kl"]) for p in (token.get("after_answers") or {}).get("curve", [])],
         "on M0's answers": [(p["position"], p["kl"]) for p in (token.get("before_answers") or {}).get("curve", [])]},
        "response position")
    return charts


def _iv(value: Any, interval: Any, pct: bool = False) -> Raw:
    if value is None:
        return Raw("—")
    f = (lambda x: f"{100 * x:.0f} %") if pct else (lambda x: f"{x:.3g}")
    pair = interval_of(interval)
    span = f'<span class="ci">{f(pair[0])}–{f(pair[1])}</span>' if pair else ""
    return Raw(escape(f(value)) + span)


def depth_result(layout: Layout) -> tuple[dict, str]:
    """(depth.json, how to name it on the page) of the run's depth stage, or ({}, "")."""
    folder = layout.dir("depth")
    if folder is None:
        return {}, ""
    return read_json(folder / "depth.json"), layout.rel("depth", "depth.json")


def depth_part(layout: Layout, max_examples: int) -> str:
    result, where = depth_result(layout)
    if not result:
        return missing("No depth/depth.json: `caikit depth` has not run.") if layout.dir("depth") else ""
    out = [f"<p>{escape(result.get('summary', ''))}. Before: <code>{escape(str(result.get('before')))}</code>, after: "
           f"<code>{escape(str(result.get('after')))}</code>; {result.get('n_harmful')} harmful and "
           f"{result.get('n_harmless')} harmless prompts ({escape(where)}). Each figure carries its 95 % interval "
           "beneath it (bootstrap over prompts).</p>"]
    ab = result.get("ablation") or {}
    if ab:
        models = ab.get("models") or {}
        rows = [["before (M0)", _iv(models["before"]["rate"], models["before"]["interval"], True), None, None, None],
                ["after (M1)", _iv(models["after"]["rate"], models["after"]["interval"], True), None, None, None]]
        for r in ab.get("rows") or []:
            rec, cost = r["recovered"], r["harmless_cost"]
            rows.append([f"after, {r['ablated']} ablated (layer {r['layer']})",
                         _iv(r["refusal"]["rate"], r["refusal"]["interval"], True),
                         _iv(rec["share"], rec["interval"], True), _iv(cost["kl_per_token"], cost["kl_interval"]),
                         _iv(cost["perplexity_ablated"], cost["perplexity_ablated_interval"])])
        out.append(f"<h3>The way back</h3><p><strong>{escape(ab.get('verdict', ''))}</strong></p>")
        out.append(table(["model", "refusal rate (harmful)", "share of the change undone",
                          "KL to M1 on harmless (nats/token)", "perplexity on harmless"], rows, [1, 2, 3, 4]))
    token = result.get("token_kl") or {}
    if token:
        out.append("<h3>Which tokens changed</h3>")
        out.append(table(["answers", f"share of KL in the first {next(iter(token.values()))['head']} tokens",
                          "even spread", "KL per token", "prompts", "reading"],
                         [[name.replace("_", " "), _iv(t["share"], t["interval"], True),
                           _iv(t["even_share"], None, True), t["mean_kl_per_token"], t["n"], t["verdict"]]
                          for name, t in token.items()], [1, 2, 3, 4]))
    charts = depth_charts(result)
    if charts:
        out.append('<div class="charts">' + "".join(charts.values()) + "</div>")
    layers = result.get("layers") or []
    if layers:
        out.append("<details><summary>Per layer</summary>" + table(
            ["layer", "shift size", "k50", "k90", "participation ratio", "AUROC before", "AUROC after", "cosine",
             "shift along direction"],
            [[r["layer"], r["relative_size"], _iv(r["k50"], r["k50_interval"]), _iv(r["k90"], r["k90_interval"]),
              _iv(r["participation_ratio"], r["participation_ratio_interval"]),
              _iv(r["before"]["auroc"], r["before"]["auroc_interval"]),
              _iv(r["after"]["auroc"], r["after"]["auroc_interval"]), _iv(r["cosine"], r["cosine_interval"]),
              _iv(r["share_along_direction"], r["share_along_direction_interval"], True)] for r in layers],
            range(1, 9)) + "</details>")
    weights = result.get("weights") or {}
    if weights.get("types"):
        ranks = weights.get("ranks") or []
        out.append(f"<h3>Weights</h3><p>{escape(weights.get('verdict', ''))}</p>" + table(
            ["layer type", "changed", "median effective rank (90 %)", "median relative change",
             *[f"rank {r} keeps" for r in ranks]],
            [[t["type"], f"{t['changed']}/{t['matrices']}", t["median_k90"], t["median_relative_change"],
              *[Raw(f"{100 * t['median_rank_share'][str(r)]:.0f} %") for r in ranks]] for t in weights["types"]],
            range(1, 4 + len(ranks))))
    return "".join(out)


def depth_finding(layout: Layout):
    """The verdict box's row: how much of the alignment one direction undoes."""
    result, where = depth_result(layout)
    ab = result.get("ablation") if result else None
    if not ab:
        return None
    verdict = str(ab.get("verdict", ""))
    level = "good" if verdict.startswith("deep") else "none" if verdict.startswith("no verdict") else "warn"
    badge = verdict.split(":")[0]
    row = (ab.get("rows") or [{}])[0]
    rec = row.get("recovered") or {}
    facts = f"({where}: layer {ab.get('layer')}, {result.get('n_harmful')} harmful prompts"
    if rec.get("interval"):
        facts += f", share undone {100 * rec['interval'][0]:.0f}–{100 * rec['interval'][1]:.0f} %"
    return Finding("Depth", level, verdict[:1].upper() + verdict[1:], badge=badge, facts=facts + ")",
                   detail=str(result.get("summary", "")))
