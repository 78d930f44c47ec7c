"""The guard's plan: a composed config checked and typed once, which the layers below take instead of it."""

from __future__ import annotations

import json

from omegaconf import OmegaConf

from experiments import settings
from experiments.config import compose
from experiments.plan import LoggerSettings, Measure, Plan


def test_the_guard_turns_the_config_into_its_plan():
    cfg = compose(
        "train", ["arch=resnet20", "dataset=digits", "logger=csv", "+trainer.gradient_clip_val=1", "seed=3"]
    )
    plan = settings.check(cfg)
    assert (
        plan.subject.seed == 3 and plan.subject.arch["depth"] == 20 and plan.subject.data_shape == (10, 1, 8)
    )
    assert plan.recipe.clip == (1.0, "norm") and "gradient_clip_val" not in plan.recipe.trainer
    as_conf_says = Measure(enabled=True, warmup_steps=5, grad_norm_every=20, signals_every="auto")
    assert plan.recipe.measure == as_conf_says
    assert plan.recipe.ckpt_path is None and not plan.recipe.deterministic
    assert plan.logger == LoggerSettings("csv") and plan.profile is None
    assert plan.config == OmegaConf.to_container(cfg, resolve=True)


def test_a_ddp_rank_rebuilds_the_same_plan_from_its_parents_config():
    """The parent hands its ranks the plan's config through the environment, as JSON."""
    plan = Plan.of(compose("profile", ["arch=densenet_bc100", "trainer=ddp", "precision=bf16"]))
    assert Plan.of(json.loads(json.dumps(plan.config))) == plan
    assert plan.profile.batch_size == 64 and plan.recipe.precision == "bf16" and not plan.recipe.one_device
