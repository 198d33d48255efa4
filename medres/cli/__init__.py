"""`medres`: the command line, thin verbs over the library (DESIGN §7).

One module per stage of the data flow, each verb parsing its options and calling the
library; :mod:`medres.cli.common` holds what they share (the apps, the console, exit
codes and error handling, progress columns, the metrics-table printer).

Heavy imports (torch, pandas, pydicom) happen inside each verb so ``--help`` is instant.

Exit codes (README "Exit codes"), for schedulers: 0 done; 1 done, but with recorded
failures under ``--strict`` or a negative verdict (``promote``: not promoted); 2 bad
usage or refused input (a MedresError: :func:`user_errors`); 3 internal error, a bug
in medres (:func:`main`); 130 interrupted (Ctrl-C).
"""

# The stage modules register their verbs on import: this order (the data flow) is the
# order of `medres --help`, hence no sorting.
# isort: off
from medres.cli import (  # noqa: F401
    ingest,
    datasets,
    split,
    train,
    evaluate,
    predict,
    export,
    pacs,
    label_issues,
    review,
    retrain,
    run,
)

# isort: on
from medres.cli.common import (
    EXIT_INTERNAL_ERROR,
    EXIT_INTERRUPTED,
    app,
    console,
    main,
    user_errors,
)

__all__ = ["EXIT_INTERNAL_ERROR", "EXIT_INTERRUPTED", "app", "console", "main", "user_errors"]
