"""The model zoo: parameter counts against the papers and torchvision, torchvision's names and weights,
old checkpoints, the recomputing (memory-efficient) forms, the block list, errors."""

import dataclasses
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from experiments import specs
from experiments.config import compose
from experiments.measure.counts import activation_bytes
from experiments.models import create_model, list_models
from experiments.models.densenet import DenseNet
from experiments.models.legacy import migrate
from tests.helpers import FIXTURES

IMAGENET = {"num_classes": 1000, "image_size": 224}
SLOW_PRESETS = {"resnet1202", "densenet264", "densenet_bc190", "densenet_bc250"}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_model(name: str, **kw: object) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **kw)


def test_parameter_counts_match_the_papers_and_torchvision() -> None:
    paper = [
        ("resnet20", {}, 269_722),
        ("resnet32", {}, 464_154),
        ("resnet44", {}, 658_586),
        ("resnet56", {}, 853_018),
        ("resnet110", {}, 1_727_962),
        ("densenet40", {}, 1_019_722),
        ("densenet100", {}, 6_979_642),
        ("densenet_bc100", {}, 769_162),
        ("densenet121", IMAGENET, 7_978_856),
    ]
    for name, kw, expected in paper:
        assert n_params(meta_model(name, **kw)) == expected, name
    for name in (
        "resnet18",
        "resnet34",
        "resnet50",
        "densenet121",
        "densenet161",
        "densenet169",
        "densenet201",
    ):
        with torch.device("meta"):
            theirs = getattr(torchvision.models, name)()
        assert n_params(meta_model(name, **IMAGENET)) == n_params(theirs), name


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet152", "densenet121", "densenet161"])
def test_imagenet_nets_have_torchvisions_names_and_shapes(name: str) -> None:
    with torch.device("meta"):
        ours, theirs = (
            create_model(name, **IMAGENET).state_dict(),
            getattr(torchvision.models, name)().state_dict(),
        )
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


@pytest.mark.parametrize("name", ["resnet50", "densenet121"])
def test_a_torchvision_state_dict_loads_and_computes_what_torchvision_does(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    theirs = getattr(torchvision.models, name)().eval()
    for module in theirs.modules():  # running statistics that are not the identity
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    torch.save(theirs.state_dict(), tmp_path / "weights.pth")
    ours = create_model(name, pretrained=str(tmp_path / "weights.pth"), **IMAGENET).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():  # the same sums in another module's order: float32 rounding over 50 layers
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-5)
    # other classes: the backbone's weights, a fresh classifier; small images keep the ImageNet stem
    ten = create_model(name, pretrained=str(tmp_path / "weights.pth"), num_classes=10, image_size=32)
    assert ten.spec.stem == "imagenet" and ten.blocks()[-1].name in ("fc", "classifier")
    first_conv = "conv1.weight" if name.startswith("resnet") else "features.conv0.weight"
    torch.testing.assert_close(ten.state_dict()[first_conv], theirs.state_dict()[first_conv])


def test_pretrained_weights_refuse_what_does_not_fit(tmp_path) -> None:
    torch.save(create_model("resnet18", **IMAGENET).state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(ValueError, match=r"do not fit resnet34: layer1\.2\.bn1\.bias is missing"):
        create_model("resnet34", pretrained=str(tmp_path / "resnet18.pth"), **IMAGENET)
    with pytest.raises(ValueError, match=r"ImageNet-form nets with the ImageNet stem, not resnet20"):
        create_model("resnet20", pretrained=str(tmp_path / "resnet18.pth"))
    with pytest.raises(ValueError, match="is not a file"):
        create_model("resnet18", pretrained=str(tmp_path / "nothing.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a state dict")
    with pytest.raises(ValueError, match="is not a PyTorch state dict"):
        create_model("resnet18", pretrained=str(tmp_path / "junk.pth"))


def test_torchvision_weights_offline_say_which_file_goes_where(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(
        torch.hub, "load_state_dict_from_url", lambda *a, **k: (_ for _ in ()).throw(OSError("offline"))
    )
    with pytest.raises(ValueError) as error:
        create_model("resnet18", pretrained="torchvision", **IMAGENET)
    message = str(error.value)
    assert (
        f"{tmp_path}/torch/hub/checkpoints/resnet18-" in message
        and "fetch https://download.pytorch.org/" in message
    )


LEGACY = torch.load(FIXTURES / "legacy_models.pt", weights_only=False)


@pytest.mark.parametrize("case", list(LEGACY["models"]))
def test_state_dicts_saved_with_the_old_names_load_and_compute_the_same(case: str) -> None:
    """Saved before the nets took torchvision's names (`stage1.0.body.3.weight`): renamed on load, the
    same outputs on the same input."""
    saved = LEGACY["models"][case]
    model = create_model(saved["name"], in_channels=1, image_size=8, **saved["kwargs"]).eval()
    model.load_state_dict(migrate(saved["state_dict"]))
    with torch.no_grad():
        # The fixture's outputs were computed on another CPU, whose kernels round differently (differences of
        # about 1e-7 seen): equal to a float32 rounding, not bit for bit. A wrong rename would be off by O(1).
        torch.testing.assert_close(model(saved["input"]), saved["output"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(LEGACY["imagenet_keys"]))
def test_old_imagenet_names_map_onto_the_new_ones(name: str) -> None:
    renamed = list(migrate(dict.fromkeys(LEGACY["imagenet_keys"][name])))
    assert renamed == list(meta_model(name, **IMAGENET).state_dict())


def shapes(model: nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in model.state_dict().items()}


@pytest.mark.parametrize("depth", [20, 56, 110])
def test_plain_and_option_a_resnet_differ_only_in_shortcuts(depth: int) -> None:
    res, plain = meta_model("resnet", depth=depth), meta_model("plain", depth=depth)
    assert (res.spec.label, plain.spec.label) == ("resnet", "plain")
    assert res.spec.depth == plain.spec.depth == depth
    assert shapes(res) == shapes(plain)  # option A's shortcuts have no weights
    assert [b.kind for b in res.blocks()[1:-1]] == ["residual"] * (3 * (depth - 2) // 6)
    assert {b.kind for b in plain.blocks()[1:-1]} == {"plain"}
    downsampling = [b.name for b in plain.blocks() if b.downsamples]
    assert downsampling == ["layer2.0", "layer3.0"]


def test_dense_blocks_are_numbered_past_nine() -> None:
    spec = dataclasses.replace(specs.resolve("densenet_bc", depth=40), blocks=(1,) * 12)
    with torch.device("meta"):
        net = DenseNet(spec)
    stages = [b.stage for b in net.blocks() if b.kind in ("dense_layer", "transition")]
    assert stages == sorted([*range(1, 13), *range(1, 12)])  # a layer in each block, a transition after 1-11


def test_option_b_adds_exactly_the_projections() -> None:
    res, plain = meta_model("resnet", depth=20, shortcut="B"), meta_model("plain", depth=20)
    extra = {k: v for k, v in shapes(res).items() if k not in shapes(plain)}
    assert sorted(extra) == sorted(
        f"layer{i}.0.downsample.{part}"
        for i in (2, 3)
        for part in (
            "0.weight",
            "1.weight",
            "1.bias",
            "1.running_mean",
            "1.running_var",
            "1.num_batches_tracked",
        )
    )
    assert n_params(res) - n_params(plain) == sum(cin * cout + 2 * cout for cin, cout in [(16, 32), (32, 64)])


def test_zero_init_residual() -> None:
    assert all(
        torch.count_nonzero(b.bn2.weight) == 0
        for b in create_model("resnet20", zero_init_residual=True).layer2
    )
    assert all(torch.all(b.bn2.weight == 1) for b in create_model("plain20", zero_init_residual=True).layer2)


def loss_and_backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss


@pytest.mark.parametrize(("name", "depth"), [("densenet", 40), ("densenet_bc", 40), ("resnet", 20)])
def test_memory_efficient_nets_train_exactly_as_naive_ones(name: str, depth: int) -> None:
    """The same loss, gradients and batch-norm running statistics after a step (a recomputation in backward
    must not count the batch twice), for less memory held."""
    torch.manual_seed(0)
    naive = create_model(name, depth=depth).train()
    efficient = create_model(name, depth=depth, memory_efficient=True).train()
    efficient.load_state_dict(naive.state_dict())
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    # recomputed in backward, the same float32 sums in another order: equal to rounding, on this machine
    torch.testing.assert_close(
        loss_and_backward(efficient, x, y), loss_and_backward(naive, x, y), rtol=0, atol=1e-5
    )
    for (key, p), q in zip(naive.named_parameters(), efficient.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=1e-5, msg=key)
    for key, value in naive.state_dict().items():
        torch.testing.assert_close(efficient.state_dict()[key], value, rtol=0, atol=1e-6, msg=key)
    assert activation_bytes(efficient, x.shape) < 0.8 * activation_bytes(naive, x.shape)


def preset_params() -> list:
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_PRESETS else n for n in list_models()]


@pytest.mark.parametrize("name", preset_params())
def test_every_model_trains_at_32px(name: str) -> None:
    model = create_model(name, num_classes=7)
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (2, 7) and all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", ["resnet18", "densenet121"])
def test_imagenet_forms_at_224px(name: str) -> None:
    model = create_model(name, **IMAGENET)
    assert model.spec.stem == "imagenet"
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


@pytest.mark.parametrize("size", [8, 28])
@pytest.mark.parametrize(
    "name", ["resnet20", "plain20", "densenet40", "densenet_bc100", "resnet18", "densenet121"]
)
def test_one_channel_small_inputs(name: str, size: int) -> None:
    model = create_model(name, in_channels=1, image_size=size)
    assert model(torch.randn(2, 1, size, size)).shape == (2, 10)


def test_the_stem_is_an_explicit_choice() -> None:
    """auto keeps the ImageNet form's 7x7 conv and max-pool above 64 px; `stem` chooses."""
    big, small = meta_model("resnet18", image_size=224), meta_model("resnet18", image_size=32)
    assert (
        big.spec.stem == "imagenet"
        and big.conv1.kernel_size == (7, 7)
        and isinstance(big.maxpool, nn.MaxPool2d)
    )
    assert small.spec.stem == "cifar" and small.conv1.kernel_size == (3, 3) and small.conv1.out_channels == 64
    forced = meta_model("densenet121", image_size=32, stem="imagenet")
    assert forced.spec.stem == "imagenet" and forced.features.conv0.kernel_size == (7, 7)
    assert meta_model("resnet20", image_size=224).spec.stem == "cifar"
    # DenseNet-121 on CIFAR-10: 6,956,426 parameters with the 3x3 stem, 6,964,106 with the 7x7 one
    assert n_params(meta_model("densenet121")) == 6_956_426
    assert n_params(meta_model("densenet121", stem="imagenet")) == 6_964_106


def test_presets_are_their_family_at_the_papers_settings() -> None:
    assert create_model("densenet_bc190").spec == specs.resolve("densenet_bc", depth=190, growth_rate=40)
    same = specs.resolve("densenet", form="imagenet", depth=121)
    assert specs.resolve("densenet121") == same  # the ImageNet form's defaults are DenseNet-121's
    assert specs.resolve("resnet56", shortcut="B").shortcut == "B"  # arguments override the preset


def test_a_family_composes_to_the_depth_the_zoo_builds_for_it() -> None:
    for family in specs.FAMILIES:
        assert compose("train", [f"arch={family}"]).arch.depth == specs.resolve(family).depth, family


@pytest.mark.parametrize(
    ("name", "kw", "expected"),
    [
        (
            "resnet",
            {"depth": 21},
            "resnet (cifar form, basic blocks) depth must be 6n+2, got 21; nearest valid: 20, 26",
        ),
        ("plain", {"depth": 3}, "depth must be 6n+2, got 3; nearest valid: 8"),
        ("resnet", {"depth": 30, "bottleneck": True}, "depth must be 9n+2, got 30; nearest valid: 29, 38"),
        (
            "densenet_bc",
            {"depth": 101},
            "densenet_bc (cifar form, bottleneck layers) depth must be 6n+4, got 101",
        ),
        (
            "densenet",
            {"depth": 41},
            "densenet (cifar form, basic layers) depth must be 3n+4, got 41; nearest valid: 40, 43",
        ),
        ("resnet", {"depth": 19, "form": "imagenet"}, "depth must be one of 18, 34, 50, 101, 152, got 19"),
        (
            "densenet",
            {"depth": 120, "form": "imagenet"},
            "depth must be one of 121, 161, 169, 201, 264, got 120",
        ),
        ("resnet", {"shortcut": "C"}, "resnet shortcut must be one of 'A', 'B', 'none'; got 'C'"),
        ("densenet", {"form": "tiny"}, "densenet form must be one of 'cifar', 'imagenet'; got 'tiny'"),
        ("plain20", {"shortcut": "B"}, "plain nets take no shortcut"),
        ("densenet_bc", {"compression": 0}, "compression must be in (0, 1]"),
        ("resnet", {"growth_rate": 12}, "resnet takes no argument 'growth_rate'"),
        ("resnet", {"depth": "abc"}, "resnet depth must be an integer, got 'abc'"),
        ("resnet9000x", {}, "unknown model 'resnet9000x'; available: densenet, densenet100,"),
    ],
)
def test_bad_arguments_give_one_line_errors(name: str, kw: dict, expected: str) -> None:
    with pytest.raises(ValueError) as info:
        create_model(name, **kw)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_models_import_without_lightning_or_hydra_and_specs_without_torch() -> None:
    code = (
        "import sys, experiments.specs as s; s.resolve('densenet121'); assert 'torch' not in sys.modules; "
        "import experiments.models as m; m.create_model('resnet20'); "
        "bad = {'pytorch_lightning', 'lightning', 'hydra', 'omegaconf'} & set(sys.modules); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
