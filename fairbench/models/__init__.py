"""Networks a run trains: classification backbones and their registry (:mod:`.backbones`),
U-Net segmentors with ``encode``/``decode`` (:mod:`.segmentors`) and the multi-exit wrapper
with its exit policy and compute report (:mod:`.multiexit`), and the tap of a backbone's final
feature map (:mod:`.features`). Nothing here trains or reads data
beyond shapes.

May import: ``fairbench.core``, ``fairbench.metrics`` and ``fairbench.data``."""
