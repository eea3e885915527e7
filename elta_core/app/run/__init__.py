"""A training run of ``elta train``, as a small package: the pipeline that reads as the
steps of a run (:mod:`.pipeline`), the run directory and its resume rules
(:mod:`.directory`), the splits (:mod:`.splits`), the resources a run uses
(:mod:`.resources`), the model and its checkpoint (:mod:`.model`), the two rounds
(:mod:`.round1`, :mod:`.round2`, :mod:`.adopt`) and what a run reports (:mod:`.reports`).
"""

from elta_core.app.run.model import RunConfig, load_checkpoint
from elta_core.app.run.pipeline import train
from elta_core.app.run.reports import format_metrics, json_ready
from elta_core.app.run.splits import holds_out_calibration

__all__ = ["RunConfig", "format_metrics", "holds_out_calibration", "json_ready", "load_checkpoint", "train"]
