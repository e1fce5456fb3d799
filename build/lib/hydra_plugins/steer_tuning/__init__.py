"""steer's Hydra plugin: the resumable Optuna sweeper (``steer.runtime.tuning`` explains it)."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

from steer.runtime.tuning import RecordingLauncher, open_study, reseeded, resume, write_best

log = logging.getLogger("steer")


class ResumableOptunaSweeper(OptunaSweeper):
    """``OptunaSweeper`` that resumes a killed study and writes the best trial (``steer.runtime.tuning``)."""

    def setup(self, *, hydra_context, task_function, config) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.output_root = Path(str(config.output_root))
        self.sampler_config = config.hydra.sweeper.sampler
        self.seed = int(config.seed)

    def sweep(self, arguments: list[str]) -> None:
        impl = self.sweeper
        if not impl.storage or not impl.study_name:
            raise ValueError("hydra.sweeper.storage and hydra.sweeper.study_name must be set to resume a study")
        study = open_study(impl.storage, impl.study_name)
        requested = impl.n_trials
        impl.n_trials = resume(study, requested)
        impl.sampler = reseeded(self.sampler_config, impl.sampler, self.seed, len(study.trials))
        log.info("tune: study %s, %d of %d trials to run", impl.study_name, impl.n_trials, requested)
        impl.launcher = RecordingLauncher(impl.launcher, study)
        impl.sweep(arguments)
        write_best(study, self.output_root, requested)
