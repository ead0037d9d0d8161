"""How models are fitted and scored per parameter: the shared trainer with its hooks
(:mod:`.trainer`), the segmentation losses (:mod:`.segmentation`), the diagonal curvature
estimators behind FairPrune, ME-FairPrune and FairQuantize (:mod:`.curvature`) and their
multi-exit combination (:mod:`.multiexit`). Works on a model and a loader; knows nothing of a
run's context, methods or run folders.

May import: ``fairbench.core``, ``fairbench.metrics``, ``fairbench.data`` and
``fairbench.models``."""
