"""Building caption datasets (`data_builder.py`): the published formats' readers and each source's
flags (`sources`, `inputs`), the negation rules and rewrites and their vocabulary (`negation`,
`rewrite`, `vocabulary`), the images stored once (`storage`), the quality gate (`quality`), the
output written and reported (`writing`, `summary`, `cards`) and the offline image world (`shapes`)."""
