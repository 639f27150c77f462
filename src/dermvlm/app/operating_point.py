"""Which operating point the page's diagnoses are read at, said on the page.

The page reads the diagnosis from the model's generated answer as it comes: "as generated". Prior-corrected class
scores (``score − τ·log prior``, τ fitted on a validation split by the evaluation) move that operating point; when
a run has them, ``ChatSettings.operating_point`` is where the page is told which one it shows (a sentence such as
the evaluation's ``OperatingPoint.statement()``), and this is the default it replaces.
"""

AS_GENERATED = "**as generated** (the diagnosis the model's own answer names; no prior correction of class scores)"
