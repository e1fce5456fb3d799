def test_a_resumed_study_draws_new_parameters():
    """A resumed study's sampler is seeded seed + trials held: not the first trials' draws again."""
    from omegaconf import OmegaConf

    from steer.runtime.tuning import reseeded

    config = OmegaConf.create({"_target_": "optuna.samplers.TPESampler", "seed": 3})
    first = reseeded(config, "the sampler", 0)
    resumed = reseeded(config, "the sampler", 4)
    assert first == "the sampler"
    assert resumed._rng.rand() == pytest.approx(np.random.RandomState(7).rand())
