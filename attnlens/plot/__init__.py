"""Figures of captured cross-attention: per-head grids, single maps, comparisons, score matrices, an explorer.

    al.plot.heads(cap, step=-1)                          # one panel per head (mean over layers)
    al.plot.heads(cap, step=-1, layers=[3])              # the heads of layer 3
    al.plot.map(cap, step=-1, layer=3, head=11)          # rows = lyric words, columns = seconds (= attention_map)
    al.plot.compare({"baseline": a, "lora": b}, step=-1, reference="baseline")
    al.plot.scores(al.analyze(cap), "diagonal_score")    # layer × head matrix
    al.plot.explore(cap).write_html("explore.html")      # standalone interactive page
    al.plot.token_heatmaps(cap, image, words=["cat"])    # per-word heatmaps over a generated image (PixArt)
    al.plot.save(fig, "out.png")                         # PNG / SVG / PDF / HTML, atomic

The numbers behind the figures: :func:`map_data` (rows × frames), :func:`score_matrix` (layer × head) and
:func:`token_heatmap_data` (word × patch rows × patch columns).
"""

from ._data import MapData, Row, key_rows, map_data, pool_frames, score_matrix
from ._image_data import TokenHeatmaps, token_heatmap_data
from .explore import ExplorerFigure, explore
from .heatmaps import attention_map, compare, heads
from .images import token_heatmaps
from .save import save
from .scores import scores

map = attention_map  # noqa: A001 (the public name al.plot.map; attention_map says the same without the builtin's name)

__all__ = [
    "ExplorerFigure",
    "attention_map",
    "MapData",
    "Row",
    "compare",
    "explore",
    "heads",
    "key_rows",
    "map",
    "map_data",
    "pool_frames",
    "save",
    "score_matrix",
    "scores",
    "TokenHeatmaps",
    "token_heatmap_data",
    "token_heatmaps",
]
