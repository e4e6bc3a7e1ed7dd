"""The model card of a checkpoint folder and its upload, one concern per module; arrows point down
the list (a module imports only those below it):

- `hub`: `push_checkpoint` (create the repo, write the card naming it, upload the folder) and
  `UPLOAD_IGNORE`;
- `write`: `card_text` (the card of a folder, rendered, nothing written) and `write_model_card`
  (the folder's README.md, which it never writes over a card it did not write);
- `render`: `render_model_card(facts, ...)`: the Hub metadata and `model_card.md` filled in;
- `facts`: `CheckpointFacts`, `checkpoint_facts(folder, ...)`: what a card says, from the folder's
  own records (and a clear error for a folder without any);
- `citations`: `citations_markdown(benchmark_types)`: BibTeX of the method, CLIP and the benchmarks;
- `widget`: `WidgetExample` and where examples come from (`load_widget_examples`, the built-in
  `DEFAULT_WIDGET`, the image world's `world_widget_examples`), how they are stored in a folder and
  named in the card's metadata;
- `names`: what a public page calls things: `public_text` (absolute local paths reduced to their
  last component), Hub ids and bare repo names.

Import these from `omninegclip.training.model_card`, which also holds the command line.
"""
