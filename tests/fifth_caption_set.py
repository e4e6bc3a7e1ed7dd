"""Run by tests/test_caption_sets.py in a fresh process: adds a fictional fifth caption set
("scene-negated") to `CAPTION_SETS` before anything else reads the table, and a loss term that
reads it, then checks that the builder's schema, train.py's flags, data preparation, the collator,
the forward, the gathered global batch and the output all carry it with no other change.
Prints "ok" at the end; any failed check raises."""

from __future__ import annotations

import modeling_omninegclip as table

SCENE = table.CaptionSet(
    name="scene",
    column="scene_negated",
    flag="scene_column",
    input_ids="scene_negated_input_ids",
    attention_mask="scene_negated_attention_mask",
    row_mask="scene_mask",
    output="scene_negated_embeds",
    help="Column with scene-negated captions.",
)
table.CAPTION_SETS = table.CAPTION_SETS + (SCENE,)  # the one new row

import datasets  # noqa: E402
import torch  # noqa: E402
from conftest import tiny_clip_config  # noqa: E402
from transformers import HfArgumentParser  # noqa: E402

import data_builder  # noqa: E402
import modeling_omninegclip as modeling  # noqa: E402
from omninegclip.common.tokenization import build_clip_tokenizer  # noqa: E402
from omninegclip.training.config import OmniNegCLIPConfig  # noqa: E402
from omninegclip.training.data import OmniNegCollator, PackedRows, prepare_dataset  # noqa: E402
from omninegclip.training.images import ImagePass  # noqa: E402

# ... and the loss term that reads it (here: a spy that keeps the global batch it was given).
seen: list[modeling.GlobalBatch] = []


def scene_term(batch, logit_scale, config):
    seen.append(batch)
    image, scene, rows = batch.image, batch.embeds["scene"], batch.masks["scene"]
    return {"loss_scene": ((image * scene).sum(-1) * rows).sum() / rows.sum().clamp(min=1)}


modeling.LOSS_TERMS = modeling.LOSS_TERMS + (modeling.LossTerm("loss_scene", ("caption", "scene"), scene_term),)

# The builder's schema and train.py's flags.
assert "scene_negated" in data_builder.TEXT_COLUMNS and "scene_negated" in data_builder.contract_features()
(flags,) = HfArgumentParser(OmniNegCLIPConfig).parse_args_into_dataclasses(
    ["--output_dir", "unused", "--report_to", "none", "--use_cpu", "true", "--scene_column", "scene_negated"]
)
columns = flags.columns()
assert columns.scene == "scene_negated" and columns.flags()["scene_negated"] == "--scene_column", columns

# Preparation: validated, tokenized and counted per row.
rows = {
    "image": ["a.png", "b.png", "c.png"],
    "caption": ["a red circle", "a blue square", "a green star"],
    "presence_negated": ["no red circle", "no blue square", None],
    "absence_negated": ["a red circle and no moon", None, "a green star and no sun"],
    "scene_negated": ["a red circle, not on a beach", None, "a green star, not in a forest"],
}
config = tiny_clip_config()
embeds = torch.randn(3, config.projection_dim)
tokenizer = build_clip_tokenizer()
prepared, (report,) = prepare_dataset(
    [datasets.Dataset.from_dict(rows)],
    ["fifth"],
    columns,
    tokenizer,
    images=lambda refs: ImagePass(embeds[: len(refs)]),
)
assert [bool(ids) for ids in prepared.tokens[SCENE.input_ids]] == [True, False, True]
assert report.with_sets["scene"] == 2 and report.to_json()["with_scene"] == 2, report

# The collator passes it, as the active term reads it.
torch.manual_seed(0)
model = modeling.OmniNegCLIPModel(config).eval()
assert "scene" in model.loss_config.caption_sets_read()
packed = PackedRows(prepared.tokens, tokenizer.pad_token_id, prepared.image_index, prepared.image_embeds)
batch = OmniNegCollator(packed, model.loss_config.caption_sets_read())(
    [{"row_id": r, "packed_row": r} for r in range(3)]
)
batch.pop("row_ids")
assert batch["scene_mask"].tolist() == [True, False, True] and batch["scene_negated_input_ids"].shape[0] == 3

# The forward encodes it, the gather carries it, the output reports it and the loss adds its term.
with torch.no_grad():
    output = model(**batch)
    features = model.get_text_features(
        input_ids=batch["scene_negated_input_ids"], attention_mask=batch["scene_negated_attention_mask"]
    ).pooler_output
expected = torch.nn.functional.normalize(features, dim=-1) * batch["scene_mask"][:, None]
torch.testing.assert_close(output.scene_negated_embeds, expected, rtol=1e-5, atol=1e-6)
(global_batch,) = seen
torch.testing.assert_close(global_batch.embeds["scene"], expected, rtol=1e-5, atol=1e-6)
assert global_batch.masks["scene"].tolist() == [True, False, True]
paper = output.loss_presence + model.loss_config.lambda_abs * output.loss_absence
assert abs(float(output.loss - (paper + output.loss_scene))) < 1e-5 and float(output.loss_scene) != 0
print("ok")
