"""The distributed strategies: ``ddp`` with 2 gloo processes under torchrun, and ``deepspeed``
ZeRO 1/2/3 in one process. Runs resume from their own checkpoints bit for bit; a SIGTERM that reaches one
rank stops every rank at the same step with a checkpoint; ranks agree on skipping non-finite steps.

Each test launches real ``dr-train`` processes on the tiny 2-D recipe (one torch thread each); the
uninterrupted reference of a strategy keeps every checkpoint, and resuming a copy of its run directory
from an earlier one stands for a run killed there (no extra launch for a second interrupted run).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import attrs
import pytest
import torch

from diffratio import MissingDependencyError, RecipeError
from diffratio.checkpoint import find_latest, list_checkpoints, load_state
from diffratio.recipe import load_recipe
from diffratio.registry import default_registry

from conftest import RECIPES, TINY, assert_same, sets

pytestmark = [pytest.mark.distributed,  # DeepSpeed's calls of deprecated torch functions:
              pytest.mark.filterwarnings("ignore:`torch.distributed.*is deprecated:FutureWarning"),
              pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")]

#: 80 steps, a checkpoint every 10, all of them kept
COMMON = [*TINY, "run.steps=80", "run.log_every=10", "run.keep_checkpoints=0", "strategy.threads=1",
          "loggers.tensorboard=false"]
DDP = [str(RECIPES / "toy2d.toml"), "--no-progress", *sets(*COMMON, "strategy.name=ddp")]
ENV = {**os.environ, "PYTHONWARNINGS": "default", "OMP_NUM_THREADS": "1"}


def torchrun(*args: str) -> list[str]:
    """The command line of ``dr-train ARGS`` in 2 processes on this machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "diffratio", "train", *args]


def final(run_dir: Path, step: int) -> dict:
    """What must match bit for bit: method state (models, EMA, Adam), every rank's data and RNG state."""
    latest = find_latest(run_dir / "checkpoints")
    assert latest is not None and latest.name == f"{step:09d}"
    state = load_state(latest)
    return {k: state[k] for k in ("method", "data", "rng", "nonfinite", "world_size", "ranks") if k in state}


def drop_checkpoints_after(run_dir: Path, step: int) -> None:
    """Make a finished run directory look like a run killed after the checkpoint of ``step``."""
    for ck in list_checkpoints(run_dir / "checkpoints"):
        if int(ck.name) > step:
            shutil.rmtree(ck)


# --------------------------------------------------------------------------------------------------
# ddp: 2 processes, gloo
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("ddp") / "run"
    res = subprocess.run(torchrun(*DDP, "--run-dir", str(run_dir)), capture_output=True, text=True, env=ENV,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 x cpu" in res.stdout and res.stdout.count("finished 80 steps") == 1  # printed by rank 0 only
    state = final(run_dir, 80)
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    assert not torch.equal(state["ranks"][0]["data"]["rng"], state["ranks"][1]["data"]["rng"])  # own batches
    return run_dir


def test_ddp_resumes_bit_exact_from_its_own_checkpoint(ddp_reference: Path, tmp_path: Path) -> None:
    run_dir = Path(shutil.copytree(ddp_reference, tmp_path / "run"))
    drop_checkpoints_after(run_dir, 30)
    res = subprocess.run(torchrun(*DDP, "--run-dir", str(run_dir)), capture_output=True, text=True, env=ENV,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("resuming from step 30") == 1
    assert_same(final(run_dir, 80), final(ddp_reference, 80))


def test_ddp_checkpoint_resumes_with_another_number_of_processes(ddp_reference: Path, tmp_path: Path) -> None:
    """The 2-process checkpoint, continued by one ddp process (in this process, no launcher): rank 0 keeps
    its data and noise streams; the run says what changed."""
    run_dir = Path(shutil.copytree(ddp_reference, tmp_path / "run"))
    out = train_in_process(run_dir, "strategy.name=ddp", "run.steps=90")
    assert "resuming from step 80" in out and "a checkpoint of 2 processes with 1" in out
    state = final(run_dir, 90)
    assert state["world_size"] == 1 and "ranks" not in state


def _worker_pids(launcher: int) -> dict[int, int]:
    """Rank -> process id of the workers that torchrun (process ``launcher``) started."""
    out: dict[int, int] = {}
    for task in Path(f"/proc/{launcher}/task").iterdir():
        for pid in (task / "children").read_text().split():
            env = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
            if "RANK" in env:
                out[int(env["RANK"])] = int(pid)
    return out


def start_until_checkpoint(cmd: list[str], run_dir: Path, timeout: float) -> subprocess.Popen:
    """Start a training command and return once it has written its first checkpoint (still running)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    deadline = time.time() + timeout
    while not (run_dir / "checkpoints" / "latest").exists():
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.time() < deadline
        time.sleep(0.02)
    return proc


def test_ddp_sigterm_to_one_rank_stops_every_rank_at_one_step(ddp_reference: Path, tmp_path: Path) -> None:
    """Only rank 1 is signalled; both ranks stop after the same step, rank 0 writes its checkpoint, both
    exit with 128 + 15; the same command resumes and ends with the parameters of an uninterrupted run."""
    proc = start_until_checkpoint(torchrun(*DDP, "--run-dir", str(tmp_path)), tmp_path, 180)
    workers = _worker_pids(proc.pid)
    assert set(workers) == {0, 1}, workers
    os.kill(workers[1], signal.SIGTERM)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode != 0, out
    stops = [line for line in out.splitlines() if "stopped by SIGTERM at step" in line]
    assert len(stops) == 2 and stops[0] == stops[1], out  # the same step on both ranks
    assert "exitcode  : 143" in out, out  # torchrun's summary of each failed worker
    assert "diffratio/engine.py" not in out, out  # the workers' own message, no traceback of theirs
    step = int(stops[0].split("at step ")[1].split(";")[0])
    assert 10 <= step < 80, out
    assert find_latest(tmp_path / "checkpoints").name == f"{step:09d}"

    res = subprocess.run(torchrun(*DDP, "--run-dir", str(tmp_path)), capture_output=True, text=True, env=ENV,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count(f"resuming from step {step}") == 1
    assert_same(final(tmp_path, 80), final(ddp_reference, 80))


# --------------------------------------------------------------------------------------------------
# Agreement between ranks (torch.multiprocessing, 2 gloo processes, no training run)
# --------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _agreement_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from diffratio import OptimizerConfig
    from diffratio.engine import NonFiniteGuard
    from diffratio_builtins.strategies.ddp import DDP

    strategy = DDP(DDP.Config(device="cpu"))
    result: dict = {"flags": strategy.max_over_ranks([rank == 1, 0, 15 if rank == 1 else 0])}
    guard = NonFiniteGuard(limit=2)
    scalars = {"loss": torch.tensor(float("nan") if rank == 1 else 1.0)}
    bad = strategy.max_over_ranks([not guard.finite(scalars)])[0]
    result["diverged"] = [guard.record(1, scalars, finite=not bad), guard.record(2, scalars, finite=not bad)]
    result["first_bad"] = guard.first_bad
    result["gathered"] = strategy.gather_object(rank * 10)
    result["broadcast"] = strategy.broadcast_object(f"from {rank}")

    torch.manual_seed(0)
    t = strategy.prepare("net", torch.nn.Linear(3, 2), OptimizerConfig(lr=0.1))
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(rank))
    before = [p.detach().clone() for p in t.model.parameters()]
    loss = t.forward(x).pow(2).mean()
    if rank == 1:  # not finite here only, with finite gradients: both ranks must skip the update
        loss = loss + torch.tensor(float("inf"))
    t.backward(loss)
    t.step()
    result["skipped"] = (not bool(t.last_step_ok),
                         all(torch.equal(a, b) for a, b in zip(before, t.model.parameters(), strict=True)))
    t.backward(t.forward(x).pow(2).mean())
    t.step()
    result["trained"] = bool(t.last_step_ok)
    result["params"] = [p.detach().clone() for p in t.model.parameters()]
    strategy.close()
    torch.save(result, Path(out) / f"rank{rank}.pt")


def test_ranks_agree_on_flags_nonfinite_steps_and_updates(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    # spawn, not fork: a forked worker inherits the state of this process's threads (and any process group
    # it holds); one forked worker was seen to hang at exit after writing its result
    mp.start_processes(_agreement_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for r in (r0, r1):
        assert r["flags"] == [1.0, 0.0, 15.0]  # a stop request (signal 15) of rank 1 reaches rank 0
        assert r["diverged"] == [False, True]  # both count the step rank 1 found non-finite, and stop together
        assert r["skipped"] == (True, True) and r["trained"]
        assert r["broadcast"] == "from 0"
    assert r0["first_bad"] == "a scalar of another rank at step 1" and r1["first_bad"] == "loss = nan at step 1"
    assert r0["gathered"] == [0, 10] and r1["gathered"] is None
    assert_same(r0["params"], r1["params"])  # the replicas stayed identical


# --------------------------------------------------------------------------------------------------
# deepspeed: ZeRO 1, 2 and 3 in one process
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deepspeed_installed() -> None:
    pytest.importorskip("deepspeed", reason="pip install 'diffratio[deepspeed]'")


def train_in_process(run_dir: Path, *extra: str) -> str:
    """``dr-train`` of the tiny recipe in this process (DeepSpeed imports once); returns what it printed.
    The runs share one one-process group (DeepSpeed keeps it for the life of the process)."""
    import contextlib
    import io

    from diffratio.engine import training_loop

    registry = default_registry()
    recipe = load_recipe(RECIPES / "toy2d.toml", [*COMMON, *extra], registry=registry)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        training_loop(recipe, run_dir, registry, progress=False)
    return out.getvalue()


#: learning-rate decays of both models, both under way at the resume step (10 of 20)
DECAY = ("method.generator_optimizer.lr_decay='cosine'", "method.generator_optimizer.lr_decay_start=0.25",
         "method.ratio_optimizer.lr_decay='linear'", "method.ratio_optimizer.lr_final=0.1")


@pytest.mark.parametrize(("stage", "decay"), [(1, ()), (2, ()), (3, ()), (2, DECAY)], ids=["1", "2", "3", "2-decay"])
def test_deepspeed_resumes_bit_exact_from_its_own_checkpoint(deepspeed_installed: None, stage: int,
                                                             decay: tuple[str, ...], tmp_path: Path) -> None:
    """One process: one engine per model, each with its own Adam; DeepSpeed's own checkpoint files inside
    the atomic checkpoint folder; the generator EMA a full copy (gathered under ZeRO-3). With ``decay``,
    the learning rates (set in each engine's optimiser before its step) resume bit for bit too."""
    extra = ("run.steps=20", "strategy.name=deepspeed", f"strategy.zero_stage={stage}", *decay)
    reference = tmp_path / "reference"
    train_in_process(reference, *extra)
    ck = find_latest(reference / "checkpoints")
    for model in ("generator", "ratio"):  # DeepSpeed's own files, inside the checksummed checkpoint folder
        assert list((ck / model / "ds").glob("*optim_states.pt")), sorted(p.name for p in ck.rglob("*"))
    assert any(name.startswith("generator/ds/") for name in json.loads((ck / "meta.json").read_text())["files"])
    state = load_state(ck)["method"]
    gen, ema = state["generator"]["model"], state["generator_ema"]
    assert gen.keys() == ema.keys() and all(gen[k].shape == ema[k].shape and gen[k].numel() > 0 for k in gen)
    assert not all(torch.equal(gen[k], ema[k]) for k in gen)  # a real average, also under ZeRO-3

    resumed = Path(shutil.copytree(reference, tmp_path / "resumed"))
    drop_checkpoints_after(resumed, 10)
    assert "resuming from step 10" in train_in_process(resumed, *extra)
    assert_same(final(resumed, 20), final(reference, 20))

    shard = next((ck / "generator" / "ds").glob("*optim_states.pt"))  # a damaged DeepSpeed file is noticed
    shard.write_bytes(shard.read_bytes()[:-1] + b"x")
    with pytest.warns(UserWarning, match=r"optim_states\.pt is corrupted"):
        assert find_latest(reference / "checkpoints").name == "000000010"


# deepspeed with precision = "bf16-weights": DeepSpeed's bf16 mode (it runs on CPU too)

BF16W = ("strategy.name=deepspeed", "strategy.precision='bf16-weights'")


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_bf16_weights_trains_and_resumes_bit_exact(deepspeed_installed: None, stage: int,
                                                            tmp_path: Path) -> None:
    """The engines hold bf16 weights (DeepSpeed's own files), ``state.pt`` the consolidated weights and
    the generator EMA in fp32; a run resumed from its checkpoint ends bit for bit like the uninterrupted
    one (one CPU process: the bf16 kernels and DeepSpeed's fp32 master weights repeat exactly)."""
    extra = ("run.steps=20", f"strategy.zero_stage={stage}", *BF16W)
    reference = tmp_path / "reference"
    assert "finished 20 steps" in train_in_process(reference, *extra)
    ck = find_latest(reference / "checkpoints")
    for model in ("generator", "ratio"):
        module = torch.load(next((ck / model / "ds").glob("*model_states.pt")), map_location="cpu",
                            weights_only=False)["module"]
        assert module and {v.dtype for v in module.values()} == {torch.bfloat16}, model
    state = load_state(ck)["method"]
    for weights in (state["generator"]["model"], state["ratio"]["model"], state["generator_ema"]):
        assert {v.dtype for v in weights.values()} == {torch.float32}
    gen, ema = state["generator"]["model"], state["generator_ema"]
    assert gen.keys() == ema.keys() and not all(torch.equal(gen[k], ema[k]) for k in gen)
    # the consolidated weights are the engine's bf16 weights, widened
    assert all(torch.equal(v, v.bfloat16().float()) for v in gen.values())

    resumed = Path(shutil.copytree(reference, tmp_path / "resumed"))
    drop_checkpoints_after(resumed, 10)
    assert "resuming from step 10" in train_in_process(resumed, *extra)
    assert_same(final(resumed, 20), final(reference, 20))


def test_deepspeed_bf16_weights_engine_has_fp32_master_weights_and_fp32_interface(deepspeed_installed: None) -> None:
    """``prepare`` under ``bf16-weights``: bf16 weights in the module, fp32 parameters in the optimiser
    (DeepSpeed's master copy); fp32 inputs in, fp32 outputs and input gradients out; names unchanged."""
    from diffratio import OptimizerConfig
    from diffratio_builtins.strategies.deepspeed import DeepSpeed

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.SiLU(), torch.nn.Linear(8, 2))
    names = list(net.state_dict())
    strategy = DeepSpeed(DeepSpeed.Config(device="cpu", zero_stage=2, precision="bf16-weights"))
    try:
        t = strategy.prepare("net", net, OptimizerConfig(lr=0.1))
        assert {p.dtype for p in t.model.parameters()} == {torch.bfloat16}
        assert {p.dtype for g in t.engine.optimizer.param_groups for p in g["params"]} == {torch.float32}
        x = torch.randn(4, 3, requires_grad=True)
        y = t.forward(x)
        assert y.dtype == torch.float32 and t.infer(x).dtype == torch.float32
        t.backward(y.pow(2).mean())
        assert x.grad is not None and x.grad.dtype == torch.float32
        before = [p.detach().clone() for p in t.model.parameters()]
        t.step()
        assert t.last_step_ok and not all(torch.equal(a, b) for a, b in zip(before, t.model.parameters(), strict=True))
        model = t.state_dict()["model"]
        assert list(model) == names and {v.dtype for v in model.values()} == {torch.float32}
    finally:
        strategy.close()


@pytest.mark.parametrize("precision", ["bf16", "bf16-weights"])
def test_deepspeed_prepare_frozen_matches_the_engines_precision(deepspeed_installed: None, precision: str) -> None:
    """A frozen network (VSD's teacher) under ``bf16-weights`` is held in bf16 like the engines' models, with
    the same fp32 interface; under autocast (``bf16``) it keeps fp32 weights. No gradients to its weights,
    but to its inputs."""
    from diffratio_builtins.strategies.deepspeed import DeepSpeed

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.SiLU(), torch.nn.Linear(8, 2))
    x = torch.randn(4, 3, requires_grad=True)
    ref = net(x).detach()
    strategy = DeepSpeed(DeepSpeed.Config(device="cpu", zero_stage=2, precision=precision))
    try:
        frozen = strategy.prepare_frozen(net)
        want = torch.bfloat16 if precision == "bf16-weights" else torch.float32
        assert {p.dtype for p in frozen.parameters()} == {want}
        assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
        y = frozen(x)
        assert y.dtype == torch.float32
        torch.testing.assert_close(y, ref, atol=0.05, rtol=0.05)
        y.sum().backward()
        assert x.grad is not None and x.grad.dtype == torch.float32
    finally:
        strategy.close()


def test_bf16_weights_engine_config() -> None:
    """``bf16-weights`` turns on DeepSpeed's bf16 mode without torch autocast; ``bf16`` is autocast only."""
    from diffratio import OptimizerConfig
    from diffratio_builtins.strategies.deepspeed import engine_config

    optim = OptimizerConfig(lr=1e-3)
    cfg = engine_config(optim, 2, "bf16-weights")
    assert cfg["bf16"] == {"enabled": True} and "torch_autocast" not in cfg
    cfg = engine_config(optim, 2, "bf16")
    assert cfg["torch_autocast"]["enabled"] and "bf16" not in cfg
    cfg = engine_config(optim, 3, "fp32")
    assert "bf16" not in cfg and "torch_autocast" not in cfg


def test_engine_config_table_merges_into_every_engine(deepspeed_installed: None) -> None:
    """``strategy.engine_config`` (a recipe table, also through ``--set``) merges into the config the strategy
    builds, table by table: here DeepSpeed's own overflow check of ``bf16-weights`` is turned off."""
    from diffratio import OptimizerConfig
    from diffratio_builtins.strategies.deepspeed import DeepSpeed, engine_config, merge_config

    base = engine_config(OptimizerConfig(lr=1e-3), 2, "bf16-weights")
    merged = merge_config(base, {"bf16": {"check_grad_overflow": False}, "gradient_clipping": 0.5})
    assert merged["bf16"] == {"enabled": True, "check_grad_overflow": False} and merged["gradient_clipping"] == 0.5
    assert base["bf16"] == {"enabled": True}  # the inputs are left as they were
    resolved = load_recipe(RECIPES / "toy2d.toml", [*BF16W, "strategy.engine_config.bf16.check_grad_overflow=false"],
                           registry=default_registry())
    config = resolved.components["strategy"].config
    assert config.engine_config == {"bf16": {"check_grad_overflow": False}}
    for cfg, checked in ((attrs.evolve(config, device="cpu"), False),
                         (DeepSpeed.Config(device="cpu", zero_stage=2, precision="bf16-weights"), True)):
        strategy = DeepSpeed(cfg)
        try:
            t = strategy.prepare("net", torch.nn.Linear(2, 2), OptimizerConfig(lr=0.1))
            assert t.engine.optimizer.check_grad_overflow is checked  # DeepSpeed read the merged table
            # what the docs warn of: without the check, bf16 weights take a non-finite step instead of skipping it
            t.backward(t.forward(torch.ones(1, 2)).sum() * math.nan)
            t.step()
            assert bool(t.last_step_ok) is not checked
            assert all(torch.isfinite(p).all() for p in t.model.parameters()) is checked
        finally:
            strategy.close()


class _Probe(torch.nn.Module):
    """A layer with an fp32 buffer and nested outputs; records the dtypes its forward pass sees."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 3)
        self.register_buffer("freqs", torch.ones(3))
        self.seen: dict[str, torch.dtype] = {}

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None = None) -> tuple:
        self.seen = {"x": x.dtype, "sigma": sigma.dtype, "labels": labels.dtype}
        h = self.lin(x * self.freqs)  # fp32 buffer times bf16 input: fp32, cast again by lin's own hook
        return h, [h.sum(1)], {"h": h, "labels": labels}


def test_bf16_weights_hooks_cast_inputs_to_the_weights_and_outputs_to_fp32() -> None:
    from diffratio_builtins.methods.common import make_ema
    from diffratio_builtins.strategies.deepspeed import cast_inputs_to_weights, hold_bf16_weights, outputs_to_fp32

    net = _Probe()
    names = list(net.state_dict())
    for p in net.parameters():  # what DeepSpeed's bf16 mode does: parameters only, buffers stay fp32
        p.data = p.data.bfloat16()
    hold_bf16_weights(net)
    assert list(net.state_dict()) == names
    x = torch.randn(2, 3, requires_grad=True)
    labels = torch.tensor([1, 2])
    h, (s,), d = net(x, torch.rand(2), labels=labels)
    assert net.seen == {"x": torch.bfloat16, "sigma": torch.bfloat16, "labels": torch.int64}
    assert h.dtype == s.dtype == d["h"].dtype == torch.float32 and d["labels"] is labels
    h.sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32

    args, kwargs = cast_inputs_to_weights(net, (x, (x, [x])), {"y": {"z": x}, "n": labels, "k": 3})
    assert args[0].dtype == args[1][0].dtype == args[1][1][0].dtype == kwargs["y"]["z"].dtype == torch.bfloat16
    assert kwargs["n"] is labels and kwargs["k"] == 3 and isinstance(args[1][1], list)
    assert outputs_to_fp32(net, (), x.bfloat16()).dtype == torch.float32
    assert cast_inputs_to_weights(torch.nn.SiLU(), (x,), {}) is None  # no weights: nothing to follow

    ema = make_ema(net)  # a copy carries the hooks; in fp32 they change nothing
    assert {p.dtype for p in ema.parameters()} == {torch.float32}
    out, _, _ = ema(x.detach(), torch.rand(2), labels=labels)
    assert ema.seen["x"] == torch.float32 and out.dtype == torch.float32


def test_update_ema_lerps_a_bf16_source_into_an_fp32_ema() -> None:
    from diffratio_builtins.methods.common import update_ema

    torch.manual_seed(0)
    ema, src = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3).to(torch.bfloat16)
    want = [torch.lerp(e.detach().clone(), s.detach().float(), 0.1) for e, s in zip(ema.parameters(), src.parameters(),
                                                                                  strict=True)]
    update_ema(ema, src, decay=0.9, step=10**6, warmup="none")
    assert [p.dtype for p in ema.parameters()] == [torch.float32] * 2
    assert_same([p.detach() for p in ema.parameters()], want)


def test_deepspeed_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from diffratio_builtins.strategies.deepspeed import DeepSpeed

    monkeypatch.setitem(sys.modules, "deepspeed", None)  # what an environment without it answers
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    with pytest.raises(MissingDependencyError, match=r"pip install 'diffratio\[deepspeed\]'"):
        DeepSpeed(DeepSpeed.Config(device="cpu"))


# --------------------------------------------------------------------------------------------------
# recipe errors
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sets_", "message"), [
    (["strategy.name=deepspeed", "strategy.zero_stage=4"], "recipe.strategy.zero_stage: must be one of 1, 2, 3, got 4"),
    (["strategy.name=deepspeed", "strategy.precision='fp16'"],
     "recipe.strategy.precision: must be one of 'fp32', 'bf16', 'bf16-weights', got 'fp16'"),
    (["strategy.name=ddp", "strategy.backend='mpi'"],
     "recipe.strategy.backend: must be one of 'auto', 'nccl', 'gloo', got 'mpi'"),
    (["strategy.name=ddp", "strategy.timeout_minutes=0"], "recipe.strategy.timeout_minutes: must be > 0, got 0"),
    (["strategy.name=deepspeed", "strategy.stage=3"],
     "recipe.strategy.stage: unknown key (known keys: channels_last, tf32, threads, compile, compile_scope, device, "
     "backend, timeout_minutes, precision, zero_stage, engine_config)"),
    (["strategy.name=ddp", "strategy.device='cuda:1'"],
     "recipe.strategy.device: must be one of 'auto', 'cpu', 'cuda', got 'cuda:1'"),
])
def test_bad_strategy_options_name_their_dotted_path(sets_: list[str], message: str) -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe(RECIPES / "toy2d.toml", sets_, registry=default_registry())
    assert any(e.startswith(message) for e in err.value.errors), err.value.errors


# --------------------------------------------------------------------------------------------------
# On 2 GPUs (NCCL), marked gpu: python -m pytest -m gpu tests/test_strategies_dist.py on the accelerator machine
# --------------------------------------------------------------------------------------------------

GPU_CASES = {
    "ddp": ["strategy.name=ddp", "strategy.device='cuda'"],
    "ddp-bf16": ["strategy.name=ddp", "strategy.device='cuda'", "strategy.precision='bf16'"],
    "deepspeed-zero2-bf16": ["strategy.name=deepspeed", "strategy.device='cuda'", "strategy.zero_stage=2",
                             "strategy.precision='bf16'"],
    "deepspeed-zero2-bf16-weights": ["strategy.name=deepspeed", "strategy.device='cuda'", "strategy.zero_stage=2",
                                     "strategy.precision='bf16-weights'"],
    "deepspeed-zero3": ["strategy.name=deepspeed", "strategy.device='cuda'", "strategy.zero_stage=3"],
    "deepspeed-zero2-compile": ["strategy.name=deepspeed", "strategy.device='cuda'", "strategy.zero_stage=2",
                                "strategy.compile=true"],
    "deepspeed-zero2-bf16-weights-compile-blocks": ["strategy.name=deepspeed", "strategy.device='cuda'",
                                                    "strategy.zero_stage=2", "strategy.precision='bf16-weights'",
                                                    "strategy.compile=true", "strategy.compile_scope='blocks'"],
}
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")


def gpu_args(case: str) -> list[str]:
    return [str(RECIPES / "toy2d.toml"), "--no-progress", *sets(*COMMON, *GPU_CASES[case])]


def assert_near(a: object, b: object, path: str = "") -> None:
    """Like ``assert_same``, but GPU kernels need not repeat bit for bit: tensors within float32 rounding."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_near(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_near(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor) and a.is_floating_point():
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=lambda m: f"{path}: {m}")


@pytest.mark.gpu
@two_gpus
@pytest.mark.parametrize("case", sorted(GPU_CASES))
def test_two_gpus_train_resume_and_stop_on_sigterm(case: str, tmp_path: Path) -> None:
    """NCCL on 2 GPUs: an uninterrupted run; a copy resumed from step 30; a run stopped by SIGTERM to
    torchrun (as a scheduler sends it) and resumed. Prints whether the resumed runs are bit-exact."""
    if case.startswith("deepspeed"):
        pytest.importorskip("deepspeed", reason="pip install 'diffratio[deepspeed]'")
    reference = tmp_path / "reference"
    res = subprocess.run(torchrun(*gpu_args(case), "--run-dir", str(reference)), capture_output=True, text=True,
                         env=ENV, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 x cuda:0" in res.stdout

    resumed = Path(shutil.copytree(reference, tmp_path / "resumed"))
    drop_checkpoints_after(resumed, 30)
    res = subprocess.run(torchrun(*gpu_args(case), "--run-dir", str(resumed)), capture_output=True, text=True,
                         env=ENV, timeout=600)
    assert res.returncode == 0 and "resuming from step 30" in res.stdout, res.stdout + res.stderr

    stopped = tmp_path / "stopped"
    proc = start_until_checkpoint(torchrun(*gpu_args(case), "--run-dir", str(stopped)), stopped, 600)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=600)
    stops = [line for line in out.splitlines() if "stopped by SIGTERM at step" in line]
    assert len(stops) == 2 and stops[0] == stops[1], out
    res = subprocess.run(torchrun(*gpu_args(case), "--run-dir", str(stopped)), capture_output=True, text=True,
                         env=ENV, timeout=600)
    assert res.returncode == 0 and "resuming from step" in res.stdout, res.stdout + res.stderr

    want = final(reference, 80)
    for run_dir in (resumed, stopped):
        got = final(run_dir, 80)
        try:
            assert_same(got, want)
            print(f"{case}: {run_dir.name} run bit-exact")
        except AssertionError:
            print(f"{case}: {run_dir.name} run not bit-exact")
            assert_near(got, want)


def test_bf16_weights_dit_residual_stream_is_bf16() -> None:
    """DiT adds its fixed position embedding (an fp32 buffer: DeepSpeed casts parameters only) in its weights'
    dtype, so that with bf16 weights every block works in bf16 (the speed ``bf16-weights`` is for), while
    fp32 weights (also under autocast) keep the fp32 stream as before."""
    from diffratio_builtins.backbones.dit import DiTBackbone
    from diffratio_builtins.strategies.deepspeed import hold_bf16_weights

    seen: list[torch.dtype] = []
    for dtype in (torch.bfloat16, torch.float32):
        net = DiTBackbone(DiTBackbone.Config(depth=2, hidden=32, heads=2), data_shape=(4, 8, 8))
        for p in net.parameters():  # as DeepSpeed's bf16 mode does: parameters only, buffers stay fp32
            p.data = p.data.to(dtype)
        # registered first, so it sees the stream as DiT made it, before the block's own cast to its weights
        net.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
        hold_bf16_weights(net)
        out = net(torch.randn(2, 4, 8, 8), torch.randn(2))
        assert out.dtype == torch.float32 and out.shape == (2, 4, 8, 8)
    assert seen == [torch.bfloat16, torch.float32]


def test_deepspeed_steps_do_not_synchronise_the_device(deepspeed_installed: None, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """DeepSpeed's throughput timer is off: on by default, it synchronises the device at every forward and
    step of every engine, a host wait each that the loop's own images/s do not need."""
    from deepspeed.accelerator import get_accelerator

    from diffratio.engine import build_run

    registry = default_registry()
    recipe = load_recipe(RECIPES / "toy2d.toml", [*COMMON, "strategy.name=deepspeed", "strategy.zero_stage=2",
                                                  "method.warmup_ratio_steps=0"], registry=registry)
    method = build_run(recipe, tmp_path / "run", registry).method
    method.train_step(0)
    calls: list[str] = []
    monkeypatch.setattr(type(get_accelerator()), "synchronize", lambda *_, **__: calls.append("synchronize"))
    for step in (1, 2):
        method.train_step(step)
    assert calls == []


def test_deepspeed_zero3_trace_completes_although_models_train_and_infer(deepspeed_installed: None, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """ZeRO-3 records the order in which sub-modules gather their weights from one call of a model to the
    next, checks it against the other ranks (a collective and host reads) until it repeats, and prefetches
    only then. Each DiffRatio model runs both to train (``forward``) and without training (``infer``: the
    generator's samples for the estimator, the frozen estimator in the generator's loss), passes that
    gather in different orders; after two steps every engine has a complete trace and checks nothing."""
    import deepspeed.runtime.zero.partitioned_param_coordinator as coordinator

    from diffratio.engine import build_run

    registry = default_registry()
    recipe = load_recipe(RECIPES / "toy2d.toml", [*COMMON, "strategy.name=deepspeed", "strategy.zero_stage=3",
                                                  "method.warmup_ratio_steps=0"], registry=registry)
    method = build_run(recipe, tmp_path / "run", registry).method
    for step in (0, 1):
        method.train_step(step)
    checks: list[int] = []
    monkeypatch.setattr(coordinator, "assert_ints_same_as_other_ranks", lambda ints: checks.append(len(ints)))
    for step in (2, 3):
        method.train_step(step)
        for trainable in (method.gen, method.ratio):
            assert trainable.engine.optimizer.parameter_offload.get_param_coordinator().is_complete_trace()
    assert checks == []
