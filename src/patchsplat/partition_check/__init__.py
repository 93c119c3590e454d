"""The price of splitting, measured: the same scene trained as one model and as split patches, compared.

Public interface::

    from patchsplat.partition_check import check_partition, PartitionCheck
    record = check_partition(Workspace(root), load_params(...))   # writes reports/partition.json and .png

Modules: :mod:`.budget` (sharing one step and Gaussian budget among patches), :mod:`.border` (which
held-out views see more than one core cell), :mod:`.record` (the typed report, its table), :mod:`.figure`
(the worst border view as a PNG), :mod:`.check` (training both variants and scoring them),
:mod:`.tracking` (MLflow).
"""

from patchsplat.partition_check.check import PartitionCheckConfig, check_partition, current_partition_check
from patchsplat.partition_check.record import PartitionCheck, print_partition_table

__all__ = ["PartitionCheck", "PartitionCheckConfig", "check_partition", "current_partition_check", "print_partition_table"]
