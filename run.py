"""steer's one entry point: ``python run.py [overrides]`` or ``python run.py -m ...`` (multirun)."""

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from steer.resolvers import register

register()
log = logging.getLogger("steer")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from steer.stages import ConfigError, run

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        run(cfg, run_dir)
    except ConfigError as err:
        log.error("config error: %s", err)
        if run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()  # Hydra made it; nothing was written
        sys.exit(2)


if __name__ == "__main__":
    main()
