"""Hydra launcher plugin: submitit's SLURM launcher, refusing at once (before submitting
anything) on a machine where SLURM's ``sbatch`` / ``srun`` are not on ``PATH``; its message
says so and names the local launchers. Configured by ``audioml/conf/hydra/launcher/slurm.yaml``."""

from collections.abc import Sequence

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher import submitit_launcher


class CheckedSlurmLauncher(submitit_launcher.SlurmLauncher):
    """``SlurmLauncher`` whose ``launch`` first checks for SLURM's tools
    (``audioml.run.record.sweep.check_slurm_tools``; imported here, not at plugin discovery)."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from audioml.run.record.sweep import check_slurm_tools

        check_slurm_tools()
        return super().launch(job_overrides, initial_job_idx)
