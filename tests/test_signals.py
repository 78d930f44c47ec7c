"""Measuring why: the signal hooks against values computed by hand, the lesion and feature-reuse maps on
nets whose answer is known, and the probe, lesion and reuse commands on real runs."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import matplotlib.image
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from experiments.measure.lesion import deleted, lesion_rows, lesion_targets
from experiments.measure.reuse import feature_reuse
from experiments.measure.signals import StepSignals, WeightSignals, signal_steps, three_by_three_norms
from experiments.models import create_model
from tests.conftest import TINY
from tests.helpers import run_dirs, summary


def read(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_hooks_measure_what_a_hand_computation_gives():
    """A ResNet-8 (stem, three blocks): each block's output std, the per-image norm of d(sum of per-image
    losses)/d(output), each 3x3 conv's response after its BN, and the update ratio, all computed again here
    by walking the net by hand."""
    torch.manual_seed(0)
    model = create_model("resnet", depth=8).train()
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    hooked = StepSignals(model)
    hooked.attach()
    F.cross_entropy(model(x), y).backward()
    hooked.detach()
    rows = hooked.rows(0)
    weights = WeightSignals(model)
    rows += weights.before_step(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.layer2[0].conv1.weight.detach().clone(), model.layer2[0].conv2.weight.detach().clone()
    optimizer.step()
    rows += weights.after_step()
    got = {(r["quantity"], r["index"]): r["value"] for r in rows}

    torch.manual_seed(0)
    twin = create_model("resnet", depth=8).train()  # the same initial weights and statistics
    stem = twin.maxpool(twin.relu(twin.bn1(twin.conv1(x))))
    outputs = [stem]
    for layer in (twin.layer1, twin.layer2, twin.layer3):
        outputs.append(layer(outputs[-1]))
    per_image = F.cross_entropy(twin.fc(twin.avgpool(outputs[-1]).flatten(1)), y, reduction="none")
    grads = torch.autograd.grad(per_image.sum(), outputs)
    for index, (out, grad) in enumerate(zip(outputs, grads, strict=True)):
        assert got[("response_std", index)] == pytest.approx(out.std().item(), rel=1e-5)
        assert got[("grad_norm", index)] == pytest.approx(grad.flatten(1).norm(dim=1).mean().item(), rel=1e-4)
    first_bn = twin.bn1(twin.conv1(x))  # the stem's 3x3 conv after its BN: conv index 1
    assert got[("conv_response_std", 1)] == pytest.approx(first_bn.std().item(), rel=1e-5)
    assert len(three_by_three_norms(model)) == 7  # the stem's and two in each of three blocks
    change = torch.cat(
        [
            (w.detach() - b).flatten()
            for w, b in zip((model.layer2[0].conv1.weight, model.layer2[0].conv2.weight), before, strict=True)
        ]
    )
    assert got[("update_ratio", 2)] == pytest.approx(
        (change.norm() / torch.cat([b.flatten() for b in before]).norm()).item(), rel=1e-5
    )
    assert ("update_ratio", 4) in got and ("grad_norm", 4) not in got  # the head: weights only


def test_signal_steps_are_dense_early_and_few():
    steps = signal_steps(64_000, "auto")
    assert 0 in steps and 63_999 in steps and 40 <= len(steps) <= 50
    assert len([s for s in steps if s < 640]) > len([s for s in steps if s >= 6400])  # dense early
    assert signal_steps(10, 3) == {0, 3, 6, 9} and signal_steps(10, 0) == set()


def test_deleting_a_block_whose_residual_branch_is_zero_changes_nothing():
    torch.manual_seed(0)
    model = create_model("resnet", depth=14, shortcut="B").eval()
    for name in ("layer1.1", "layer2.0"):  # an identity block and a downsampling (projection) one
        block = model.get_submodule(name)
        nn.init.zeros_(block.bn2.weight)
        nn.init.zeros_(block.bn2.bias)
    x = torch.randn(4, 3, 32, 32)
    indices = [i for i, b in enumerate(model.blocks()) if b.name in ("layer1.1", "layer2.0")]
    with torch.no_grad():
        intact = model(x)
        with deleted(model, indices) as net:
            torch.testing.assert_close(net(x), intact)
        with deleted(model, [1]) as net:  # a block with a branch: deleting it changes the output
            assert not torch.allclose(net(x), intact)
    torch.testing.assert_close(model(x), intact)  # the net itself is left as it was


def test_a_plain_downsampling_block_and_transitions_cannot_be_deleted():
    batches = [(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))]
    plain = lesion_rows(create_model("plain", depth=8).eval(), batches, draws=2, seed=0, max_k=None)
    assert [r["kind"] for r in plain] == ["intact", "single", "single", "single"]  # k up to half of 1: none
    assert [r["test_error"] == "" for r in plain[1:]] == [False, True, True]
    assert "no shortcut" in plain[2]["note"]
    dense = create_model("densenet", depth=10).eval()
    rows = lesion_rows(dense, batches, draws=3, seed=0, max_k=None)
    kinds = {b.name: b.kind for _, b in lesion_targets(dense)}
    assert list(kinds.values()).count("dense_layer") == 6 and list(kinds.values()).count("transition") == 2
    random_rows = [r for r in rows if r["kind"] == "random"]
    assert sorted({r["k"] for r in random_rows}) == [1, 2, 3] and len(random_rows) == 9


def test_deleting_a_dense_layer_zeroes_exactly_what_reads_its_maps():
    model = create_model("densenet", depth=10).eval()  # 2 layers a block, k=12, 16 input maps
    index = next(i for i, b in enumerate(model.blocks()) if b.name == "features.denseblock1.denselayer1")
    with deleted(model, [index]) as net:
        assert net is not model
        assert torch.count_nonzero(net.features.denseblock1.denselayer2.conv1.weight[:, 16:28]) == 0
        assert torch.count_nonzero(net.features.transition1.conv.weight[:, 16:28]) == 0
        assert torch.equal(
            net.features.transition1.conv.weight[:, :16], model.features.transition1.conv.weight[:, :16]
        )
        assert torch.equal(
            net.features.transition1.conv.weight[:, 28:], model.features.transition1.conv.weight[:, 28:]
        )
    last = next(i for i, b in enumerate(model.blocks()) if b.name == "features.denseblock3.denselayer2")
    with deleted(model, [last]) as net:
        width = net.classifier.weight.shape[1]
        assert torch.count_nonzero(net.classifier.weight[:, width - 12 :]) == 0


@pytest.mark.parametrize(
    ("name", "layers", "k", "first"), [("densenet40", 12, 12, 16), ("densenet_bc100", 16, 12, 24)]
)
def test_the_reuse_map_has_a_cell_per_layer_and_source(name, layers, k, first):
    model = create_model(name)
    rows = feature_reuse(model)
    for block in (1, 2, 3):
        cells = [r for r in rows if r["block"] == block]
        targets = [t for t in dict.fromkeys(r["target"] for r in cells)]
        assert targets == [*range(1, layers + 1), "transition" if block < 3 else "classifier"]
        for target in range(1, layers + 1):
            assert [r["source"] for r in cells if r["target"] == target] == list(range(target))
        assert [r["source"] for r in cells if isinstance(r["target"], str)] == list(range(layers + 1))
    # source 0 of block 1 is the first conv's maps: each cell divides by that many channels
    layer = model.features.denseblock1.denselayer3
    expected = layer.conv1.weight[:, :first].abs().sum().item() / first
    assert next(r for r in rows if (r["block"], r["target"], r["source"]) == (1, 3, 0))[
        "value"
    ] == pytest.approx(expected)
    second = layer.conv1.weight[:, first + k : first + 2 * k].abs().sum().item() / k
    assert next(r for r in rows if (r["block"], r["target"], r["source"]) == (1, 3, 2))[
        "value"
    ] == pytest.approx(second)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, session_cli) -> dict[str, Path]:
    """A plain net, a ResNet and a DenseNet, each trained on digits for an epoch."""
    root = tmp_path_factory.mktemp("trained")
    settings = [*TINY, "logger=none", "measure.signals_every=4"]
    session_cli(
        root, ["train", "-m", "arch=plain,resnet", "arch.depth=8", *settings, "hydra.sweep.dir=sweep"]
    )
    session_cli(root, ["train", "-m", "arch=densenet", "arch.depth=10", *settings, "hydra.sweep.dir=sweep"])
    runs = {run.name.rsplit("-", 3)[0]: run for run in run_dirs(root / "sweep")}
    assert set(runs) >= {"plain8", "resnet8", "densenet10"}
    return runs


def test_a_training_run_records_its_signals(trained):
    rows = read(trained["resnet8"] / "signals.csv")
    steps = sorted({int(r["step"]) for r in rows})
    assert steps == list(range(0, 22, 4))  # every 4th of 22 steps
    quantities = {r["quantity"] for r in rows}
    assert quantities == {
        "response_std",
        "conv_response_std",
        "grad_norm",
        "weight_norm",
        "weight_grad_norm",
        "update_ratio",
    }
    record = summary(trained["resnet8"])
    assert record["timed_steps"] == 22 - 5 - len(steps[2:])  # warm-up and signal steps are not timed
    assert (trained["densenet10"] / "feature_reuse.csv").exists() and not (
        trained["resnet8"] / "feature_reuse.csv"
    ).exists()


def test_lesion_and_reuse_commands_add_their_files_and_change_nothing_else(trained, cli, workdir):
    runs = {name: shutil.copytree(run, workdir / name) for name, run in trained.items()}
    before = {p: p.read_bytes() for run in runs.values() for p in run.rglob("*") if p.is_file()}
    result = cli("lesion", *map(str, runs.values()), str(workdir / "home"), "--draws", "2")
    assert result.status == 0, result.err
    assert result.out.count("intact; one block deleted") == 3
    lesion = read(runs["plain8"] / "lesion.csv")
    assert lesion[0]["kind"] == "intact" and float(lesion[0]["test_error"]) == pytest.approx(
        summary(runs["plain8"])["test_error"]
    )
    assert [r["blocks"] for r in lesion if r["kind"] == "single"] == ["1", "2", "3"]
    (runs["densenet10"] / "feature_reuse.csv").unlink()
    assert cli("reuse", str(runs["densenet10"])).status == 0
    assert (runs["densenet10"] / "feature_reuse.csv").exists()
    assert {p: p.read_bytes() for p in before if p.exists()} == before  # nothing else changed
    report = cli("report", *map(str, runs.values()), "--out", "report", "--logger", "none")
    assert report.status == 0, report.err
    for figure in (
        "signal_propagation",
        "signal_propagation_densenet",
        "update_ratio",
        "lesion",
        "feature_reuse",
    ):
        pixels = matplotlib.image.imread(workdir / "report" / f"{figure}.png")
        assert pixels.shape[0] >= 300 and pixels.std() > 0.01, figure
        assert f"]({figure}.png)" in (workdir / "report" / "report.md").read_text()
    refused = cli("reuse", str(runs["resnet8"]))
    assert refused.status == 1 and "is a resnet: feature reuse is a DenseNet's" in refused.error_line()
    (runs["plain8"] / "summary.json").unlink()
    assert (
        "has no summary.json (still training, or killed)" in cli("lesion", str(runs["plain8"])).error_line()
    )
    assert (
        cli("lesion", str(runs["resnet8"]), "--draws", "0")
        .error_line()
        .startswith("error: experiments lesion: argument --draws")
    )


def test_probe_measures_at_initialisation_in_a_run_directory_of_its_own(cli, workdir):
    result = cli("probe", "-m", "arch=plain,resnet", "arch.depth=20", "dataset=digits", "logger=none")
    assert result.status == 0, result.err
    assert result.out.count("at initialisation, one real batch of 64") == 2
    assert "first/last" in result.out
    runs = run_dirs(workdir / "multirun")
    assert len(runs) == 2
    for run in runs:
        record = summary(run)
        assert (record["command"], record["status"], record["data"]) == ("probe", "completed", "real")
        assert record["environment"]["threads"] >= 1 and record["environment"]["gpu"] is None
        assert {r["step"] for r in read(run / "signals.csv")} == {"0"}
    random = cli("probe", "dataset=cifar10", "arch=resnet", "arch.depth=8", "logger=none")
    assert random.status == 0 and "one random batch of 128" in random.out
    (run,) = run_dirs(workdir / "outputs")
    assert summary(run)["data"] == "random" and not (workdir / "data").exists()


def test_a_failed_probe_leaves_its_record_and_the_report_names_its_command(cli, workdir, monkeypatch):
    def out_of_memory(*_: object) -> None:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr("experiments.commands.probe.measure_step", out_of_memory)
    result = cli("probe", "arch=resnet", "arch.depth=8", "dataset=digits", "logger=none")
    assert result.status == 1
    (run,) = run_dirs(workdir / "outputs")
    assert result.error_line() == (
        "error: probe failed: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB "
        f"(record: {run / 'summary.json'})"
    )
    record = summary(run)
    assert (record["command"], record["status"]) == ("probe", "failed") and not (run / "signals.csv").exists()
    (run / "summary.json").unlink()  # as if killed: only Hydra's files say which command it was
    assert cli("report", str(workdir / "outputs"), "--out", "report").status == 0
    with (workdir / "report" / "runs.csv").open() as f:
        (row,) = csv.DictReader(f)
    assert (row["command"], row["status"], row["paper_test_error"]) == ("probe", "unfinished", "")


def test_probe_from_a_checkpoint_reads_its_weights_and_refuses_another_nets(digits_sweep, cli, workdir):
    runs = {run.name.split("-")[0]: run for run in run_dirs(digits_sweep / "multirun")}
    checkpoint = runs["resnet8"] / "checkpoints" / "last.ckpt"
    common = ("arch=resnet", "dataset=digits", "logger=none", f"ckpt_path={checkpoint}")
    result = cli("probe", "arch.depth=8", *common)
    assert result.status == 0, result.err
    assert f"from {checkpoint}, one real batch of 64" in result.out
    trained = torch.load(checkpoint, weights_only=False)["state_dict"]["model.conv1.weight"]
    (run,) = run_dirs(workdir / "outputs" / "probe")
    stem = next(r for r in read(run / "signals.csv") if r["quantity"] == "weight_norm" and r["index"] == "0")
    assert float(stem["value"]) == pytest.approx(trained.norm().item(), rel=1e-5)
    other = cli("probe", "arch.depth=14", *common)
    assert other.status == 1
    assert other.error_line() == (
        f"error: ckpt_path: {checkpoint} does not fit resnet14: layer1.1.bn1.bias is missing "
        "(36 missing, 0 unexpected, 0 of another shape)"
    )
