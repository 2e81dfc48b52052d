"""The sweep's Optuna sampler and pruner, built from `SweepSettings`.

    sampler, pruner = make_sampler(settings), make_pruner(settings)

Randomness per trial number: a seeded sampler would draw the same "random" points again after a
restart, and two workers with one seed would draw the same points at once. TPE and random samplers
are re-seeded from (sampler_seed, trial number) before each trial: reproducible for one worker,
and no repeats across restarts and workers, since trial numbers are unique in a study. (The grid
sampler keeps one seed: it reads which grid points are taken from the storage.)
"""

from __future__ import annotations

from typing import Any, Callable

import optuna

from sweeps import space as search_space
from sweeps.settings import SweepSettings


def _trial_seed(seed: int, number: int) -> int:
    return (seed * 1_000_003 + number * 7_919 + 12_345) % 2**32


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """Wraps a sampler factory; before each trial the sampler is rebuilt with a seed from the trial
    number, so restarts and parallel workers never replay each other's draws."""

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int):
        self._make, self._seed = make, seed
        self._inner = make(_trial_seed(seed, -1))

    def before_trial(self, study: Any, trial: Any) -> None:
        self._inner = self._make(_trial_seed(self._seed, trial.number))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: Any, trial: Any, search_space: Any) -> Any:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: Any, trial: Any, name: str, distribution: Any) -> Any:
        return self._inner.sample_independent(study, trial, name, distribution)

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def make_sampler(settings: SweepSettings) -> Any:
    if settings.sampler == "grid":
        # Not re-seeded per trial: the seed fixes the grid's order, and the grid ids done or running
        # are read from the storage, so one fixed seed neither repeats nor collides.
        return optuna.samplers.GridSampler(search_space.grid(settings.space, settings.grid_points), seed=settings.sampler_seed)

    def make(seed: int) -> optuna.samplers.BaseSampler:
        if settings.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        # constant_liar: a worker treats the others' running trials as bad, so parallel workers spread out.
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)

    return TrialSeededSampler(make, settings.sampler_seed)


def make_pruner(settings: SweepSettings) -> Any:
    tc = settings.base.train
    if settings.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=settings.prune_startup_trials,
                                           n_warmup_steps=settings.prune_warmup_steps)
    if settings.pruner == "hyperband":
        first_validation = min(tc.validation_steps, tc.best_checkpoint_steps, tc.max_steps)
        return optuna.pruners.HyperbandPruner(min_resource=first_validation, max_resource=tc.max_steps)
    return optuna.pruners.NopPruner()
