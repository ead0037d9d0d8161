"""Built-in dataset adapters (installed as ``fairbench.datasets``)."""

from . import csv_folder, fairseg, fitzpatrick17k, ham10000, isic2019, synthderm  # noqa: F401
