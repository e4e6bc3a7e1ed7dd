"""Building caption datasets (`data_builder.py`): the published formats' readers, the negation
rewrites and their vocabulary, the offline image world and the dataset cards."""
