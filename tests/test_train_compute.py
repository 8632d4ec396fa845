"""Speed choices of a training step (qd.train.loop): layout and precision change speed, not the checkpoint."""

import pytest
import torch

import qd.train.loop as loop
from qd.command import QDError
from qd.train.checkpoint import load_checkpoint, model_from_checkpoint
from qd.train.loop import native_bf16, resolve_precision
from qd.train.cli import TrainConfig

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_auto_precision_is_bf16_only_where_native():
    assert resolve_precision("auto", CPU) == ("bf16" if native_bf16(CPU) else "fp32")
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"
    assert resolve_precision("auto", torch.device("meta")) == "fp32"


@pytest.mark.parametrize("amx, expected", [(True, "bf16"), (False, "fp32"), (None, "fp32")])
def test_auto_precision_on_cpus_with_and_without_native_bf16(monkeypatch, amx, expected):
    """Both paths, forced, whatever this machine is: AMX (Intel) -> bf16; AVX2 only (AMD EPYC) -> fp32."""
    import qd.train.loop as compute

    if amx is None:  # a torch without the private probe
        monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    else:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert compute.native_bf16(CPU) is (expected == "bf16")
    assert resolve_precision("auto", CPU) == expected
    assert resolve_precision("fp32", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"


def test_unknown_or_unsupported_precision_is_a_clear_error():
    with pytest.raises(QDError, match="unknown precision 'fp8'"):
        resolve_precision("fp8", CPU)
    with pytest.raises(QDError, match="bf16: not supported on mps"):
        resolve_precision("bf16", torch.device("mps"))
    with pytest.raises(QDError, match="unknown precision"):
        TrainConfig(data_dir=".", precision="half")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_checkpoint_is_plain_float32_whatever_the_step_used(shared_bitmaps, tmp_path, precision):
    # the seed network: bf16 without native support (AVX2 only) is emulated, ten times slower than fp32
    config = TrainConfig(data_dir=shared_bitmaps, categories=["circle", "square", "star"], max_per_category=300,
                         arch="seed", epochs=3, batch_size=32, device="cpu", precision=precision, out=tmp_path,
                         quiet=True)
    ckpt = load_checkpoint(loop.train(config))
    assert ckpt["hparams"]["precision"] == precision  # what ran, never "auto"
    for name, tensor in ckpt["state_dict"].items():
        assert tensor.is_contiguous(), name
        assert not tensor.is_floating_point() or tensor.dtype == torch.float32, name
    assert ckpt["test"]["top1"] > 0.6  # 3 very different shapes: it learned, in either precision
    model = model_from_checkpoint(ckpt)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 3)


def test_auto_is_recorded_as_what_it_resolved_to(shared_bitmaps, tmp_path):
    config = TrainConfig(data_dir=shared_bitmaps, categories=["circle", "square"], max_per_category=60,
                         epochs=1, batch_size=32, device="cpu", out=tmp_path, quiet=True)
    assert config.precision == "auto"
    ckpt = load_checkpoint(loop.train(config))
    assert ckpt["hparams"]["precision"] == resolve_precision("auto", CPU)


@pytest.mark.parametrize("per_category", [8, 20, 60])
def test_runs_of_a_few_steps_train_with_any_schedule(shared_bitmaps, tmp_path, per_category):
    """One-cycle needs a warm-up of at least one step; with 1-4 steps in all it must still run."""
    for schedule in ("onecycle", "cosine"):
        config = TrainConfig(data_dir=shared_bitmaps, categories=["circle", "square"], max_per_category=per_category,
                             val_fraction=0.25, test_fraction=0.25, epochs=1, batch_size=32, device="cpu",
                             schedule=schedule, out=tmp_path / f"{schedule}-{per_category}", quiet=True)
        assert load_checkpoint(loop.train(config))["metrics"][0]["epoch"] == 1
