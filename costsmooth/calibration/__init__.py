"""Certified calibration (Emde, Pinto, Lukasiewicz, Torr & Bibi): smoothed confidences with
certified boxes, the certified Brier score (CBS) and certified ECE (CECE), calibration attacks and
adversarial calibration training. See docs/calibration.md."""
from .bounds import (CECE_METHODS, MILP_MAX_N, SIGNS_MAX_BINS, CertifiedECE, bin_edges, bin_index, brier_score,
                     brier_worst_confidences, brute_force_certified_ece, certified_brier, certified_ece, dece,
                     dece_ascent, ece_at_brier_worst, expected_calibration_error, round_up_mean)
from .confidence import (CI_METHODS, CertifiedConfidences, certified_confidences, confidence_box, confidence_interval,
                         sample_confidences)

__all__ = ["CECE_METHODS", "MILP_MAX_N", "SIGNS_MAX_BINS", "CertifiedECE", "bin_edges", "bin_index", "brier_score",
           "brier_worst_confidences", "brute_force_certified_ece", "certified_brier", "certified_ece", "dece",
           "dece_ascent", "ece_at_brier_worst", "expected_calibration_error", "round_up_mean", "CI_METHODS",
           "CertifiedConfidences", "certified_confidences", "confidence_box", "confidence_interval", "sample_confidences"]
from .act import ACTECE, ACTBrier
from .attacks import ace_attack, ace_eta, predictions

__all__ += ["ACTBrier", "ACTECE", "ace_attack", "ace_eta", "predictions"]
from .report import calibration_table, confidences_from_run, format_table, plot_reliability, register_cli

__all__ += ["calibration_table", "confidences_from_run", "format_table", "plot_reliability", "register_cli"]
