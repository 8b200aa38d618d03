"""Training recipes: when a rank evaluates, which metric selects the model, and what
happens to the model after an evaluation point.

* ``vadclip`` (:class:`PerEpoch`): evaluate once per epoch on the given set and keep the
  best checkpoint; training itself goes on undisturbed.
* ``paper`` (:class:`Paper`): the official training loops that produced the paper's
  numbers — UCF-Crime evaluates every 1,280 samples, XD-Violence after every epoch, both
  keep the best model so far in memory and go on from it at the end of each epoch; XD
  selects on the A-branch AP.  Needs an evaluation set.

``official`` is the older spelling of ``paper`` and still accepted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

from vadclip.errors import InputError


@dataclass(frozen=True)
class Recipe:
    name: str = "vadclip"
    needs_eval: bool = False          # the model is selected on an evaluation set that must be given
    reload_best: bool = False         # at each epoch end, go on from the best model so far

    def eval_every_samples(self, preset: str) -> Optional[int]:
        """Evaluate within epochs every this many samples (None: once per epoch)."""
        return None

    def default_metric(self, preset: str) -> str:
        return "ap" if preset == "xd" else "auc"


@dataclass(frozen=True)
class PerEpoch(Recipe):
    name: str = "vadclip"


@dataclass(frozen=True)
class Paper(Recipe):
    name: str = "paper"
    needs_eval: bool = True
    reload_best: bool = True

    def eval_every_samples(self, preset: str) -> Optional[int]:
        return 1280 if preset == "ucf" else None

    def default_metric(self, preset: str) -> str:
        # the official XD loop keeps the model with the best A-branch AP, UCF the best C-branch AUC
        return "ap_align" if preset == "xd" else "auc"


RECIPES: Dict[str, Recipe] = {"vadclip": PerEpoch(), "paper": Paper()}
RECIPE_ALIASES = {"official": "paper"}


def get_recipe(name: str) -> Recipe:
    key = RECIPE_ALIASES.get(str(name), str(name))
    if key not in RECIPES:
        raise InputError(f"unknown recipe {name!r}: use one of {sorted(RECIPES)}")
    return RECIPES[key]
