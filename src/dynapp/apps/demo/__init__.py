"""``dynapp demo``: the whole method on one CPU, on generated same-scene actions.

It generates :mod:`dynapp.data.synthetic` clips (the class is the motion; scenes are shared by all
classes), trains the same temporal backbone (``small_tsm`` by default: a small 2D CNN with TSM's
temporal shift, the paper's protocol of a temporal backbone over the S representation frames;
``--backbone small2d`` or ``small3d``) on five inputs -- one RGB frame per segment, RGB
differences, dynamic images, dynamic appearance (PWTP trained jointly with the default joint
strategy, by the project's own training loop ``dynapp.engine.train.train``) and leak-free dynamic appearance
(``PWTP(static="remove")``: each pixel's temporal weights sum to zero) -- in two settings:

* **unbiased**: training scenes are independent of the class;
* **scene-biased**: in training a clip's scene comes from its class's group with probability
  ``scene_bias``; the test clips are always uncorrelated, so a model that learned the scene falls
  towards chance.

It evaluates each model on the same test clips and writes ``results.json``, ``report.md`` and its
figures (the Fig. 4-style frame average beside DA with the static-leakage map, training curves,
alpha over training, ENoPR against the recognition loss, confusion matrices) into ``out``.
The sizes come from the difficulty probe of docs/demo.md, the budget from its calibration on
the validation clips.

The package: :mod:`.config` (the demo's sizes, :class:`DemoConfig`, and :func:`~.config.run_config`,
which turns one run into the :class:`dynapp.config.RunConfig` that ``dynapp train`` reads),
:mod:`.runs` (data, one training run and its evaluation), :mod:`.pool` (runs in this process or
in ``--jobs`` worker processes), :mod:`.studies` (the optional studies), :mod:`.rule` (the
pre-registered rule that decides the default joint strategy), :mod:`.stats` (paired t-intervals,
Holm), :mod:`.compare` (DA against the better of RGB and the dynamic image, with a paired
t-interval), :mod:`.figures` (one function per figure), :mod:`.report` (table, results.json,
report.md), :mod:`.merge` (``--from``) and :mod:`.main` (:func:`run_demo`).
"""

from dynapp.apps.demo.config import (
    DEMO_BACKBONES,
    INPUTS,
    JOINT_STRATEGIES,
    QUICK,
    SETTINGS,
    STUDIES,
    DemoConfig,
    demo_config,
    parse_studies,
    run_config,
)
from dynapp.apps.demo.main import run_demo
from dynapp.apps.demo.merge import merge_reports
from dynapp.apps.demo.report import format_table, summarise
from dynapp.apps.demo.runs import build_demo_data, build_demo_val, fit, input_leakage, train_and_evaluate
from dynapp.apps.demo.rule import RULE_BASELINE, RULE_CANDIDATES, RULE_FIRST_SEED, RULE_MIN_SEEDS, decide

__all__ = ["DemoConfig", "INPUTS", "DEMO_BACKBONES", "JOINT_STRATEGIES", "QUICK", "SETTINGS", "STUDIES", "demo_config",
           "parse_studies", "run_config", "run_demo", "merge_reports", "train_and_evaluate", "fit", "input_leakage",
           "build_demo_data", "build_demo_val", "format_table", "summarise", "decide", "RULE_BASELINE",
           "RULE_CANDIDATES", "RULE_FIRST_SEED", "RULE_MIN_SEEDS"]
