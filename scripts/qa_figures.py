"""The paper's Fig. 2 and Fig. 3 from a QA checkpoint with its plan: HiResCAM maps of deciding LA slices, and a UMAP
(t-SNE where umap-learn is absent) of the slices' embeddings coloured by their scan's scores.

    python scripts/qa_figures.py --dataset_dir ../shared/data/la2018 --qa_ckpt models/qa.pt --output_dir docs/figures

The LA region is cut around the datalist's LA labels, as at training. The shipped model was trained on every scan of
the datalist, so these pictures show what it learned, not how it generalises (Table 2 does that).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bundle.errors import entry_point  # noqa: E402


@entry_point
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset_dir", required=True)
    p.add_argument(
        "--qa_ckpt",
        default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "qa.pt"),
    )
    p.add_argument("--output_dir", required=True)
    p.add_argument("--cache_dir", default=None, help="LA-region cache (default <output_dir>/.cache)")
    p.add_argument("--per_scan", type=int, default=8, help="slices per scan in the embedding picture")
    args = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bundle.data.datalist import SCORE_KEYS, load_datalist
    from bundle.data.region_cache import load_region_scans, region_cache
    from bundle.inference import QAStage, qa_network, qa_plan
    from bundle.transforms.region import normalise_region

    plan = qa_plan(args.qa_ckpt)
    if not plan.get("region"):
        print(f"ERROR: {args.qa_ckpt} has no LA-region plan beside it", file=sys.stderr)
        return 2
    region = plan["region"]
    entries = load_datalist(os.path.join(args.dataset_dir, "dataset.json"), args.dataset_dir, ("quality",))["quality"]
    os.makedirs(args.output_dir, exist_ok=True)
    cache = args.cache_dir or os.path.join(args.output_dir, ".cache")
    scans = load_region_scans(region_cache(entries, cache, region["pixel_mm"], region["size"]))
    for s in scans:
        s.images = normalise_region(s.images.astype(np.float32), region["normalise"])
    stage = QAStage(
        qa_network(plan, None),
        args.qa_ckpt,
        threshold=plan["threshold"],
        rule=plan["rule"],
        temperature=plan["temperature"],
        region=region,
        cam_layer=plan["cam_layer"],
        cam_slices=1,
    )

    # Fig. 2: the deciding slice of the two most confident scans of each verdict, with its HiResCAM map
    results = [stage.assess(torch.from_numpy(s.images)[:, None]) for s in scans]
    p_fib = np.array([r.verdict["p"][3] for r in results])
    picks = [*np.argsort(-p_fib)[:2], *np.argsort(p_fib)[:2]]
    fig, axes = plt.subplots(2, 4, figsize=(12, 6.4))
    for c, i in enumerate(picks):
        r, s = results[i], scans[i]
        k = r.cam_slices[0] if r.cam_slices else 0
        axes[0, c].imshow(s.images[k], cmap="gray", vmin=0, vmax=1.2)
        axes[1, c].imshow(s.images[k], cmap="gray", vmin=0, vmax=1.2)
        if r.cams is not None:
            axes[1, c].imshow(r.cams[0], cmap="jet", alpha=0.4, vmin=0, vmax=1)
        verdict = "diagnostic" if r.verdict["diagnostic"] else "non-diagnostic"
        axes[0, c].set_title(
            f"{s.name}\nscores {s.scores.astype(int).tolist()}\n{verdict}, p={p_fib[i]:.2f}", fontsize=8
        )
        for a in axes[:, c]:
            a.axis("off")
    fig.suptitle("HiResCAM of the fibrosis output on the deciding LA slice (evidence for the verdict)", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(args.output_dir, "hirescam.png"), dpi=80)
    plt.close(fig)

    # Fig. 3: slice embeddings (the first member's pooled encoder features)
    member = stage.model.net.members[0] if hasattr(stage.model.net, "members") else stage.model.net
    rng = np.random.default_rng(0)
    feats, labels = [], []
    with torch.no_grad():
        for s in scans:
            idx = rng.choice(len(s.images), size=min(args.per_scan, len(s.images)), replace=False)
            feats.append(member.embed(torch.from_numpy(s.images[idx])[:, None]).numpy())
            labels.append(np.repeat(s.scores[None], len(idx), 0))
    x, y = np.concatenate(feats), np.concatenate(labels)
    try:
        import umap

        xy, method = umap.UMAP(n_components=2, random_state=0).fit_transform(x), "UMAP"
    except ImportError:
        from sklearn.manifold import TSNE

        xy, method = TSNE(n_components=2, random_state=0, init="pca").fit_transform(x), "t-SNE"
    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    for j, label in enumerate(SCORE_KEYS):
        sc = axes[j].scatter(xy[:, 0], xy[:, 1], c=y[:, j], cmap="RdYlGn", vmin=1, vmax=5, s=6)
        axes[j].set_title(f"{method} of slice embeddings: {label} score", fontsize=9)
        axes[j].set_xticks([])
        axes[j].set_yticks([])
    fig.colorbar(sc, ax=axes, shrink=0.8, label="score (>= 3 diagnostic)")
    fig.savefig(os.path.join(args.output_dir, "embedding.png"), dpi=80)
    plt.close(fig)
    print(f"figures: {args.output_dir}/hirescam.png, {args.output_dir}/embedding.png ({method})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
