"""Multi-process training (``trainer=ddp``, ``trainer=ddp_cpu``) inside Hydra runs and sweeps.

:func:`ddp_job` makes ``sys.argv`` the job's own overrides while it runs (Lightning starts ranks
1..N-1 by re-running it) and afterwards removes the launcher's variables and destroys the process
group, so the next job of a sweep starts its own ranks; :func:`is_global_zero_process` tells rank
zero before the Trainer exists. Why: docs/design/runs.md#multi-gpu-inside-hydra."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["ddp_job", "is_global_zero_process", "destroy_process_group"]

#: Set by Lightning's subprocess launcher (and torchrun) in the launching process.
_LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "RANK", "GROUP_RANK")


def is_global_zero_process() -> bool:
    """Whether this process is (or will be) global rank zero, from the environment the
    launchers set: ``RANK`` (torchrun), ``SLURM_PROCID`` (SLURM with several tasks), else
    ``NODE_RANK``/``LOCAL_RANK`` (Lightning's launcher). A plain process is rank zero."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"]) == 0
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        return int(os.environ["SLURM_PROCID"]) == 0
    return int(os.environ.get("NODE_RANK", "0")) == 0 and int(os.environ.get("LOCAL_RANK", "0")) == 0


def destroy_process_group() -> None:
    """Tear down the default ``torch.distributed`` process group, if any."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def ddp_job(job_overrides: list[str] | None) -> Iterator[None]:
    """Run one Hydra job so that DDP ranks started during it re-run this job alone.

    Args:
        job_overrides: the job's command-line overrides (``HydraConfig.get().overrides.task``)
            when it is one job of a multirun; ``None`` for a single run (argv is already it).
    """
    saved_argv = list(sys.argv)
    saved_variables = {name: os.environ.get(name) for name in _LAUNCH_VARIABLES}
    if job_overrides is not None:
        sys.argv = [sys.argv[0], *job_overrides]
    try:
        yield
    finally:
        sys.argv = saved_argv
        for name, value in saved_variables.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        destroy_process_group()
