"""The loss landscape (Li et al. 2018): filter-normalised directions, the slices, surface and
interpolation, and `experiments landscape` on a trained run. Also the tiny trained run the paths and
curvature tests share."""

from __future__ import annotations

import copy
import csv
import hashlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from experiments.measure import landscape as measure
from experiments.models import create_model
from tests.helpers import run_dirs


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny nets on one thread: a second buys nothing at this size, and on a shared CPU its threads wait
    for each other far longer than they compute."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_resnet(seed: int = 0) -> nn.Module:
    """A ResNet-8 for 8x8 one-channel images, its batch norms holding statistics other than 0 and 1."""
    torch.manual_seed(seed)
    model = create_model("resnet", depth=8, num_classes=3, in_channels=1, image_size=8)
    for norm in model.modules():
        if isinstance(norm, nn.BatchNorm2d):
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
    return model.eval()


def tiny_batches(images: int = 24, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(images, 1, 8, 8, generator=generator)
    y = torch.randint(0, 3, (images,), generator=generator)
    return [(x[:16], y[:16]), (x[16:], y[16:])]  # two batches: the sums run over batches too


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def assert_same_state(before: dict[str, torch.Tensor], model: nn.Module) -> None:
    after = model.state_dict()
    assert before.keys() == after.keys()
    for name, value in before.items():
        assert torch.equal(value, after[name]), name  # bit for bit: nothing may have been written


def test_directions_filters_have_their_weights_norms():
    model = tiny_resnet()
    direction = measure.filter_normalised_direction(model, torch.Generator().manual_seed(0))
    assert direction.keys() == dict(model.named_parameters()).keys()
    for name, weight in model.named_parameters():
        if weight.dim() <= 1:
            assert not direction[name].any(), name
            continue
        # fp32 norms of the same filter computed twice over: a few ulps apart
        torch.testing.assert_close(
            direction[name].flatten(1).norm(dim=1), weight.detach().flatten(1).norm(dim=1), rtol=1e-5, atol=0
        )


def test_directions_are_the_seeds():
    model = tiny_resnet()
    first, again = (
        measure.filter_normalised_direction(model, torch.Generator().manual_seed(3)) for _ in range(2)
    )
    assert all(torch.equal(first[name], again[name]) for name in first)


def test_slice_centre_is_the_eval_pass_and_the_model_is_unchanged():
    model, batches = tiny_resnet(), tiny_batches()
    before = state(model)
    net = measure.working_copy(model, torch.device("cpu"))
    directions = [
        measure.filter_normalised_direction(net, torch.Generator().manual_seed(0)) for _ in range(2)
    ]
    steps = measure.grid(5, 1.0)
    rows = measure.slice_rows(net, batches, directions, steps, lambda: None)
    rows += measure.surface_rows(
        net, batches, (directions[0], directions[1]), measure.grid(3, 1.0), lambda: None
    )
    assert_same_state(before, model)
    assert_same_state(before, net)  # the working copy is back at the weights too
    with torch.no_grad():
        x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        logits = copy.deepcopy(model).eval()(x)
    expected_loss = F.cross_entropy(logits, y).item()
    expected_error = (logits.argmax(1) != y).sum().item() / len(y)
    for row in rows:
        if row["x"] == 0 and row["y"] in ("", 0):
            # one batch against two: the same fp32 sums in another order, within a few ulps of the loss
            assert row["loss"] == pytest.approx(expected_loss, rel=1e-5)
            assert row["error"] == pytest.approx(
                expected_error, abs=1e-12
            )  # the same count over the same images


def test_softmax_regression_surface_is_convex():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    net = measure.working_copy(model, torch.device("cpu"))
    generator = torch.Generator().manual_seed(1)
    directions = (
        measure.filter_normalised_direction(net, generator),
        measure.filter_normalised_direction(net, generator),
    )
    points = 9
    rows = measure.surface_rows(net, tiny_batches(), directions, measure.grid(points, 2.0), lambda: None)
    loss = torch.tensor([row["loss"] for row in rows], dtype=torch.float64).view(points, points)
    # cross-entropy is convex in a linear model's weights: second differences along every grid line are >= 0,
    # but for fp32 rounding of losses of this size
    tolerance = 1e-5 * loss.abs().max().item()
    assert (loss[2:] - 2 * loss[1:-1] + loss[:-2]).min() >= -tolerance
    assert (loss[:, 2:] - 2 * loss[:, 1:-1] + loss[:, :-2]).min() >= -tolerance


def test_interpolation_ends_are_the_initial_and_final_losses():
    initial, final, batches = tiny_resnet(seed=1), tiny_resnet(seed=2), tiny_batches()
    before = state(final)
    net = measure.working_copy(final, torch.device("cpu"))
    rows = measure.interpolation_rows(
        net, state(initial), batches, [0.0, 0.5, 1.0], "interpolate", lambda: None
    )
    assert_same_state(before, final)
    assert_same_state(before, net)
    # lerp gives its ends exactly, so these are the same passes: equal but for nothing
    assert rows[0]["loss"] == pytest.approx(measure.loss_and_error(initial, batches)[0], rel=1e-6)
    assert rows[-1]["loss"] == pytest.approx(measure.loss_and_error(final, batches)[0], rel=1e-6)


def test_recomputed_statistics_are_the_images():
    net, batches = measure.working_copy(tiny_resnet(), torch.device("cpu")), tiny_batches()
    measure.recompute_statistics(net, batches)
    images = torch.cat([x for x, _ in batches])
    maps = net.bn1(net.conv1(images)).detach()  # eval mode: normalised by the recomputed statistics
    # the first norm's input, normalised by the average of its two batches' means: about zero-mean
    assert not net.training
    assert maps.mean(dim=(0, 2, 3)).abs().max() < 0.1 * maps.std()


def files(run: Path) -> dict[str, str]:
    """Every file of a run, by path, with its content's hash."""
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in run.rglob("*")
        if p.is_file()
    }


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, session_cli) -> Path:
    """A ResNet-8 trained one epoch on digits, with checkpoints/init.ckpt (written here from a fresh net of
    the run's config where training did not write it)."""
    root = tmp_path_factory.mktemp("tiny_run")
    session_cli(
        root,
        ["train", "arch=resnet", "arch.depth=8", "dataset=digits", "trainer.max_epochs=1", "logger=none"],
    )
    (run,) = run_dirs(root)
    init = run / "checkpoints" / "init.ckpt"
    if not init.exists():
        from omegaconf import OmegaConf

        from experiments.build import build_datamodule, build_model
        from experiments.plan import Subject

        subject = Subject.of(OmegaConf.load(run / ".hydra" / "config.yaml"))
        fresh = build_model(subject, build_datamodule(subject), pretrained=False)
        torch.save({"state_dict": {f"model.{k}": v for k, v in fresh.state_dict().items()}}, init)
    return run


def test_landscape_command_writes_its_file_and_sidecar(tiny_run, monkeypatch):
    from experiments.commands.landscape import main

    monkeypatch.chdir(tiny_run.parent)
    before = files(tiny_run)
    options = [
        "--directions",
        "2",
        "--points",
        "5",
        "--grid",
        "3",
        "--interpolation-points",
        "3",
        "--images",
        "64",
    ]
    assert main([str(tiny_run), *options]) == 0
    after = files(tiny_run)
    assert {k: v for k, v in after.items() if not k.startswith("landscape.")} == before
    rows = read_csv(tiny_run / "landscape.csv")
    assert list(rows[0]) == ["kind", "direction", "x", "y", "loss", "error"]
    kinds = [row["kind"] for row in rows]
    assert (
        kinds.count("slice_1d") == 10 and kinds.count("surface_2d") == 9 and kinds.count("interpolation") == 3
    )
    sidecar = json.loads((tiny_run / "landscape.json").read_text())
    assert sidecar["options"]["grid"] == 3 and sidecar["images"] == 64 and "environment" in sidecar
    # a rerun with other options replaces both whole
    assert (
        main([str(tiny_run), "--directions", "1", "--points", "3", "--no-surface", "--no-interpolation"]) == 0
    )
    assert [row["kind"] for row in read_csv(tiny_run / "landscape.csv")] == ["slice_1d"] * 3
    assert json.loads((tiny_run / "landscape.json").read_text())["options"]["no_surface"] is True


def test_landscape_figures_draw_the_run(tiny_run: Path, tmp_path: Path, monkeypatch):
    from experiments.commands.landscape import main
    from experiments.report import landscape as figures
    from experiments.report.collect import Run

    monkeypatch.chdir(tiny_run.parent)
    assert main([str(tiny_run), "--directions", "2", "--points", "5", "--grid", "3", "--images", "32"]) == 0
    runs = [Run.read(tiny_run)]
    for draw, name in (
        (figures.landscape_1d, "landscape_1d.png"),
        (figures.landscape_2d, "landscape_2d.png"),
    ):
        ((_, path),) = draw(runs, tmp_path)
        assert path == tmp_path / name and path.stat().st_size > 0


def test_a_run_without_initial_weights_says_so(tiny_run: Path, capsys, monkeypatch):
    from experiments.commands.landscape import main

    monkeypatch.chdir(tiny_run.parent)
    init = tiny_run / "checkpoints" / "init.ckpt"
    aside = init.rename(tiny_run.parent / "init.ckpt.aside")
    try:
        capsys.readouterr()
        assert (
            main([str(tiny_run), "--directions", "1", "--points", "3", "--no-surface", "--images", "16"]) == 0
        )
        assert "no interpolation" in capsys.readouterr().out
        assert main([str(tiny_run), "--init", "--points", "3", "--no-surface", "--images", "16"]) == 1
        err = capsys.readouterr().err
        assert "has no checkpoints/init.ckpt" in err and len(err.strip().splitlines()) == 1
    finally:
        aside.rename(init)
