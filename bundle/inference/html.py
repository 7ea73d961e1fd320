"""A self-contained HTML page per scan (pictures embedded as base64 PNG), readable offline by a clinician.

Pictures are composed with numpy and encoded with Pillow (no matplotlib figures: a page takes milliseconds).
Slices are shown as the network saw them (128x128, intensities normalised), transposed so that rows run along the
volume's second axis: for DICOM input this is the scanner's own view of the slice.
"""

from __future__ import annotations

import base64
import html
import io
import time

import numpy as np
from PIL import Image

from bundle.data.datalist import SCORE_KEYS

__all__ = ["heat_overlay", "mask_outline", "png_base64", "render_report"]

ATTRIBUTE_LABELS = {
    "nulling": "Myocardium nulling",
    "sharpness": "Sharpness of borders",
    "enhancement": "Enhancement of aorta and valves",
    "fibrosis": "Quality for fibrosis assessment",
}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#1d232a;max-width:1200px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #d5dbe1;padding-bottom:3px}
.meta{color:#56606b;font-size:13px;line-height:1.5}.meta code{font-size:12px}
.verdict{border-radius:8px;padding:14px 18px;margin:16px 0;border:2px solid}
.ok{background:#e8f6ec;border-color:#2e9d52}.bad{background:#fdecea;border-color:#c6392c}
.none{background:#fff6e0;border-color:#d39b00}
.big{font-size:21px;font-weight:700}.refer{margin-top:8px;font-weight:700;color:#9a2d00}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #d5dbe1;padding:3px 8px;text-align:right}
th{background:#f1f4f7}td.l,th.l{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0;text-align:center;font-size:11px;color:#444}
figure img{width:150px;height:150px;image-rendering:auto;border:1px solid #ccd}.cam img{width:200px;height:200px}
.note{font-size:12px;color:#56606b}footer{margin-top:30px;font-size:12px;color:#56606b}
"""


def png_base64(image: np.ndarray | Image.Image) -> str:
    """A ``data:`` URI of an image encoded as PNG: an ``(h, w)`` or ``(h, w, 3)`` uint8 array or a Pillow image."""
    buf = io.BytesIO()
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.ascontiguousarray(image))
    img.save(buf, format="PNG", compress_level=6)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _gray(img: np.ndarray) -> np.ndarray:
    """A slice (0..1) as RGB uint8, transposed for display."""
    g = (np.clip(np.asarray(img, dtype=np.float32), 0, 1) * 255).astype(np.uint8).T
    return np.repeat(g[..., None], 3, axis=2)


def mask_outline(img: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (255, 60, 40)) -> Image.Image:
    """The slice ``img`` (0..1) with the outline of ``mask`` in ``color``: a palette image (a third of RGB's size)."""
    from skimage.segmentation import find_boundaries

    levels = (np.clip(np.asarray(img, dtype=np.float32), 0, 1) * 254).astype(np.uint8).T  # palette 0..254: grey
    levels[find_boundaries(np.asarray(mask, dtype=bool).T, mode="inner")] = 255  # palette 255: the outline
    out = Image.fromarray(levels, mode="P")
    out.putpalette([v for i in range(255) for v in (round(i * 255 / 254),) * 3] + list(color))
    return out


def heat_overlay(img: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The slice ``img`` (0..1) as RGB with a heat map of ``cam`` (0..1) blended over it (jet colour map)."""
    from matplotlib import colormaps

    heat = colormaps["jet"](np.clip(np.asarray(cam, dtype=np.float32), 0, 1).T)[..., :3] * 255
    return (_gray(img) * (1 - alpha) + heat * alpha).astype(np.uint8)


def _p_cell(p: float | None, threshold: float = 0.5) -> str:
    if p is None or (isinstance(p, float) and np.isnan(p)):
        return "<td>-</td>"
    hue = 120 * float(np.clip(p, 0, 1))
    return f'<td style="background:hsl({hue:.0f},65%,{86 if abs(p - threshold) > 0.1 else 92}%)">{p:.3f}</td>'


def _la_chart(la_prob: list[float], threshold: float, selected: set[int]) -> str:
    """An inline SVG bar chart of the LA probability of every slice, with the threshold."""
    n = len(la_prob)
    if n == 0:
        return ""
    w, h, bw = 900, 120, 900 / n
    bars = "".join(
        f'<rect x="{i * bw:.1f}" y="{h - p * h:.1f}" width="{max(bw - 0.5, 0.5):.1f}" height="{p * h:.1f}" '
        f'fill="{"#c6392c" if i in selected else "#9aa5b1"}"><title>slice {i}: {p:.3f}</title></rect>'
        for i, p in enumerate(la_prob)
    )
    ty = h - threshold * h
    return (
        f'<svg width="{w}" height="{h + 18}" viewBox="0 0 {w} {h + 18}" role="img">{bars}'
        f'<line x1="0" x2="{w}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="#1d232a" stroke-dasharray="4 3"/>'
        f'<text x="2" y="{h + 14}" font-size="11">slice 0</text><text x="{w - 2}" y="{h + 14}" font-size="11" '
        f'text-anchor="end">slice {n - 1}</text><text x="{w - 2}" y="{max(ty - 3, 10):.1f}" font-size="11" '
        f'text-anchor="end">t = {threshold}</text></svg>'
    )


def _header(result) -> str:
    e, d = html.escape, result.detail
    axis = "?" if d.slice_axis is None else d.slice_axis
    series = f"<br>Series <code>{e(result.series_uid)}</code> {e(d.source.get('series_description', ''))}"
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>LA LGE-MRI quality: {e(result.name)}"
        f"</title><style>{CSS}</style></head><body><h1>Left-atrial LGE-MRI: quality for fibrosis assessment</h1>"
        f"<div class=meta>Input <code>{e(result.input)}</code>{series if result.series_uid else ''}"
        f"<br>{result.n_slices} slices along voxel axis {axis}; {result.n_la_slices} with "
        f"left atrium<br>Report created {time.strftime('%Y-%m-%d %H:%M')}</div>"
    )


def _verdict(result, qa_t: float) -> str:
    e, d = html.escape, result.detail
    if result.status == "no_left_atrium":
        return (
            f'<div class="verdict none"><div class=big>No left atrium found</div><div>{e(result.message)}</div>'
            "<div class=refer>REFER: check the scan's field of view and orientation</div></div>"
        )
    if result.diagnostic is None:
        return (
            f'<div class="verdict none"><div class=big>Left atrium found; quality not assessed</div>'
            f"<div>{e(result.message)}</div></div>"
        )
    votes, n_views = d.slice_votes or [0, 0], len((d.verdict or {}).get("tta_p", []))
    word, css = ("DIAGNOSTIC", "ok") if result.diagnostic else ("NON-DIAGNOSTIC", "bad")
    refer = (
        f"<div class=refer>REFER to a reader: {e(result.message)}</div>"
        if result.refer
        else "<div class=note>Verdict stable under flips; slice vote and mean probability agree.</div>"
    )
    out = [
        f'<div class="verdict {css}"><div class=big>{word} for fibrosis assessment</div>'
        f"<div>Mode over the {result.n_la_slices} LA slices: {votes[0]} diagnostic, {votes[1]} non-diagnostic. "
        f"Mean probability diagnostic: {result.p_fibrosis:.3f} (threshold {qa_t}). Uncertainty (spread over "
        f"{n_views} flipped views): {result.uncertainty:.3f}.</div>{refer}</div>",
        "<h2>Image-quality attributes</h2><table><tr><th class=l>attribute</th><th>probability diagnostic</th>"
        "<th class=l>reading</th></tr>",
    ]
    for k in SCORE_KEYS:
        p = getattr(result, f"p_{k}")
        reading = "diagnostic" if p >= qa_t else "non-diagnostic"
        out.append(f"<tr><td class=l>{ATTRIBUTE_LABELS[k]}</td>{_p_cell(p, qa_t)}<td class=l>{reading}</td></tr>")
    return "".join(out) + "</table>"


def _montage(result, slices: list[dict]) -> str:
    v = result.visuals
    images, masks, indices = v.images, v.masks, v.indices
    if images is None or not len(images):
        return ""
    ok = result.status == "ok"
    title = "LA slices with the detected LA outline" if ok else "Slices with the highest LA probability"
    out = [f"<h2>{title} ({len(indices)})</h2><div class=grid>"]
    by_index = {s["index"]: s for s in slices}
    for img, mask, idx in zip(images, masks, indices):
        s = by_index.get(int(idx), {})
        cap = f"slice {idx} · LA {s.get('la_prob', float('nan')):.2f}"
        if s.get("p_fibrosis") is not None:
            cap += f" · QA {s['p_fibrosis']:.2f}"
        src = png_base64(mask_outline(img, mask))
        out.append(f'<figure><img alt="slice {idx}" src="{src}"><figcaption>{cap}</figcaption></figure>')
    return "".join(out) + "</div>"


def _cams(result) -> str:
    v, cam_idx = result.visuals, result.detail.cam_slices or []
    cams, images = v.cams, v.images
    if cams is None or not len(cams):
        return ""
    lookup = {int(i): k for k, i in enumerate(v.indices)}
    what = "diagnostic" if result.diagnostic else "non-diagnostic"
    out = [
        f"<h2>What decided the verdict: HiResCAM</h2><div class=note>The {len(cam_idx)} slice(s) that voted {what} "
        f"most confidently; red marks the regions whose features pushed the fibrosis-quality output towards {what} "
        "(HiResCAM, Draelos &amp; Carin 2020, on the QA network's last convolutional stage).</div>"
        "<div class=grid>"
    ]
    for cam, idx in zip(cams, cam_idx):
        img = images[lookup[int(idx)]]
        plain, heat = png_base64(_gray(img)), png_base64(heat_overlay(img, cam))
        out.append(
            f'<figure class=cam><img alt="slice {idx}" src="{plain}"><figcaption>slice {idx}</figcaption>'
            f'</figure><figure class=cam><img alt="HiResCAM slice {idx}" src="{heat}"><figcaption>HiResCAM '
            f"slice {idx}</figcaption></figure>"
        )
    return "".join(out) + "</div>"


def _slice_table(slices: list[dict], qa_t: float) -> str:
    rows = [s for s in slices if s.get("selected")]
    if not rows or rows[0].get("p_fibrosis") is None:
        return ""
    head = "".join(f"<th>{k}</th>" for k in SCORE_KEYS)
    out = [
        f"<h2>Per-slice probabilities (LA slices)</h2><table><tr><th>slice</th><th>LA</th>{head}"
        "<th>spread over flips</th><th>vote</th></tr>"
    ]
    for s in rows:
        cells = "".join(_p_cell(s.get(f"p_{k}"), qa_t) for k in SCORE_KEYS)
        vote = "diagnostic" if s.get("vote") else "non-diagnostic"
        out.append(
            f"<tr><td>{s['index']}</td><td>{s['la_prob']:.3f}</td>{cells}"
            f"<td>{s.get('fibrosis_spread', 0):.3f}</td><td>{vote}</td></tr>"
        )
    return "".join(out) + "</table>"


def render_report(result, settings: dict | None = None) -> str:
    """The HTML page of one assessed scan (a :class:`~bundle.inference.report.ScanResult`)."""
    settings = settings or {}
    la_t = float(settings.get("la_threshold", 0.5))
    qa_t = float(settings.get("qa_threshold", 0.5))
    slices = result.detail.slices or []
    selected = {s["index"] for s in slices if s.get("selected")}
    chart = _la_chart([s["la_prob"] for s in slices], la_t, selected)
    footer = html.escape(", ".join(f"{k}={settings[k]}" for k in sorted(settings)))
    return "".join(
        [
            _header(result),
            _verdict(result, qa_t),
            "<h2>Left-atrium probability per slice</h2><div class=note>Highest LA probability on each slice (stage 1); "
            f"slices at or above t = {la_t} (red) are assessed.</div>{chart}",
            _montage(result, slices),
            _cams(result),
            _slice_table(slices, qa_t),
            f"<footer>Settings: {footer}<br>Research use only: flags scans whose quality may be insufficient for "
            "fibrosis assessment; not for clinical decisions.</footer></body></html>",
        ]
    )
