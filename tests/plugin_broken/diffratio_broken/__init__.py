"""A plugin that ends the interpreter at import: diffratio must report it and load every other plugin."""

raise SystemExit("this plugin is broken on purpose (tests/plugin_broken)")
