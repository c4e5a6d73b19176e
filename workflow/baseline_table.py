"""The baselines every LLM row is read against (DESIGN section 6), declared once: method name -> the
selection its rows carry. workflow/baselines.py writes the rows of random and popularity,
workflow/surrogate.py those of SASRec; the summary, the studies and the report list them first, in
this order. Plain data, so the bottom of the package (summary.py, study.py) reads it without loading
the stages that produce the rows.
"""
from __future__ import annotations

BASELINES: dict[str, str] = {
    "random": "none",      # the exact expectation of a uniform ranking: it learns from no sample
    "popularity": "all",   # counts of every train sample's target
    "sasrec": "all",       # the SASRec surrogate, trained on every train sample
}
# The one trained baseline (workflow/surrogate.py); the others (workflow/baselines.py) are rules without a
# model, which the summary does not read against popularity.
SURROGATE = "sasrec"
