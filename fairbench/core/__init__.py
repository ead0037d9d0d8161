"""Shared infrastructure that every other package may use and that imports no other part of
fairbench: the error hierarchy (:mod:`.errors`), the name registries behind methods, datasets
and backbones (:mod:`.registry`), typed parameter dataclasses (:mod:`.params`), progress bars
(:mod:`.progress`), wall time by phase (:mod:`.timing`), atomic files, hashes and locks
(:mod:`.files`) and the package version (:mod:`.version`).

It sits at the bottom because every stage of a run needs these pieces and none of them needs a
stage: one package rather than loose top-level modules, so that the top of ``fairbench`` holds
only the public API. May import: nothing of fairbench outside ``core``."""
