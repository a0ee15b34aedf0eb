"""``python -m diffratio COMMAND ...``: the console scripts, for environments where they are not installed."""

from __future__ import annotations

import click

from diffratio.cli import plugins, sample, train


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """diffratio command-line tools (the same as dr-train, dr-plugins, dr-sample, dr-eval, dr-dataset)."""


main.add_command(train, "train")
main.add_command(plugins, "plugins")
main.add_command(sample, "sample")


def _optional_commands() -> None:
    from diffratio.dataset_tool import dataset
    from diffratio.eval_cli import main as eval_main

    main.add_command(dataset, "dataset")
    main.add_command(eval_main, "eval")


_optional_commands()

if __name__ == "__main__":
    main()
