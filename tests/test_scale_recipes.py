"""The scale recipes (CIFAR-10, ImageNet 64x64, ImageNet 512x512 latents) resolve and dry-run on CPU, name the
data the user supplies and fail with how to prepare it when it is missing; their networks have the sizes
their comments state (counted on the meta device, nothing allocated); the ImageNet 512 recipe trains on
synthetic latents with a tiny override; benchmarks/throughput.py gives its table on CPU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from diffratio import count_parameters
from diffratio.cli import train
from diffratio.recipe import load_recipe
from diffratio.registry import default_registry

from conftest import RECIPES, ROOT, run_cli, sets

REGISTRY = default_registry()
BENCHMARKS = ROOT / "benchmarks"
SCALE = ["cifar10", "cifar10-pretrain", "imagenet64", "imagenet64-pretrain", "imagenet512", "imagenet512-pretrain"]
#: the data path each recipe names, which the user supplies
DATA = {
    "cifar10": "datasets/cifar10-32x32.zip",
    "imagenet64": "datasets/imagenet-64x64.npz",
    "imagenet512": "datasets/imagenet512-sd-latents",
}
#: what a CPU test sets where a recipe names a strategy this machine may lack (the dry run resolves it as is)
ON_CPU = ["--set", "strategy.name=single"]
#: shrink recipes/imagenet512.toml to a run of seconds on random latents
TINY_512 = [
    "dataset.name=synthetic-latents",
    "dataset.shape=[4, 8, 8]",
    "dataset.num_labels=4",
    "dataset.num_items=16",
    "backbone.depth=2",
    "backbone.hidden=32",
    "backbone.heads=2",
    "run.batch_size=4",
    "run.steps=2",
    "run.log_every=1",
    "run.checkpoint_every=2",
    "run.sample_every=0",
    'method.init=""',
    "method.warmup_ratio_steps=1",
    "run.min_free_disk_gb=0.01",
    "strategy.name=single",
    "loggers.tensorboard=false",
]


def registered(kind: str, name: str) -> bool:
    return name in REGISTRY.names(kind)


def dry_run(recipe: str, *args: str) -> dict[str, Any]:
    res = CliRunner().invoke(train, [str(RECIPES / f"{recipe}.toml"), "--dry-run", *args])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def on_this_machine(recipe: str) -> list[str]:
    """``ON_CPU`` where the recipe's strategy is not registered here, else nothing."""
    return [] if registered("strategy", load_recipe_doc(recipe)["strategy"]["name"]) else ON_CPU


@pytest.fixture
def pretraining_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding ``runs/<base>-pretrain/run.json`` of each scale recipe, as dr-train writes it
    from the pretraining recipe's resolved config: the run a one-step recipe's ``method.init`` names, which
    the preflight compares backbones with (so the one-step recipes must keep their pretraining's network)."""
    for base in DATA:
        config = dry_run(f"{base}-pretrain", *on_this_machine(f"{base}-pretrain"))["config"]
        run = tmp_path / "runs" / f"{base}-pretrain"
        run.mkdir(parents=True)
        (run / "run.json").write_text(json.dumps({"config": config}))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("recipe", SCALE)
def test_dry_run_resolves_and_names_the_data_path(recipe: str, pretraining_runs: Path) -> None:
    text = (RECIPES / f"{recipe}.toml").read_text()
    base = recipe.removesuffix("-pretrain")
    out = dry_run(recipe, *on_this_machine(recipe))
    assert out["config"]["dataset"]["path"] == DATA[base]
    assert "YOU SUPPLY THIS" in text and "docs/scale.md" in text  # the cost estimate is docs/scale.md's table
    assert f"| `recipes/{recipe}.toml` |" in (ROOT / "docs" / "scale.md").read_text()
    assert out["plugins"]["dataset"]["plugin"] == "diffratio_builtins"


def load_recipe_doc(recipe: str) -> dict[str, Any]:
    import tomllib

    return tomllib.loads((RECIPES / f"{recipe}.toml").read_text())


def test_one_step_dry_run_without_its_pretraining_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The preflight of the dry run checks the run ``method.init`` names: it must be there."""
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(train, [str(RECIPES / "cifar10.toml"), "--dry-run", *on_this_machine("cifar10")])
    assert res.exit_code == 2
    assert "recipe.method.init: runs/cifar10-pretrain does not exist" in res.output


def test_imagenet512_dry_run_from_the_command_line(pretraining_runs: Path) -> None:
    """The ImageNet-512 command as a user types it (with the deepspeed strategy when it is registered), after
    its pretraining."""
    extra = [] if registered("strategy", "deepspeed") else ON_CPU
    res = run_cli("dr-train", str(RECIPES / "imagenet512.toml"), "--dry-run", *extra, timeout=120, cwd=pretraining_runs)
    assert res.returncode == 0, res.stderr
    config = json.loads(res.stdout)["config"]
    assert config["dataset"]["name"] == "latents" and config["dataset"]["path"] == DATA["imagenet512"]
    assert config["backbone"]["size"] == "XL" and config["backbone"]["attention"] == "sdpa"
    if not extra:
        assert config["strategy"] == {**config["strategy"], "name": "deepspeed", "zero_stage": 2, "precision": "bf16"}


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (
            None,
            r"datasets/imagenet512-sd-latents \(dataset\.path\) does not exist\. To prepare them from images with "
            r"`python -m diffratio_builtins\.vae encode",
        ),
        ('""', r"dataset\.path is not set: give the latent shards of your data\. To prepare them .*vae encode"),
    ],
    ids=["placeholder", "empty"],
)
def test_imagenet512_without_data_says_how_to_prepare_latents(
    value: str | None, match: str, pretraining_runs: Path
) -> None:
    import re

    args = [
        str(RECIPES / "imagenet512.toml"),
        "--run-dir",
        str(pretraining_runs / "run"),
        *sets("strategy.name=single", "run.min_free_disk_gb=0.01", "loggers.tensorboard=false"),
    ]
    if value is not None:
        args += ["--set", f"dataset.path={value}"]
    res = CliRunner().invoke(train, args)
    assert res.exit_code == 2, res.output
    assert re.search(match, res.output), res.output


def test_imagenet512_trains_on_synthetic_latents_with_a_tiny_override(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        train,
        [str(RECIPES / "imagenet512.toml"), "--run-dir", str(tmp_path / "run"), "--no-progress", *sets(*TINY_512)],
    )
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["config"]["dataset"]["name"] == "synthetic-latents" and info["config"]["dataset"]["shape"] == [4, 8, 8]
    assert (tmp_path / "run" / "checkpoints" / "latest").exists()


@pytest.mark.parametrize(
    ("recipe", "full", "encoder"),
    [
        ("cifar10", 55.7, 22.5),
        ("imagenet64", 270.3, 111.2),
        ("imagenet512", 674.8, 337.5),
    ],
)
def test_network_sizes_match_the_recipe_comments(recipe: str, full: float, encoder: float) -> None:
    """Built on the meta device from the resolved recipe: no memory, no time; the data set is not read."""
    resolved = load_recipe(RECIPES / f"{recipe}.toml", ["strategy.name=single"], registry=REGISTRY)
    backbone = resolved.components["backbone"]
    shape = {"cifar10": (3, 32, 32), "imagenet64": (3, 64, 64), "imagenet512": (4, 64, 64)}[recipe]
    labels = 10 if recipe == "cifar10" else 1000
    with torch.device("meta"):
        nets = [backbone.cls(backbone.config, data_shape=shape, num_labels=labels, mode=m) for m in ("full", "encoder")]
    assert [round(count_parameters(n) / 1e6, 1) for n in nets] == [full, encoder]
    assert (
        f"{full:.1f}M" in (RECIPES / f"{recipe}.toml").read_text()
        or f"{round(full)}M" in (RECIPES / f"{recipe}.toml").read_text()
    )


# --------------------------------------------------------------------------------------------------
# benchmarks/throughput.py
# --------------------------------------------------------------------------------------------------


def throughput_module(name: str = "throughput") -> Any:
    """``benchmarks/NAME.py`` loaded from its file: ``throughput`` (command line and table) or one of the modules
    it imports (``throughput_measure``, ``throughput_flops``, ``throughput_profile``); their sibling imports
    resolve through pytest's ``pythonpath``."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY_BENCH = [a for s in TINY_512 if not s.startswith(("run.", "method.", "loggers.")) for a in ("--set", s)] + [
    "--set",
    "run.batch_size=4",
]


def test_throughput_table_on_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tp = throughput_module()
    out = tmp_path / "table.md"
    code = tp.main(
        [
            str(RECIPES / "imagenet512.toml"),
            "--steps",
            "2",
            "--warmup",
            "1",
            "--no-isolate",
            *TINY_BENCH,
            "--variant",
            "sdpa: backbone.attention=sdpa",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    text = out.read_text()
    assert text in capsys.readouterr().out
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == list(tp.COLUMNS)
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [("sdpa", "diffratio", "4 x 1"), ("sdpa", "vsd", "4 x 1")]
    for r in rows:
        values = dict(zip(header, r, strict=True))
        assert float(values["images/s"].replace(",", "")) > 0 and float(values["step ms"]) > 0
        assert float(values["aux step ms"]) > 0 and float(values["generator step ms"]) > 0
        assert float(values["TFLOP/step"]) > 0
        assert values["peak GiB"] == "n/a" and values["MFU"] == "n/a"  # CPU: no GPU memory, no peak FLOP/s
    assert "ratio" in rows[0][-1] and "teacher" in rows[1][-1]


def test_throughput_row_in_a_child_process_writes_json(tmp_path: Path) -> None:
    """The isolated mode's child (what each row runs as on a GPU), called in-process here to save a start-up."""
    tp = throughput_module()
    out = tmp_path / "row.json"
    row = {"method": "vsd", "sets": [s for s in TINY_BENCH if s != "--set"]}
    assert (
        tp.main(
            [
                str(RECIPES / "imagenet512.toml"),
                "--steps",
                "1",
                "--warmup",
                "0",
                "--row",
                json.dumps(row),
                "--row-out",
                str(out),
            ]
        )
        == 0
    )
    data = json.loads(out.read_text())
    assert data["method"] == "vsd" and data["batch"] == 4 and data["flops_per_step"] > 0
    assert data["strategy"]["name"] == "single"


def test_throughput_counts_flops_after_the_timed_and_profiled_steps(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The FLOP counter's step comes last: under it, torch.compile'd code falls back to eager for the rest of
    the process (checked below with a counting backend), so a count before the timed steps would time
    compiled rows as eager ones."""
    from torch.utils.flop_counter import FlopCounterMode

    calls = 0

    def counting_backend(gm: torch.fx.GraphModule, _: Any) -> Any:
        def run(*args: Any) -> Any:
            nonlocal calls
            calls += 1
            return gm.forward(*args)

        return run

    class Net(torch.nn.Module):  # user code: dynamo does not trace torch.nn's own modules
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.silu(self.lin(x))

    net = Net()
    net.compile(backend=counting_backend)
    x = torch.randn(2, 3)
    net(x)
    with FlopCounterMode(display=False):
        net(x)
    before = calls
    net(x)
    assert before == 1 and calls == before, (
        "torch now keeps compiled code after a FLOP count: see throughput_measure.py"
    )

    tp = throughput_module("throughput_measure")
    steps_before_count: list[int] = []
    real_count = tp.count_flops

    def spy(step: Any, method: Any) -> float | None:
        steps_before_count.append(method.steps_done)
        return real_count(step, method)

    monkeypatch.setattr(tp, "count_flops", spy)
    steps_before_peak: list[int] = []
    real_peak = tp.peak_memory_gib
    method_of_run: list[Any] = []

    def peak_spy(device: torch.device) -> float | None:
        steps_before_peak.append(method_of_run[0].steps_done)
        return real_peak(device)

    monkeypatch.setattr(tp, "peak_memory_gib", peak_spy)
    sets_ = [s for s in TINY_BENCH if s != "--set"]
    original = tp.build_run

    def build_counting(*args: Any, **kwargs: Any) -> Any:
        run = original(*args, **kwargs)
        run.method.steps_done = 0
        step = run.method.train_step

        def counted(i: int) -> Any:
            run.method.steps_done += 1
            return step(i)

        run.method.train_step = counted
        method_of_run.append(run.method)
        return run

    monkeypatch.setattr(tp, "build_run", build_counting)
    row = tp.measure(
        str(RECIPES / "imagenet512.toml"),
        sets_,
        "diffratio",
        steps=2,
        warmup=1,
        peak_override=None,
        profile_out=tmp_path / "profile.md",
        profile_n=1,
    )
    # 1 warm-up + 2 timed + 1 profiled step before the count; the peak memory is of the timed steps: read
    # after them, before the profiled step and the count's eager step
    assert steps_before_count == [4] and row["flops_per_step"] > 0 and (tmp_path / "profile.md").exists()
    assert steps_before_peak == [3]


def test_throughput_mfu_counts_model_flops_without_the_recomputation() -> None:
    """With ``backbone.activation_checkpointing`` the step recomputes every block in its backward pass; the FLOP
    count (MFU's numerator) is the model's, as without checkpointing; the setting is back on after the count."""
    tp = throughput_module("throughput_measure")
    sets_ = [s for s in TINY_BENCH if s != "--set"]
    rows = [
        tp.measure(
            str(RECIPES / "imagenet512.toml"),
            [*sets_, f"backbone.activation_checkpointing={flag}"],
            "diffratio",
            steps=1,
            warmup=1,
            peak_override=None,
        )
        for flag in ("false", "true")
    ]
    assert rows[0]["flops_per_step"] > 0 and rows[1]["flops_per_step"] == rows[0]["flops_per_step"]
    from diffratio_builtins.backbones import dit

    net = dit.DiTBackbone(
        dit.DiTBackbone.Config(depth=2, hidden=32, heads=2, activation_checkpointing=True), data_shape=(4, 8, 8)
    )
    holder = SimpleNamespace(net=torch.nn.Sequential(net))
    with throughput_module("throughput_flops").without_recompute(holder):
        assert not net.checkpoint_blocks
    assert net.checkpoint_blocks


def test_throughput_maps_the_method_table() -> None:
    tp = throughput_module("throughput_measure")
    source = {
        "name": "diffratio",
        "init": "runs/x",
        "ratio_steps": 2,
        "warmup_ratio_steps": 500,
        "ema_decay": 0.99,
        "generator_optimizer": {"lr": 1e-5},
        "ratio_optimizer": {"lr": 2e-5},
    }
    assert tp.method_table(source, "vsd") == {
        "name": "vsd",
        "init": "untrained-teacher.pt",
        "generator_optimizer": {"lr": 1e-5},
        "ema_decay": 0.99,
        "fake_optimizer": {"lr": 2e-5},
        "fake_steps": 2,
        "warmup_fake_steps": 0,
    }
    assert tp.method_table(source, "diffratio")["warmup_ratio_steps"] == 0
    assert throughput_module().parse_variant("zero3: strategy.zero_stage=3 run.batch_size=16") == (
        "zero3",
        ["strategy.zero_stage=3", "run.batch_size=16"],
    )


def test_throughput_profile_breakdown() -> None:
    """Kernels are put in categories by name; shares are of the wall time and the idle rest is reported."""
    tp = throughput_module("throughput_profile")
    assert tp.kernel_category("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n") == "matrix products"
    assert tp.kernel_category("nvjet_hsh_256x128_64x4_1x2_h_bz_coopA_NTT") == "matrix products"
    assert tp.kernel_category("pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits>") == "attention"
    assert tp.kernel_category("void at::native::(anonymous)::vectorized_layer_norm_kernel") == "normalisation"
    assert tp.kernel_category("multi_tensor_apply_kernel<TensorListMetadata<4>, FusedAdamMathFunctor>") == "optimiser"
    assert tp.kernel_category("ncclDevKernel_ReduceScatter_Sum_bf16_RING_LL") == "communication"
    assert tp.kernel_category("void at::native::vectorized_elementwise_kernel<4, GeluCUDAKernelImpl>") == (
        "other element-wise"
    )
    text = tp.kernel_breakdown([("gemm_a", 600.0, 10), ("gemm_b", 200.0, 5), ("gelu_kernel", 100.0, 3)], 1000.0)
    rows = {ln.split("|")[1].strip(): ln for ln in text.splitlines() if ln.startswith("| ")}
    assert "| 0.8 | 80.0% | 15 |" in rows["matrix products"]
    assert "| 0.1 | 10.0% | 3 |" in rows["other element-wise"]
    assert "| 0.1 | 10.0% |" in rows["(GPU idle: no kernel running)"]
    assert text.index("gemm_a") < text.index("gemm_b") < text.index("gelu_kernel")  # top kernels by time
    # GPU-side annotations (ranges over kernels already listed) and CPU ops are not kernels
    ev = [
        SimpleNamespace(
            key="gemm_a", device_type="cuda", self_device_time_total=5.0, count=2, is_user_annotation=False
        ),
        SimpleNamespace(
            key="Optimizer.step#Adam.step",
            device_type="cuda",
            self_device_time_total=9.0,
            count=1,
            is_user_annotation=True,
        ),
        SimpleNamespace(
            key="aten::mm", device_type="cpu", self_device_time_total=0.0, count=2, is_user_annotation=False
        ),
    ]
    assert tp.kernels_of(ev, "cuda") == [("gemm_a", 5.0, 2)]


def test_throughput_profile_traces_kernels_to_the_ops_that_launched_them() -> None:
    """Launch chains: the launching op, then its callers (autograd nodes without their prefix), innermost
    first; only kernels of the asked category count, summed per chain, the chain with most time first."""
    tp = throughput_module("throughput_profile")

    def op(name: str, parent: object = None, kernels: tuple[tuple[str, float], ...] = ()) -> SimpleNamespace:
        return SimpleNamespace(
            name=name, cpu_parent=parent, kernels=[SimpleNamespace(name=k, duration=t) for k, t in kernels]
        )

    node = op("autograd::engine::evaluate_function: PermuteBackward0")
    contiguous = op("aten::contiguous", op("aten::reshape", op("DiTBlock._attend")))
    copy_kernel = "void at::native::elementwise_kernel<128, 4, at::native::direct_copy_kernel_cuda>"
    events = [
        node,
        contiguous,
        op("aten::copy_", op("aten::clone", node), ((copy_kernel, 40.0),)),
        op("aten::copy_", op("aten::clone", contiguous), ((copy_kernel, 10.0), (copy_kernel, 5.0))),
        op("aten::copy_", op("aten::clone", node), ((copy_kernel, 20.0),)),
        op("aten::add", node, (("vectorized_elementwise_kernel<AddFunctor>", 7.0),)),
        op("aten::mm", None, (("nvjet_sm90_gemm", 99.0),)),
    ]
    chains = tp.launch_chains(events, "copies and casts")
    assert chains == [
        ("aten::copy_ < aten::clone < PermuteBackward0", 60.0, 2),
        ("aten::copy_ < aten::clone < aten::contiguous < aten::reshape", 15.0, 2),
    ]
    assert tp.launch_chains(events, "other element-wise") == [("aten::add < PermuteBackward0", 7.0, 1)]
    text = tp.kernel_breakdown(
        [(copy_kernel, 75.0, 4)], 100.0, sources={"copies and casts": chains, "other element-wise": []}
    )
    assert "Copies and casts: kernels by the operations that launched them" in text
    assert "| `aten::copy_ < aten::clone < PermuteBackward0` | 0.1 | 2 |" in text
    assert "Other element-wise:" not in text  # an empty category prints nothing


def test_throughput_profile_option_writes_a_file_per_row(tmp_path: Path) -> None:
    """--profile runs the profiler after the timed steps (no CUDA kernels on CPU: all wall time reads idle)."""
    tp = throughput_module()
    code = tp.main(
        [
            str(RECIPES / "imagenet512.toml"),
            "--steps",
            "1",
            "--warmup",
            "0",
            "--no-isolate",
            *TINY_BENCH,
            "--methods",
            "diffratio",
            "--variant",
            "b 4: run.batch_size=4",
            "--profile",
            str(tmp_path),
            "--profile-steps",
            "1",
        ]
    )
    assert code == 0
    text = (tmp_path / "b_4-diffratio.md").read_text()
    assert "Profile of 1 steps of `diffratio`" in text and "(GPU idle: no kernel running)" in text
