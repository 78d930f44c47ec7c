"""cuda_graph: training steps whose forward and backward run as one CUDA graph (experiments.step_graph).

On a CPU the same code path runs every step eagerly: it must train exactly as the eager step does, with
gradient clipping, the hooks before the optimiser step and the step count intact. The capture itself needs
a GPU: those tests are marked `gpu` (bench/gpu_check.sh runs them).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from experiments.build import build_datamodule, build_model, build_trainer
from experiments.config import compose
from experiments.device import Device, build_optimizer, use_cuda_graph
from experiments.errors import UserError
from experiments.measure.param_grads import ParamGradNorms
from experiments.models import create_model
from experiments.module import Classifier
from experiments.plan import Plan
from experiments.step_graph import WARMUP_STEPS, StepGraph
from tests.helpers import run_dirs, summary

needs_gpu = pytest.mark.gpu
# random 16 px images (no scikit-learn needed on a GPU machine), cropped and flipped: 1,350 training
# images make 21 batches of 64 and one of 6
DATA = [
    "dataset=synthetic",
    "dataset.image_size=16",
    "dataset.train_size=1350",
    "dataset.batch_size=64",
    "dataset.crop_padding=2",
    "dataset.flip=true",
]
EPOCHS, STEPS_PER_EPOCH = 2, 22


def config(*overrides: str) -> Plan:
    return Plan.of(compose("train", ["arch=resnet", "arch.depth=8", *DATA, *overrides]))


def fit(cuda_graph: bool, accelerator: str = "cpu") -> tuple[Classifier, dict]:
    """Two epochs of ResNet-8, gradients clipped hard (so clipping changes every step); the
    trained module and the summed gradient norms ParamGradNorms saw."""
    cfg = config()
    torch.manual_seed(0)
    data = build_datamodule(cfg.subject)
    device = Device(accelerator == "cuda", "32-true", channels_last=accelerator == "cuda")
    model = build_model(cfg.subject, data)
    if device.channels_last:
        model = model.to(memory_format=torch.channels_last)
    module = Classifier(
        model,
        build_optimizer(cfg.recipe.optim, device),
        cfg.recipe.schedule,
        device.channels_last,
        cuda_graph=cuda_graph,
        clip=(0.1, "norm"),
    )
    flow = ParamGradNorms(every=5)
    trainer = build_trainer(
        None,
        accelerator=accelerator,
        devices=1,
        precision=device.precision,
        max_epochs=EPOCHS,
        callbacks=[flow],
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == EPOCHS * STEPS_PER_EPOCH
    return module, {name: total.item() for name, total in flow._sums.items()}


def weights(module: Classifier) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten().cpu() for p in module.parameters()])


def test_the_graphed_path_trains_as_the_eager_step_does():
    expected, expected_norms = fit(cuda_graph=False)
    graphed, norms = fit(cuda_graph=True)
    assert graphed.step_graph.eager_steps == EPOCHS * STEPS_PER_EPOCH  # a CPU never captures
    assert torch.allclose(weights(graphed), weights(expected), rtol=1e-5, atol=1e-6)
    assert norms.keys() == expected_norms.keys() and len(norms) >= 3
    assert norms == pytest.approx(expected_norms, rel=1e-5)


GPU = Device(cuda=True, precision="bf16-mixed", channels_last=True)


@pytest.mark.parametrize(
    ("overrides", "device", "obstacle"),
    [
        ([], GPU, None),
        (["compile=true"], GPU, None),
        ([], Device(cuda=False, precision="32-true", channels_last=False), "needs a CUDA GPU"),
        (["compile=reduce-overhead"], GPU, "compile=reduce-overhead records graphs of its own"),
        ([], Device(cuda=True, precision="16-mixed", channels_last=True), "not 16-mixed: a GradScaler"),
        (["trainer=ddp"], GPU, "trains on one device"),
        (["trainer.devices=2"], GPU, "trains on one device"),
    ],
)
def test_cuda_graph_is_on_for_one_gpu_unless_a_setting_rules_it_out(overrides, device, obstacle):
    assert use_cuda_graph(config(*overrides).recipe, device) == (obstacle is None)  # cuda_graph=auto
    assert not use_cuda_graph(config(*overrides, "cuda_graph=false").recipe, device)
    if obstacle:
        with pytest.raises(UserError, match=obstacle) as error:
            use_cuda_graph(config(*overrides, "cuda_graph=true").recipe, device)
        assert str(error.value).startswith("cuda_graph=true ")


def test_auto_leaves_memory_efficient_densenets_eager():
    memory_efficient = ["arch=densenet_bc", "arch.depth=40", "arch.memory_efficient=true"]
    assert not use_cuda_graph(config(*memory_efficient).recipe, GPU)
    assert use_cuda_graph(config(*memory_efficient, "cuda_graph=true").recipe, GPU)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_replayed_step_computes_what_an_eager_one_does(dtype):
    model = create_model("resnet", depth=8, image_size=16).cuda().to(memory_format=torch.channels_last)
    step = StepGraph(lambda x, y: (F.cross_entropy(model(x), y),), model.parameters())
    mixed = dtype != torch.float32

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(n, 3, 16, 16, device="cuda"), torch.randint(0, 10, (n,), device="cuda")

    def eager(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """An eager step's loss and gradients on the current weights, cast afresh."""
        for p in model.parameters():
            p.grad = None
        with torch.autocast("cuda", dtype=dtype, enabled=mixed, cache_enabled=False):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        return loss.detach(), [p.grad for p in model.parameters()]

    tolerance = {"rtol": 2e-2, "atol": 1e-3} if mixed else {"rtol": 1e-4, "atol": 1e-5}
    # One autocast region throughout, as a hand-written loop may have: a weight's cast cached in it before
    # the capture would be replayed stale once the weight changes.
    with torch.autocast("cuda", dtype=dtype, enabled=mixed):
        for images, labels in [batch(64)] * WARMUP_STEPS:
            step(images, labels)
        assert step.graph is None
        for n in (64, 64, 6, 64):
            with torch.no_grad():  # new weights, as an update would make
                for p in model.parameters():
                    p.add_(torch.randn_like(p), alpha=0.1)
            images, labels = batch(n)
            (loss,) = step(images, labels)
            grads = [p.grad.clone() for p in model.parameters()]
            expected_loss, expected_grads = eager(images, labels)
            assert torch.allclose(loss, expected_loss, **tolerance)
            for grad, expected in zip(grads, expected_grads, strict=True):
                assert torch.allclose(grad, expected, **tolerance)
    # the batches of 64 replay the graph (the first also captures it); the batch of 6 runs eagerly
    assert step.replays == 3 and step.eager_steps == WARMUP_STEPS + 1


@needs_gpu
def test_replayed_steps_train_as_the_eager_step_does_on_a_gpu():
    expected, expected_norms = fit(cuda_graph=False, accelerator="cuda")
    graphed, norms = fit(cuda_graph=True, accelerator="cuda")
    # the first steps and each epoch's short last batch run eagerly; every other step is a replay
    assert graphed.step_graph.eager_steps == WARMUP_STEPS + EPOCHS
    assert graphed.step_graph.replays == EPOCHS * STEPS_PER_EPOCH - WARMUP_STEPS - EPOCHS
    # cuDNN's backward kernels are not deterministic: close, not equal
    difference = (weights(graphed) - weights(expected)).norm() / weights(expected).norm()
    assert difference < 1e-3
    assert norms == pytest.approx(expected_norms, rel=1e-2)


@needs_gpu
def test_train_on_a_gpu_runs_its_steps_as_cuda_graphs_and_profile_times_replays(cli, workdir):
    epochs = f"trainer.max_epochs={EPOCHS}"
    result = cli("train", "arch=resnet20", *DATA, "trainer=gpu", epochs, "logger=csv")
    assert result.status == 0, result.err
    (run,) = run_dirs(workdir / "outputs")
    record = summary(run)
    assert record["status"] == "completed" and record["throughput"] > 0, record
    # the default on one GPU: every step a replay but the first few and each epoch's short last batch
    assert record["cuda_graph_steps"] == EPOCHS * STEPS_PER_EPOCH - WARMUP_STEPS - EPOCHS
    assert record["step_timing"] == "mixed"  # the short last batch of each epoch runs eagerly
    assert cli("profile", "arch=resnet20", *DATA, "trainer=gpu", "logger=none").status == 0
    (profiled,) = run_dirs(workdir / "outputs" / "profile")
    assert summary(profiled)["step_timing"] == "cuda_graph"  # timed as train times its steps
