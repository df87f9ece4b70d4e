"""`python -m research_r1.evaluation.families > docs/fidelity.md`: the audited families as the
fidelity table of the docs."""

from research_r1.evaluation.families import fidelity_table

print(fidelity_table(), end="")
