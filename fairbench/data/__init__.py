"""The first stage of a run: from a dataset's files to tensors a loader serves.

The dataset contract and its registry (:mod:`.dataset`: ``SampleTable``, ``DatasetAdapter``,
``register_dataset``), image decoding (:mod:`.images`), hashed, patient-grouped splits
(:mod:`.splits`), the memory-mapped tensor cache (:mod:`.cache`) and the batch loaders with
on-device augmentation (:mod:`.loaders`). Adapters for concrete datasets live in
``fairbench.datasets`` and only build a ``SampleTable``.

May import: ``fairbench.core`` and ``fairbench.metrics``."""
