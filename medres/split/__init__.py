"""Patient-level splits of a cohort and the leakage audit (DESIGN §1, §7).

:func:`split_cohort` fills the ``split`` column (train / val / test) of the readable
scans, keeping every patient on one side and each side's label mix close to the whole
cohort's. It uses scikit-learn's ``StratifiedGroupKFold`` once: the cohort is cut into
*K* folds balanced by label with patients as groups, and whole folds are handed to
train, val and test so that their shares match the asked fractions as closely as a
small *K* allows (within 2 percentage points for the usual fractions).

Instead of drawing all three splits it can keep a given one (``keep_column``), hold
out a site as test (``holdout_site``), or keep only the test split given in a column
and draw train / val from the rest (``keep_test_column``, e.g. a dataset's official
patient-level test set with a new validation set). Only in that last case may
train / val be drawn scan by scan (``unit="scan"``): the deliberately leaky
slice-level split used to measure how much such a split overestimates, with the test
set still patient-disjoint.

:func:`audit_cohort` checks a split cohort (``medres audit``) by the rule every training
applies (:func:`audit_training_cohort`, run first by ``medres train``, ``retrain`` and
``run``): a patient on two sides is an error (:class:`~medres.errors.LeakageError`) —
except train + val in a cohort split with ``unit="scan"`` (``meta["split_unit"] ==
"scan"``), which is a warning — and so is a test scan whose pixels repeat in train or
val; identical pixels in train and val only are a warning. Both raise the same
messages. :func:`split_cohort` only warns about copies of test scans (the split is
written; ``move_copies_to_test`` fixes them). Training may let leakage through on
purpose (``allow_leakage``). :func:`summary_table` renders a report for the command line.

Example::

    from medres.cohort import Cohort
    from medres.split import audit_cohort, split_cohort

    cohort = split_cohort(Cohort.load("cohort.parquet"), fractions=(0.8, 0.1, 0.1), seed=1)
    print(audit_cohort(cohort).splits["test"].patients)

Modules: :mod:`~medres.split.fractions` (parse and check the fractions),
:mod:`~medres.split.rows` (patients and label classes as the split reads them),
:mod:`~medres.split.folds` (drawing: patient folds, or scan by scan),
:mod:`~medres.split.strategies` (kept split, site hold-out, kept test set, copies moved
to test), :mod:`~medres.split.cohort_split` (:func:`split_cohort`),
:mod:`~medres.split.leaks` (finding leaks, the refusals) and :mod:`~medres.split.audit`
(both audits and the summary table).
"""

from medres.split.audit import (
    AuditReport,
    SplitCounts,
    TrainingAudit,
    audit_cohort,
    audit_training_cohort,
    summary_table,
)
from medres.split.cohort_split import UNITS, split_cohort
from medres.split.fractions import DEFAULT_FRACTIONS, check_fractions, parse_fractions
from medres.split.rows import SplitWarning, patient_ids
from medres.split.strategies import SPLIT_ALIASES

__all__ = [
    "DEFAULT_FRACTIONS",
    "SPLIT_ALIASES",
    "UNITS",
    "AuditReport",
    "SplitCounts",
    "SplitWarning",
    "TrainingAudit",
    "audit_cohort",
    "audit_training_cohort",
    "check_fractions",
    "parse_fractions",
    "patient_ids",
    "split_cohort",
    "summary_table",
]
