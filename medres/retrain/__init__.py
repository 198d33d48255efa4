"""Retraining on new cohorts (DESIGN §2 ``retrain``): the challenger's training data and
lineage, champion / challenger comparison and promotion, cohort drift, label issues.

Modules: ``frozen`` (test patients no retraining may train on), ``reviews`` (reviewed
labels over a cohort's), ``job`` (:func:`retrain_bundle`), ``compare`` (paired bootstrap
and verdict), ``registry`` (promotion), ``drift``, ``label_issues``.
"""
