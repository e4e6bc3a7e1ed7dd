"""`torch.compile` (what `--torch_compile true` does through the Trainer) on the tiny CLIP, on the CPU.

Compiled and eager forward + backward give the same loss, terms and gradients; batches of a few
padded caption lengths recompile at most once per new length (dynamo marks the length dynamic after
the second, so lengths met later compile nothing); and `OmniNegCLIPTrainer` with `torch_compile=True`
trains the weights eager training gives. These use the "aot_eager" backend (dynamo's capture and
AOTAutograd's forward/backward graphs, run by eager kernels: seconds); the Trainer's default,
"inductor", generates and compiles C++ kernels (about a minute for the tiny CLIP on 2 cores) and is
checked in one slow test, skipped where no C++ compiler is found.
"""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
import torch._dynamo
from conftest import tiny_clip_config
from torch._dynamo.eval_frame import OptimizedModule
from torch._dynamo.utils import counters
from train_helpers import single_thread  # noqa: F401  (autouse)

from modeling_omninegclip import OmniNegCLIPModel, OmniNegLossConfig, TrainableConfig, apply_trainable
from omninegclip import OmniNegCLIPConfig, OmniNegCLIPTrainer
from omninegclip.common.clip import BOS_TOKEN_ID, EOS_TOKEN_ID
from omninegclip.training.data import PACKED_ROW_COLUMN, OmniNegCollator, PackedRows

ROWS = 6
TOKEN_SETS = ("input_ids", "presence_negated_input_ids", "absence_negated_input_ids")


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def omni_model(bucket_rows: int | None = None) -> OmniNegCLIPModel:
    torch.manual_seed(0)
    model = OmniNegCLIPModel(
        tiny_clip_config(), loss_config=OmniNegLossConfig(lambda_choice=0.5), text_bucket_rows=bucket_rows
    )
    apply_trainable(model, TrainableConfig(front_blocks=2))
    return model.train()


def packed(length: int, seed: int, without_presence: int | None = None) -> PackedRows:
    """ROWS rows of random token ids; in every caption set the first row is `length` tokens long (so
    each set is padded to `length`), the others shorter; row `without_presence` has no presence negation."""
    rng = np.random.default_rng(seed)

    def caption(size: int) -> list[int]:
        return [BOS_TOKEN_ID, *rng.integers(1, 1000, size - 2).tolist(), EOS_TOKEN_ID]

    tokens = {
        name: [caption(length)] + [caption(int(rng.integers(4, length))) for _ in range(ROWS - 1)]
        for name in TOKEN_SETS
    }
    if without_presence is not None:
        tokens["presence_negated_input_ids"][without_presence] = []
    embeds = torch.from_numpy(rng.standard_normal((ROWS, 16), dtype=np.float32))
    return PackedRows(tokens, EOS_TOKEN_ID, image_index=np.arange(ROWS), image_embeds=embeds)


def batch(length: int, seed: int = 0, without_presence: int | None = None) -> dict[str, torch.Tensor]:
    collated = OmniNegCollator(packed(length, seed, without_presence))(
        [{"row_id": row, PACKED_ROW_COLUMN: row} for row in range(ROWS)]
    )
    collated.pop("row_ids")
    return collated


def loss_and_gradients(model, forward, inputs) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    output = forward(**inputs, return_loss=True)
    output.loss.backward()
    terms = {name: value.detach() for name, value in output.items() if name.startswith("loss")}
    gradients = {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}
    return terms, gradients


def assert_compiled_matches_eager(backend: str, lengths: list[int], bucket_rows: int | None = None) -> None:
    model = omni_model(bucket_rows)
    compiled = torch.compile(model, backend=backend)
    for seed, length in enumerate(lengths):
        inputs = batch(length, seed, without_presence=1 if seed % 2 else None)
        assert "presence_mask" in inputs and bool(inputs["presence_mask"].all()) == (seed % 2 == 0)
        eager_terms, eager_gradients = loss_and_gradients(model, model, inputs)
        compiled_terms, compiled_gradients = loss_and_gradients(model, compiled, inputs)
        assert set(compiled_terms) == set(eager_terms) and eager_terms["loss_choice"] > 0
        for name, value in eager_terms.items():
            torch.testing.assert_close(compiled_terms[name], value, rtol=1e-5, atol=1e-6, msg=f"{backend}: {name}")
        assert (
            set(compiled_gradients)
            == set(eager_gradients)
            == {name for name, param in model.named_parameters() if param.requires_grad}
        )
        for name, gradient in eager_gradients.items():
            torch.testing.assert_close(
                compiled_gradients[name], gradient, rtol=1e-4, atol=1e-5, msg=f"{backend}: gradient of {name}"
            )
    assert counters["stats"]["unique_graphs"] > 0  # it did compile


@pytest.mark.parametrize("bucket_rows, lengths", [(None, [9, 14]), (5, [14])])
def test_compiled_forward_and_backward_match_eager(bucket_rows, lengths):
    # None: one text-encoder call, two batches (the second recompiled with a dynamic length, and one
    # row without a presence negation); 5: the CPU's length-sorted buckets (18 captions: 4 calls of
    # their own lengths).
    assert_compiled_matches_eager("aot_eager", lengths, bucket_rows)


def test_recompiles_stay_within_the_padded_caption_lengths():
    model = omni_model()
    compiled = torch.compile(model, backend="aot_eager")
    lengths = [8, 13, 18, 24, 8, 13, 30]
    graphs = []
    for seed, length in enumerate(lengths):
        output = compiled(**batch(length, seed), return_loss=True)
        output.loss.backward()
        model.zero_grad(set_to_none=True)
        graphs.append(counters["stats"]["unique_graphs"])
    recompiled = [after - before for before, after in zip(graphs, graphs[1:])]
    assert sum(recompiled) <= len(set(lengths)), f"graphs after each batch: {graphs}"
    assert recompiled[3] == recompiled[4] == 0, f"a length met before compiled again: {graphs}"  # 8, then 13 again
    assert recompiled[-1] == 0, f"a new length compiled again after the length became dynamic: {graphs}"


def trained_weights(tmp_path, torch_compile: bool) -> tuple[dict[str, torch.Tensor], OmniNegCLIPTrainer]:
    model = omni_model()
    rows = packed(12, seed=3, without_presence=2)
    steps = 3
    table = datasets.Dataset.from_dict(
        {"row_id": np.arange(ROWS * steps), PACKED_ROW_COLUMN: np.tile(np.arange(ROWS), steps)}
    )
    config = OmniNegCLIPConfig(
        output_dir=str(tmp_path / ("compiled" if torch_compile else "eager")),
        per_device_train_batch_size=ROWS,
        max_steps=steps,
        learning_rate=1e-3,
        lambda_choice=0.5,
        front_blocks=2,
        logging_steps=1,
        nan_check_steps=1,
        train_sampling_strategy="sequential",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        torch_compile=torch_compile,
        torch_compile_backend="aot_eager" if torch_compile else None,
    )
    collator = OmniNegCollator(rows, caption_sets=config.loss_config().caption_sets_read())
    trainer = OmniNegCLIPTrainer(model, config, train_dataset=table, data_collator=collator)
    trainer.train()
    return {name: param.detach().clone() for name, param in model.named_parameters()}, trainer


def test_the_trainer_with_torch_compile_trains_as_eager(tmp_path):
    eager, _ = trained_weights(tmp_path, torch_compile=False)
    compiled, trainer = trained_weights(tmp_path, torch_compile=True)
    assert isinstance(trainer.model_wrapped, OptimizedModule) and counters["stats"]["unique_graphs"] > 0
    assert not isinstance(trainer.model, OptimizedModule)  # callbacks and saving see the model itself
    assert trainer.state.global_step == 3 and "loss_presence" in trainer.state.log_history[0]
    start = omni_model().state_dict()
    moved = [name for name in eager if not torch.equal(eager[name], start[name])]
    assert any(name.startswith("text_model.encoder.layers.0.") for name in moved)
    for name, value in eager.items():
        torch.testing.assert_close(compiled[name], value, rtol=1e-4, atol=1e-5, msg=f"weight {name}")


def _cpp_compiler_problem() -> str | None:
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as error:  # inductor raises its own types, by version
        return f"torch.compile's inductor backend builds C++ kernels on the CPU and found no compiler: {error}"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_cpp_compiler_problem() is not None, reason=str(_cpp_compiler_problem()))
def test_inductor_matches_eager():
    # One length: inductor compiles each graph's C++ (about a minute on 2 cores for the tiny CLIP).
    assert_compiled_matches_eager("inductor", [11])
