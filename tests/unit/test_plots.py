"""Training's evaluation plots for any label spec: the dataset's scale, any vocabulary."""

from __future__ import annotations

import numpy as np

from training import plots


def test_score_scatter_is_on_the_dataset_scale_and_skips_unlabelled() -> None:
    true = np.array([2.0, np.nan, 7.5, 9.0])
    pred = np.array([3.0, 5.0, 7.0, 8.5])
    fig = plots.score_scatter(pred, true, score_range=(1.0, 10.0), score_name="aesthetic")
    ax = fig.axes[0]
    assert ax.get_xlim() == (1.0, 10.0) and ax.get_ylim() == (1.0, 10.0)
    assert ax.get_xlabel() == "true aesthetic"
    assert len(ax.collections[0].get_offsets()) == 3  # the unlabelled image is not plotted
    assert plots.png_bytes(fig)[:4] == b"\x89PNG"


def test_ap_per_tag_has_a_bar_per_tag_weakest_first() -> None:
    fig = plots.ap_per_tag({"cat": 0.9, "b&w": 0.2, "sky": 0.55})
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    # barh draws the first name at the bottom: the weakest tag ends up on top.
    assert labels == ["cat", "sky", "b&w"]
    assert [round(b.get_width(), 2) for b in ax.patches] == [0.9, 0.55, 0.2]
    assert plots.png_bytes(fig)[:4] == b"\x89PNG"


def test_pr_curves_of_a_large_vocabulary_have_no_legend() -> None:
    rng = np.random.default_rng(0)
    names = tuple(f"tag{i}" for i in range(plots.MAX_LEGEND_TAGS + 5))
    probs, labels = rng.random((40, len(names))), rng.random((40, len(names))) > 0.5
    assert plots.pr_curves(probs, labels, names).axes[0].get_legend() is None
    few = plots.pr_curves(probs[:, :3], labels[:, :3], names[:3])
    assert len(few.axes[0].get_legend().get_texts()) == 3
    plots.plt.close("all")
