"""Many runs and what they say together: suites (:mod:`.suite`), sweeps that resume
(:mod:`.sweep`), executors (:mod:`.executors`, local or Ray), the selection rules that fill a
leaderboard row (:mod:`.selection`), the leaderboard (:mod:`.leaderboard`), its statistics
(:mod:`.stats`) and the figures (:mod:`.plots`).

May import: every package below it (``core``, ``metrics``, ``data``, ``models``,
``training``, ``run``); never ``fairbench.cli``."""
