"""COCO evaluation: model output -> COCO results, pycocotools scoring, inference timing and the report CLI.

``python eval/coco.py --help`` for the command; training imports ``to_coco_results``, ``score_results`` and
``run_detector`` from here so that its numbers are the CLI's numbers.
"""

from .inference import run_detector
from .results import to_coco_results
from .scoring import STAT_KEYS, ResultsError, load_results, score_results

__all__ = ["STAT_KEYS", "ResultsError", "load_results", "run_detector", "score_results", "to_coco_results"]
