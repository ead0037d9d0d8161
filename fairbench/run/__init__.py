"""One run, from a configuration to a finished run folder: the method contract and its
registry (:mod:`.method`), what a method gets (:mod:`.context`: ``RunContext``, the shared
vanilla baseline), helpers shared by the post-hoc and multi-exit methods that work through a
context (:mod:`.posthoc`, :mod:`.multiexit`), the runner (:mod:`.runner`), the run folder's
files (:mod:`.store`), their mirror in MLflow (:mod:`.tracking`) and the printed report
(:mod:`.report`). The built-in methods live in ``fairbench.methods`` and build on this
package.

May import: ``fairbench.core``, ``fairbench.metrics``, ``fairbench.data``,
``fairbench.models`` and ``fairbench.training``."""
